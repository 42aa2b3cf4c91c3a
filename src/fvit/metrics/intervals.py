"""Confidence intervals for per-image means, and verdicts that follow them.

Every table mean of a robustness comparison (top-k overlap under attack, with and without DDS)
is a mean over images; its uncertainty comes from which images were drawn. `mean_interval` gives
the percentile bootstrap interval of the mean (scipy.stats.bootstrap, resampling images);
`paired_interval` gives it for the mean of per-image differences ``a_i - b_i`` (the paired
bootstrap: both settings were measured on the same images, so the pairing is kept). A
difference is called significant only when its interval excludes 0, and `verdict` words a
comparison accordingly ("no significant difference at n = ..." otherwise).

Seeded (``seed``), so a table is reproducible; the level and resample count are recorded in the
result.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fvit.errors import InputError

LEVEL = 0.95
RESAMPLES = 2000


def _values(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise InputError(f"{what}: expected a list of finite numbers")
    return arr


def mean_interval(values: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES,
                  seed: int = 0) -> dict:
    """``{mean, lo, hi, n, level}``: the mean of ``values`` and its percentile bootstrap interval
    at ``level`` (lo = hi = the value for one image or identical values; None for no values)."""
    from scipy.stats import bootstrap

    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    arr = _values(values, "mean_interval")
    if arr.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "level": level}
    mean = float(arr.mean())
    if arr.size == 1 or np.all(arr == arr[0]):
        return {"mean": mean, "lo": mean, "hi": mean, "n": int(arr.size), "level": level}
    res = bootstrap((arr,), np.mean, confidence_level=level, n_resamples=int(resamples), method="percentile",
                    vectorized=True, random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"mean": mean, "lo": min(lo, mean), "hi": max(hi, mean), "n": int(arr.size), "level": level}


def paired_interval(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL,
                    resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The mean of ``a_i - b_i`` over paired images with its bootstrap interval, plus
    ``significant``: the interval excludes 0."""
    a, b = _values(a, "paired_interval: a"), _values(b, "paired_interval: b")
    if a.shape != b.shape:
        raise InputError(f"paired_interval: {a.size} vs {b.size} values (the images must be paired)")
    out = mean_interval(a - b, level=level, resamples=resamples, seed=seed)
    out["significant"] = bool(out["n"] and (out["lo"] > 0 or out["hi"] < 0))
    return out


def verdict(diff: dict, *, higher: str, lower: str, what: str = "") -> str:
    """A sentence for a paired difference ``a - b`` (`paired_interval`): ``higher`` when the
    interval lies above 0, ``lower`` when below, else "no significant difference"."""
    n, level = diff.get("n", 0), diff.get("level", LEVEL)
    if not n:
        return f"{what}no paired images".strip()
    span = f"{diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}], {level:.0%} CI"
    if diff["significant"]:
        return f"{what}{higher if diff['lo'] > 0 else lower} ({span}, n = {n})"
    return f"{what}no significant difference at n = {n} ({span})"


def format_interval(ci: dict | None, digits: int = 3) -> str:
    """``'0.612 [0.55, 0.67]'`` (or '-' for no values)."""
    if not ci or ci.get("mean") is None or (isinstance(ci["mean"], float) and math.isnan(ci["mean"])):
        return "-"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits - 1}f}, {ci['hi']:.{digits - 1}f}]"


__all__ = ["LEVEL", "RESAMPLES", "format_interval", "mean_interval", "paired_interval", "verdict"]
