"""Fusing the m per-sample explanation maps of DDS into one map per image (registry).

max-drop10 (FViT paper, App. "Max-fuse with lowest pixels drop", after Jacob Gildenblat's
vit-explain): per map, zero its k = floor(0.10 * n) smallest values (n = elements of one map; the
"values below its own 10th percentile" — for distinct values exactly those strictly below the
(k+1)-th smallest, ties broken by position, as torch.topk does); element-wise max over the m
samples; per-image min-max to [0, 1] (a constant map becomes all zeros).

mean ([Re] code convention as implemented here): the plain arithmetic mean of the raw maps over
the m samples, no per-sample normalisation and no final rescaling (consumers normalise, as for
every raw map in fvit.explain).

membership (the map the gaussian top-k certificate certifies, `fvit.certify`): per element, the
fraction of the m samples in whose map it is among the k = `MEMBERSHIP_K` largest (ties broken by
the lower index, as certification counts them); its top-k is the certified set S. `topk_membership`
gives the counts for any k.
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


#: k of the 'membership' fusion: `fvit.certify.CertifyConfig`'s default top-k size.
MEMBERSHIP_K = 10


def topk_membership(maps: torch.Tensor, k: int) -> torch.Tensor:
    """maps (B, m, ...) -> (B, ...) counts of the samples in whose map each element is among the k
    largest (a stable descending sort: ties go to the lower flat index)."""
    flat = maps.flatten(2)
    if not 1 <= k <= flat.shape[-1]:
        raise InputError(f"topk_membership: k must be in [1, {flat.shape[-1]}], got {k}")
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., :k]
    hits = torch.zeros_like(flat).scatter_(-1, order, 1.0)
    return hits.sum(1).view(maps.shape[0], *maps.shape[2:])


def membership(k: int = MEMBERSHIP_K) -> Fusion:
    """The top-k membership frequency fusion for top-k size ``k`` (module docstring)."""
    def fuse_fn(maps: torch.Tensor) -> torch.Tensor:
        return topk_membership(maps, min(k, maps[0, 0].numel())) / maps.shape[1]
    fuse_fn.__doc__ = f"fraction of samples in whose map each element is among the {k} largest"
    return fuse_fn


FUSIONS.register("max-drop10", max_drop(0.10), aliases=("maxdrop10", "max_drop", "paper"))
FUSIONS.register("membership", membership(), aliases=("topk-membership", "certified"))
FUSIONS.register("max", max_drop(0.0))


@FUSIONS.register("mean", aliases=("re",))
def _mean(maps: torch.Tensor) -> torch.Tensor:
    return maps.mean(dim=1)


def fuse(maps: torch.Tensor, how: str = "max-drop10") -> torch.Tensor:
    """maps (B, m, ...) -> (B, ...) with the named fusion (see module docstring)."""
    if maps.ndim < 3:
        raise InputError(f"fuse: maps must be (B, m, ...), got shape {tuple(maps.shape)}")
    return FUSIONS.get(how)(maps.float())
