"""Per-image min-max normalisation of relevance maps, the first step of every map metric."""

from __future__ import annotations

import torch
from torch import Tensor

from fvit.errors import InputError


def check_maps(maps: Tensor, what: str = "maps", min_ndim: int = 2) -> Tensor:
    """Raise InputError unless `maps` is a real tensor ``(B, ...)`` with at least `min_ndim` dims."""
    if not isinstance(maps, Tensor):
        raise InputError(f"{what}: expected a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim < min_ndim or maps.is_complex():
        raise InputError(f"{what}: expected a real tensor (B, ...) with >= {min_ndim} dims, "
                         f"got shape {tuple(maps.shape)} dtype {maps.dtype}")
    return maps


def min_max_normalise(maps: Tensor, *, constant: str = "nan") -> Tensor:
    """``(m - min m) / (max m - min m)`` per image (over all dims but the first), in floating point.

    `constant` says what a constant map (max == min) becomes: ``'nan'`` keeps the 0/0 of Chefer et
    al.'s evaluation code (their segmentation then predicts background everywhere and scores 0), and
    ``'zero'`` gives an all-zero map. A map containing NaN normalises to all-NaN either way.
    """
    if constant not in ("nan", "zero"):
        raise InputError(f"min_max_normalise: constant must be 'nan' or 'zero', got {constant!r}")
    m = maps if maps.is_floating_point() else maps.float()
    flat = m.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    if constant == "zero":
        span = torch.where(span == 0, torch.ones_like(span), span)
    return ((flat - low) / span).view_as(m)
