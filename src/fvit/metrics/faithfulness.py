"""The FViT paper's faithfulness score S_Faith (Hu et al. 2024, Tables 5-6).

The paper only says S_Faith "is reciprocal to the average of the absolute difference between the
ground-truth heat map and the predicted one"; it does not say how maps are scaled or what is
averaged. The convention here:

    d_i     = mean over pixels of | n(ref_i) - n(map_i) |      n = per-image min-max to [0, 1]
    S_Faith = 1 / mean_i d_i                                   (reduction='mean', a float)

i.e. the reciprocal of the data-set mean absolute difference (every image has the same pixel count,
so this is also the mean over all pixels of all images). ``reduction='none'`` gives ``1 / d_i`` per
image. Constant maps normalise to all zeros. Identical maps give ``inf``. Typical use: the reference
is the explanation of the clean image (or a ground-truth map) and ``maps`` the explanation under
attack; higher is more faithful.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvit.errors import InputError
from fvit.metrics.normalise import check_maps, min_max_normalise


def mean_abs_difference(reference_maps: Tensor, maps: Tensor) -> Tensor:
    """``d_i = mean |n(ref_i) - n(map_i)|`` per image, float ``(B,)`` (min-max per image)."""
    check_maps(reference_maps, "reference_maps")
    check_maps(maps, "maps")
    if reference_maps.shape != maps.shape:
        raise InputError(f"faithfulness_score: shapes differ: {tuple(reference_maps.shape)} vs "
                         f"{tuple(maps.shape)} (resize maps to a common resolution first)")
    ref = min_max_normalise(reference_maps, constant="zero")
    other = min_max_normalise(maps.to(reference_maps.device), constant="zero")
    return (ref - other).abs().flatten(1).mean(dim=1)


def faithfulness_score(reference_maps: Tensor, maps: Tensor, *, reduction: str = "mean") -> float | Tensor:
    """S_Faith: ``1 / mean_i d_i`` (float) or, with ``reduction='none'``, ``1 / d_i`` per image."""
    d = mean_abs_difference(reference_maps, maps)
    if reduction == "none":
        return 1.0 / d
    if reduction != "mean":
        raise InputError(f"faithfulness_score: reduction must be 'mean' or 'none', got {reduction!r}")
    if d.numel() == 0:
        raise InputError("faithfulness_score: no maps given")
    average = float(d.to(torch.float64).mean())
    return float("inf") if average == 0 else 1.0 / average
