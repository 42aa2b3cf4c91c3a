"""Top-k overlap ratio between two relevance maps (Hu et al. 2024, Definition 4.1).

    T_k(x)    = { i : |{ j : x_j >= x_i }| <= k }
    V_k(x, y) = |T_k(x) ∩ T_k(y)| / k

on maps flattened per image. With ties at the k-th value the definition keeps *none* of the tied
entries (``|T_k| < k``): an all-constant map has an empty top-k, so degenerate maps are not
rewarded. ``ties='stable'`` instead takes exactly k entries, breaking ties by lower flat index;
the two agree whenever the k-th and (k+1)-th largest values differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvit.errors import InputError
from fvit.metrics.normalise import check_maps


def topk_membership_definition(flat: Tensor, k: int) -> Tensor:
    """``(B, N)`` bool: ``i ∈ T_k`` iff at most k entries are >= x_i (Definition 4.1)."""
    ascending = torch.sort(flat, dim=1).values
    at_least = flat.shape[1] - torch.searchsorted(ascending, flat.contiguous(), right=False)
    return at_least <= k


def topk_membership_stable(flat: Tensor, k: int) -> Tensor:
    """``(B, N)`` bool: the k largest entries, ties broken by lower index."""
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


_MEMBERSHIP = {"definition": topk_membership_definition, "stable": topk_membership_stable}


def topk_overlap(a: Tensor, b: Tensor, k: int, *, ties: str = "definition") -> Tensor:
    """``V_k(a_i, b_i)`` per image, float ``(B,)`` in [0, 1], for maps ``(B, ...)`` of equal shape.

    `ties`: 'definition' (Definition 4.1, default) or 'stable' (exactly k by lower index).
    """
    check_maps(a, "topk_overlap: a")
    check_maps(b, "topk_overlap: b")
    if a.shape != b.shape:
        raise InputError(f"topk_overlap: maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    n = a[0].numel()
    if int(k) != k or not 1 <= k <= n:
        raise InputError(f"topk_overlap: k must be an integer in [1, {n}], got {k!r}")
    if ties not in _MEMBERSHIP:
        raise InputError(f"topk_overlap: ties must be one of {', '.join(_MEMBERSHIP)}, got {ties!r}")
    member = _MEMBERSHIP[ties]
    fa, fb = a.flatten(1), b.to(a.device).flatten(1)
    both = member(fa, int(k)) & member(fb, int(k))
    dtype = a.dtype if a.is_floating_point() else torch.float32
    return both.sum(dim=1).to(dtype) / k
