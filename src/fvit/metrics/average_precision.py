"""Batched average precision in torch, equal to ``sklearn.metrics.average_precision_score``.

For scores ``s`` and binary targets ``t`` (P positives), sklearn's (non-interpolated) AP is

    AP = sum_n (R_n - R_{n-1}) * P_n

over the distinct score values taken as thresholds in decreasing order, with ``P_n`` / ``R_n`` the
precision / recall of ``s >= threshold_n``. Tied scores enter at one threshold together. Equivalently

    AP = (1/P) * sum_{i : t_i = 1} precision(last position of the tie group of i in the sorted order)

which is what ``average_precision`` computes for every row at once (sort, cumulative sums in float64,
group ends via a reverse cumulative minimum). Rows without positives give NaN (sklearn warns and
returns 0 there; callers following Chefer et al. map NaN to 0 anyway).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvit.errors import InputError


def _group_end_index(sorted_scores: Tensor) -> Tensor:
    """For each position of a row sorted descending, the index of the last element of its tie group."""
    n = sorted_scores.shape[-1]
    positions = torch.arange(n, device=sorted_scores.device).expand_as(sorted_scores)
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[..., :-1] = sorted_scores[..., 1:] != sorted_scores[..., :-1]
    end_positions = torch.where(is_end, positions, torch.full_like(positions, n))
    return end_positions.flip(-1).cummin(dim=-1).values.flip(-1)


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """AP per row of ``scores (B, N)`` against binary ``targets (B, N)``; returns float64 ``(B,)``."""
    if scores.shape != targets.shape or scores.ndim != 2:
        raise InputError(f"average_precision: scores and targets must both be (B, N), got "
                         f"{tuple(scores.shape)} and {tuple(targets.shape)}")
    if scores.shape[1] == 0:
        return torch.full((scores.shape[0],), float("nan"), dtype=torch.float64, device=scores.device)
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    hits = targets.to(torch.float64).gather(-1, order)
    true_pos = hits.cumsum(dim=-1)
    predicted_pos = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float64)
    precision = true_pos / predicted_pos
    precision_at_threshold = precision.gather(-1, _group_end_index(sorted_scores))
    return (hits * precision_at_threshold).sum(dim=-1) / hits.sum(dim=-1)
