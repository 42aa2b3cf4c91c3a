"""ImageNet-segmentation metrics exactly as Chefer et al. (2021) accumulate them.

Protocol (Chefer et al.'s ``imagenet_seg_eval.py``, followed by Hu et al. 2024 and the [Re] study),
for a raw pixel map ``r`` and a boolean foreground mask ``y`` of one image:

1. ``n = (r - min r) / (max r - min r)`` (per image; a constant map gives 0/0 = NaN as in the
   reference, which predicts background everywhere and scores 0 for AP).
2. Hard segmentation: foreground where ``n > mean(n)``, background where ``n <= mean(n)``.
3. Counts per image: ``correct`` = pixels whose class is right, ``labeled`` = H*W,
   per class c in (background, foreground): ``inter_c = |pred = c and y = c|``,
   ``union_c = |pred = c or y = c|``.
4. ``ap`` = average precision of the 2*H*W scores ``(1 - n, n)`` (NaN -> 0) against the one-hot mask
   ``(not y, y)``, NaN -> 0.

Data-set results (counts are summed over the whole data set before dividing):

    pixel_acc = sum correct / (eps + sum labeled)
    IoU_c     = sum inter_c / (eps + sum union_c),    miou = (IoU_bg + IoU_fg) / 2
    map       = mean over images of ap

with ``eps = np.spacing(1)`` as in the reference. Maps are normalised in their own dtype (float32
maps tie and round exactly as the reference's float32 maps do). Values are fractions in [0, 1]; the
papers print them x100. ``SegmentationAccumulator`` and the row functions (``segmentation_rows`` +
``aggregate_segmentation``) share these definitions, so per-image rows saved by a results store merge
to the same totals in any order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from fvit.errors import InputError
from fvit.metrics.average_precision import average_precision
from fvit.metrics.normalise import check_maps, min_max_normalise

DIVISION_GUARD = float(np.spacing(np.float64(1)))
"""Chefer et al. add ``np.spacing(1)`` (2.2e-16) to every denominator."""

COUNT_KEYS = ("correct", "labeled", "inter_bg", "inter_fg", "union_bg", "union_fg")
ROW_KEYS = COUNT_KEYS + ("ap",)


def _check_pair(pixel_maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    check_maps(pixel_maps, "pixel_maps", min_ndim=3)
    if pixel_maps.ndim != 3 or masks.shape != pixel_maps.shape:
        raise InputError(f"segmentation: pixel_maps and masks must both be (B, H, W), got "
                         f"{tuple(pixel_maps.shape)} and {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or not bool(((masks == 0) | (masks == 1)).all()):
            raise InputError(f"segmentation: masks must be bool (or 0/1 integers), got dtype {masks.dtype}")
        masks = masks.bool()
    return pixel_maps, masks.to(pixel_maps.device)


def _count(pred: Tensor, truth: Tensor) -> Tensor:
    return (pred & truth).flatten(1).sum(dim=1)


def segmentation_counts(pixel_maps: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Per-image counts and AP for a batch: ``{key: (B,) tensor}`` for ``ROW_KEYS`` (see module doc)."""
    pixel_maps, masks = _check_pair(pixel_maps, masks)
    norm = min_max_normalise(pixel_maps, constant="nan")
    threshold = norm.flatten(1).mean(dim=1).view(-1, 1, 1)
    fg_pred = norm > threshold
    # The reference scores channels (n <= mean, n > mean) and takes the argmax; on a NaN (constant)
    # map both are 0 and the argmax picks channel 0, background. So background = not foreground.
    bg_pred = ~fg_pred
    fg_true, bg_true = masks, ~masks
    scores = torch.cat([(1 - norm).nan_to_num(0.0).flatten(1), norm.nan_to_num(0.0).flatten(1)], dim=1)
    targets = torch.cat([bg_true.flatten(1), fg_true.flatten(1)], dim=1)
    inter_bg, inter_fg = _count(bg_pred, bg_true), _count(fg_pred, fg_true)
    return {
        "correct": inter_fg + inter_bg,
        "labeled": torch.full((masks.shape[0],), masks[0].numel(), dtype=torch.long,
                              device=masks.device),
        "inter_bg": inter_bg,
        "inter_fg": inter_fg,
        "union_bg": (bg_pred | bg_true).flatten(1).sum(dim=1),
        "union_fg": (fg_pred | fg_true).flatten(1).sum(dim=1),
        "ap": average_precision(scores, targets).nan_to_num(0.0),
    }


def segmentation_rows(pixel_maps: Tensor, masks: Tensor) -> list[dict[str, float | int]]:
    """One plain dict per image (ints for counts, float for ``ap``) for a results store."""
    counts = {k: v.tolist() for k, v in segmentation_counts(pixel_maps, masks).items()}
    return [{k: counts[k][i] for k in ROW_KEYS} for i in range(len(counts["ap"]))]


def segmentation_row(pixel_map: Tensor, mask: Tensor) -> dict[str, float | int]:
    """The per-image contribution of one ``(H, W)`` map and mask (see ``aggregate_segmentation``)."""
    return segmentation_rows(pixel_map.unsqueeze(0), mask.unsqueeze(0))[0]


def _finalise(totals: Mapping[str, int], aps: list[float]) -> dict[str, float]:
    iou_bg = totals["inter_bg"] / (DIVISION_GUARD + totals["union_bg"])
    iou_fg = totals["inter_fg"] / (DIVISION_GUARD + totals["union_fg"])
    return {
        "pixel_acc": totals["correct"] / (DIVISION_GUARD + totals["labeled"]),
        "miou": (iou_bg + iou_fg) / 2,
        "map": math.fsum(aps) / len(aps) if aps else float("nan"),
        "iou_bg": iou_bg,
        "iou_fg": iou_fg,
        "n_images": len(aps),
    }


def aggregate_segmentation(rows: Iterable[Mapping[str, float | int]]) -> dict[str, float]:
    """Data-set results from per-image rows: ``pixel_acc``, ``miou``, ``map`` (+ ``iou_bg``,
    ``iou_fg``, ``n_images``). Order-independent (integer sums; ``math.fsum`` for AP)."""
    totals = dict.fromkeys(COUNT_KEYS, 0)
    aps: list[float] = []
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise InputError(f"aggregate_segmentation: row lacks {', '.join(missing)}")
        for k in COUNT_KEYS:
            totals[k] += int(row[k])
        aps.append(float(row["ap"]))
    return _finalise(totals, aps)


@dataclass
class SegmentationAccumulator:
    """Running Chefer et al. segmentation metrics over batches.

    ``update(pixel_maps (B, H, W) raw, masks (B, H, W) bool)`` returns the batch's per-image rows
    (for a results store); ``result()`` -> ``{pixel_acc, miou, map, iou_bg, iou_fg, n_images}``,
    identical to ``aggregate_segmentation`` of all rows.
    """

    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    aps: list[float] = field(default_factory=list)

    def update(self, pixel_maps: Tensor, masks: Tensor) -> list[dict[str, float | int]]:
        rows = segmentation_rows(pixel_maps, masks)
        for row in rows:
            for k in COUNT_KEYS:
                self.totals[k] += int(row[k])
            self.aps.append(float(row["ap"]))
        return rows

    def result(self) -> dict[str, float]:
        return _finalise(self.totals, self.aps)
