"""Display names for the tables and plots.

The key conventions themselves (method keys with '+dds', radius labels, '@clean') live in
`fvit.keys`; they are re-exported here so ``from fvit.viz.names import split_key`` keeps working.
A parameterised method's key is its spec ("rollout:start_layer=1", display "Rollout (start_layer=1)").
"""

from __future__ import annotations

from fvit.keys import CLEAN_SUFFIX, DDS_SUFFIX, method_key, radius_label, radius_value, split_key

DISPLAY = {
    "raw_attention": "Raw Attention",
    "rollout": "Rollout",
    "gradcam": "GradCAM",
    "lrp": "LRP",
    "transformer_attribution": "TA",
    "attribution_rollout": "AR",
}


def display(key: str) -> str:
    """'transformer_attribution+dds' -> 'TA + DDS'."""
    base, dds = split_key(key)
    base, _, params = base.partition(":")  # a parameterised method: 'rollout:start_layer=1'
    name = DISPLAY.get(base, base.replace("_", " "))
    name = f"{name} ({params})" if params else name
    return f"{name} + DDS" if dds else name


__all__ = ["CLEAN_SUFFIX", "DDS_SUFFIX", "DISPLAY", "display", "method_key", "radius_label", "radius_value",
           "split_key"]
