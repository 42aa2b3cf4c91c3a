"""Spearman rank correlation between two relevance maps, per image.

    rho(a, b) = Pearson(rank(a), rank(b))     over the flattened map of each image

with tied values given their average rank (as ``scipy.stats.spearmanr``). A constant map has no
ranking: its correlation is NaN (scipy returns NaN too).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvit.errors import InputError
from fvit.metrics.normalise import check_maps


def average_ranks(flat: Tensor) -> Tensor:
    """``(B, N)`` -> 0-based ranks per row, ties averaged (float64)."""
    ordered = torch.sort(flat, dim=1).values.contiguous()
    below = torch.searchsorted(ordered, flat.contiguous(), right=False)
    up_to = torch.searchsorted(ordered, flat.contiguous(), right=True)
    return (below + up_to - 1).to(torch.float64) / 2


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho per image, float64 ``(B,)``, for maps ``(B, ...)`` of equal shape."""
    check_maps(a, "rank_correlation: a")
    check_maps(b, "rank_correlation: b")
    if a.shape != b.shape:
        raise InputError(f"rank_correlation: maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    ra = average_ranks(a.flatten(1).double())
    rb = average_ranks(b.to(a.device).flatten(1).double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1))
