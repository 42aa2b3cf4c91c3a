"""Display names and key conventions shared by the tables and plots.

Result keys: a method key is the canonical method name, with `+dds` when DDS wraps it
("transformer_attribution+dds"); a parameterised method's key is its spec ("rollout:start_layer=1",
display "Rollout (start_layer=1)"); radii are strings such as "0", "8/255" (`radius_label`).
"""

from __future__ import annotations

from fractions import Fraction

from fvit.utils import parse_number

DISPLAY = {
    "raw_attention": "Raw Attention",
    "rollout": "Rollout",
    "gradcam": "GradCAM",
    "lrp": "LRP",
    "transformer_attribution": "TA",
    "attribution_rollout": "AR",
}
DDS_SUFFIX = "+dds"


def method_key(method: str, dds: bool) -> str:
    return f"{method}{DDS_SUFFIX}" if dds else method


def split_key(key: str) -> tuple[str, bool]:
    """'transformer_attribution+dds' -> ('transformer_attribution', True)."""
    return (key[: -len(DDS_SUFFIX)], True) if key.endswith(DDS_SUFFIX) else (key, False)


def display(key: str) -> str:
    """'transformer_attribution+dds' -> 'TA + DDS'."""
    base, dds = split_key(key)
    base, _, params = base.partition(":")  # a parameterised method: 'rollout:start_layer=1'
    name = DISPLAY.get(base, base.replace("_", " "))
    name = f"{name} ({params})" if params else name
    return f"{name} + DDS" if dds else name


def radius_label(r: float | str) -> str:
    """0 -> '0', 8/255 -> '8/255', 0.5 -> '0.5'."""
    x = parse_number(r, "radius")
    if x == 0:
        return "0"
    k = x * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{Fraction(x).limit_denominator(10000)}" if "/" in str(r) else f"{x:g}"


def radius_value(label: str | float) -> float:
    return parse_number(label, "radius")
