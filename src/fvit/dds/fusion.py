"""Fusing the m per-sample explanation maps of DDS into one map per image (registry).

max-drop10 (FViT paper, App. "Max-fuse with lowest pixels drop", after Jacob Gildenblat's
vit-explain): per map, zero its k = floor(0.10 * n) smallest values (n = elements of one map; the
"values below its own 10th percentile" — for distinct values exactly those strictly below the
(k+1)-th smallest, ties broken by position, as torch.topk does); element-wise max over the m
samples; per-image min-max to [0, 1] (a constant map becomes all zeros).

mean ([Re] code convention as implemented here): the plain arithmetic mean of the raw maps over
the m samples, no per-sample normalisation and no final rescaling (consumers normalise, as for
every raw map in fvit.explain).
"""

from __future__ import annotations

from typing import Callable

import torch

from fvit.errors import InputError
from fvit.registry import Registry

Fusion = Callable[[torch.Tensor], torch.Tensor]
FUSIONS: Registry[Fusion] = Registry("fusion")


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max over all but the first dim; constant maps -> 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.view_as(maps)


def drop_lowest(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the floor(fraction * n) smallest values of each map; maps (N, ...) -> same shape."""
    flat = maps.flatten(1).clone()
    k = int(fraction * flat.shape[1])
    if k > 0:
        idx = flat.topk(k, dim=1, largest=False).indices
        flat.scatter_(1, idx, 0.0)
    return flat.view_as(maps)


def max_drop(fraction: float) -> Fusion:
    def fuse_fn(maps: torch.Tensor) -> torch.Tensor:
        b, m = maps.shape[:2]
        dropped = drop_lowest(maps.reshape(b * m, *maps.shape[2:]), fraction).view_as(maps)
        return minmax(dropped.amax(dim=1))
    fuse_fn.__doc__ = f"zero the lowest {fraction:.0%} per map, max over samples, min-max"
    return fuse_fn


FUSIONS.register("max-drop10", max_drop(0.10), aliases=("maxdrop10", "max_drop", "paper"))
FUSIONS.register("max", max_drop(0.0))


@FUSIONS.register("mean", aliases=("re",))
def _mean(maps: torch.Tensor) -> torch.Tensor:
    return maps.mean(dim=1)


def fuse(maps: torch.Tensor, how: str = "max-drop10") -> torch.Tensor:
    """maps (B, m, ...) -> (B, ...) with the named fusion (see module docstring)."""
    if maps.ndim < 3:
        raise InputError(f"fuse: maps must be (B, m, ...), got shape {tuple(maps.shape)}")
    return FUSIONS.get(how)(maps.float())
