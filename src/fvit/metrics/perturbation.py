"""Positive / negative perturbation test (Chefer et al. 2021, followed by Hu et al. and [Re]).

For each image with pixel relevance map ``r (H, W)`` and fraction ``p`` in 0.1, 0.2, ..., 0.9:
remove the ``floor(p * H * W)`` pixels of highest relevance (positive test) or lowest relevance
(negative test) by setting them to 0 in [0, 1] pixel space, **all channels of a pixel location
together**, classify, and record a top-1 hit when the prediction equals the label. Column 0 of the
hits is the unperturbed image (p = 0).

    AUC = 100 * trapezoid(accuracy(p), p = 0, 0.1, ..., 0.9)

with accuracy(p) the fraction of hits over images. **Lower positive AUC and higher negative AUC
are better**: a faithful map puts the evidence first, so removing it first hurts the most.

Ties in relevance are broken deterministically by pixel index (a stable sort: among equal
relevance, the lower flat index ``h * W + w`` is removed first, in both tests). The reference uses
``torch.topk`` (unspecified tie order) and ``int(p * H * W)``; ``removed_count`` equals that up to
float rounding just below an integer.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from fvit.errors import InputError
from fvit.metrics.normalise import check_maps

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(1, 10))
"""p = 0.1, 0.2, ..., 0.9 as in Chefer et al. and both papers."""

DEFAULT_MAX_BATCH = 256
"""Most perturbed images classified in one call of `classify_fn`."""

AUC_SCALE = 100.0
"""The papers report the AUC of accuracy (a fraction) x100."""

COUNT_SLACK = 1e-9
"""Absorbs float rounding in ``p * n`` (e.g. 0.7 * 10 = 7.000000000000001, 0.29 * 100 = 28.99...)."""

REMOVED_VALUE = 0.0


def removed_count(n_pixels: int, fraction: float) -> int:
    """``floor(fraction * n_pixels)`` robust to float rounding (Chefer et al.: ``int(base * p)``)."""
    return int(math.floor(fraction * n_pixels + COUNT_SLACK))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if not fr or any(not 0.0 < f <= 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise InputError(f"perturbation: fractions must be increasing values in (0, 1], got {fractions}")
    return fr


def removal_rank(pixel_maps: Tensor, positive: bool) -> Tensor:
    """``(B, H*W)`` long: the position of each pixel in the removal order (0 = removed first).

    Positive: decreasing relevance; negative: increasing relevance; ties by increasing pixel index.
    """
    flat = pixel_maps.flatten(1)
    key = -flat if positive else flat
    order = torch.sort(key, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return rank.scatter_(1, order, positions)


def perturbed_copies(images01: Tensor, rank: Tensor, counts: Tensor) -> Tensor:
    """``(B, K, C, H, W)``: copy k of image b has the pixels with ``rank < counts[k]`` set to 0."""
    b, c, h, w = images01.shape
    keep = rank.view(b, 1, 1, h, w) >= counts.view(1, -1, 1, 1, 1)
    return torch.where(keep, images01.unsqueeze(1), torch.zeros((), dtype=images01.dtype,
                                                                  device=images01.device))


def _check_inputs(images01: Tensor, pixel_maps: Tensor, labels: Tensor) -> Tensor:
    if images01.ndim != 4 or not images01.is_floating_point():
        raise InputError(f"perturbation: images must be float (B, C, H, W), got {tuple(images01.shape)}")
    check_maps(pixel_maps, "pixel_maps", min_ndim=3)
    b, _, h, w = images01.shape
    if tuple(pixel_maps.shape) != (b, h, w):
        raise InputError(f"perturbation: pixel_maps must be (B, H, W) = {(b, h, w)} (upsample patch maps "
                         f"first), got {tuple(pixel_maps.shape)}")
    labels = torch.as_tensor(labels, device=images01.device)
    if labels.shape != (b,):
        raise InputError(f"perturbation: labels must be ({b},), got {tuple(labels.shape)}")
    return labels.long()


@torch.no_grad()
def perturbation_hits(classify_fn: Callable[[Tensor], Tensor], images01: Tensor, pixel_maps: Tensor,
                      labels: Tensor, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                      positive: bool = True, max_batch: int = DEFAULT_MAX_BATCH) -> Tensor:
    """Top-1 hits ``(B, 1 + len(fractions))`` bool; column 0 unperturbed, column k after removing
    ``removed_count(H*W, fractions[k-1])`` pixels (see module doc).

    ``classify_fn`` maps [0, 1] images ``(N, C, H, W)`` to logits ``(N, classes)`` (or any per-class
    scores whose argmax is the prediction, e.g. DDS class counts). All perturbed
    copies of a chunk of images are classified in one call of at most ``max_batch`` images
    (at least one image's copies per call).
    """
    labels = _check_inputs(images01, pixel_maps, labels)
    fr = _check_fractions(fractions)
    b, _, h, w = images01.shape
    counts = torch.tensor([0] + [removed_count(h * w, f) for f in fr], device=images01.device)
    n_copies = counts.numel()
    rank = removal_rank(pixel_maps.to(images01.device), positive)
    images_per_call = max(1, max_batch // n_copies)
    hits = []
    for start in range(0, b, images_per_call):
        part = slice(start, start + images_per_call)
        copies = perturbed_copies(images01[part], rank[part], counts)
        logits = classify_fn(copies.flatten(0, 1))
        predictions = logits.argmax(dim=-1).view(-1, n_copies)
        hits.append(predictions == labels[part].unsqueeze(1))
    return torch.cat(hits, dim=0) if hits else torch.zeros((0, n_copies), dtype=torch.bool)


def accuracy_curve(hits: Tensor) -> Tensor:
    """Mean of ``hits (B, K)`` over images: accuracy per perturbation level, float64 ``(K,)``."""
    if hits.ndim != 2 or hits.shape[0] == 0:
        raise InputError(f"accuracy_curve: expected non-empty hits (B, K), got {tuple(hits.shape)}")
    return hits.to(torch.float64).mean(dim=0)


def perturbation_auc(hits_or_curve: Tensor | Sequence[float],
                     fractions: Sequence[float] = DEFAULT_FRACTIONS) -> float:
    """``100 * trapezoid(accuracy, [0, *fractions])``.

    Accepts hits ``(B, 1 + F)`` (bool or 0/1; averaged over images) or an accuracy curve
    ``(1 + F,)`` of fractions in [0, 1] whose first entry is the unperturbed accuracy.
    """
    values = torch.as_tensor(hits_or_curve)
    curve = accuracy_curve(values) if values.ndim == 2 else values.to(torch.float64)
    xs = (0.0,) + _check_fractions(fractions)
    if curve.ndim != 1 or curve.numel() != len(xs):
        raise InputError(f"perturbation_auc: expected {len(xs)} accuracy values (p = 0 first), "
                         f"got shape {tuple(values.shape)}")
    return AUC_SCALE * trapezoid(curve.cpu().tolist(), xs)


def trapezoid(ys: Sequence[float], xs: Sequence[float]) -> float:
    """``sum_k (x_{k+1} - x_k) * (y_k + y_{k+1}) / 2``."""
    return math.fsum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
