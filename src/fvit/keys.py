"""Result keys: the one place that says how a results row or table entry is named.

- A method key is the method's spec ('rollout', 'rollout:start_layer=1'), with `DDS_SUFFIX`
  ('+dds') when `fvit.dds.DDSExplainer` wraps it: `method_key`, `split_key`.
- A segmentation run that also scores the clean images names those entries '<key>@clean'
  (`CLEAN_SUFFIX`, `clean_key`).
- A swept setting is '<group>@<radius label>' (`setting`); radius labels are exact for multiples
  of 1/255 ('8/255'), else short decimals (`radius_label`); `radius_value` / `setting_radius` read
  them back as numbers (tables and plots sort by them).

Both `fvit.viz` (tables, plots) and `fvit.bench` (rows, summaries) import these; neither defines
its own.
"""

from __future__ import annotations

from fractions import Fraction

from fvit.utils import parse_number

DDS_SUFFIX = "+dds"
CLEAN_SUFFIX = "@clean"
SETTING_SEP = "@"


def method_key(method: str, dds: bool) -> str:
    """'rollout', True -> 'rollout+dds'."""
    return f"{method}{DDS_SUFFIX}" if dds else method


def split_key(key: str) -> tuple[str, bool]:
    """'transformer_attribution+dds' -> ('transformer_attribution', True)."""
    return (key[: -len(DDS_SUFFIX)], True) if key.endswith(DDS_SUFFIX) else (key, False)


def clean_key(key: str) -> str:
    """The entry of ``key`` scored on the clean images of an attacked segmentation run."""
    return f"{key}{CLEAN_SUFFIX}"


def radius_label(r: float | str) -> str:
    """0 -> '0', 8/255 -> '8/255', 0.5 -> '0.5' (a string is read as written: '1/3' -> '1/3')."""
    x = parse_number(r, "radius")
    if x == 0:
        return "0"
    k = x * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{Fraction(x).limit_denominator(10000)}" if "/" in str(r) else f"{x:g}"


def radius_value(label: str | float) -> float:
    """A radius label (or number) back as a number: '8/255' -> 0.0313..."""
    return parse_number(label, "radius")


def setting(key: str, radius: str) -> str:
    """The row setting of ``key`` at the radius label ``radius``: 'rollout@8/255'."""
    return f"{key}{SETTING_SEP}{radius}"


def split_setting(name: str) -> tuple[str, str]:
    """'rollout@8/255' -> ('rollout', '8/255'): the inverse of `setting`."""
    key, _, radius = name.rpartition(SETTING_SEP)
    return key, radius


__all__ = ["CLEAN_SUFFIX", "DDS_SUFFIX", "SETTING_SEP", "clean_key", "method_key", "radius_label", "radius_value",
           "setting", "split_key", "split_setting"]
