"""Tests for fvit.metrics on small hand-made maps and masks with hand-computed answers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from fvit.errors import InputError
from fvit.metrics import (
    DEFAULT_FRACTIONS,
    SegmentationAccumulator,
    accuracy,
    aggregate_segmentation,
    average_precision,
    faithfulness_score,
    flip_rate,
    min_max_normalise,
    perturbation_auc,
    perturbation_hits,
    removed_count,
    segmentation_row,
    segmentation_rows,
    top1_hits,
    topk_overlap,
)

T, F_ = True, False

# ----------------------------------------------------------------------------- segmentation

# Image A: map [[0, 1], [2, 4]] -> normalised (0, 1/4, 1/2, 1) (exact in binary floating point),
#   mean 7/16 -> foreground = pixels 2, 3. Mask (F, T, T, T): correct 3 / 4; bg: inter {0} = 1,
#   union {0, 1} = 2; fg: inter {2, 3} = 2, union {1, 2, 3} = 3. AP over the 8 scores
#   (bg channel 1 - n = (1, 3/4, 1/2, 0), fg channel n) against (bg: + - - -, fg: - + + +):
#   threshold 1: {bg0 +, fg3 +} P = 1, R = 2/4; 3/4: {bg1 -} no recall gain;
#   1/2: {bg2 -, fg2 +} P = 3/5, R = 3/4; 1/4: {fg1 +} P = 4/6, R = 1; 0: no gain.
#   AP = 1/2 * 1 + 1/4 * 3/5 + 1/4 * 2/3 = 49/60.
# Image B: constant map -> 0/0 (reference: NaN) -> background everywhere; mask (T, F, F, F):
#   correct 3; bg: inter 3, union 4; fg: inter 0, union 1. All 8 scores 0 -> AP = 4/8 = 1/2.
MAP_A = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
MASK_A = torch.tensor([[F_, T], [T, T]])
MAP_B = torch.full((2, 2), 5.0)
MASK_B = torch.tensor([[T, F_], [F_, F_]])
ROW_A = {"correct": 3, "labeled": 4, "inter_bg": 1, "inter_fg": 2, "union_bg": 2, "union_fg": 3}
ROW_B = {"correct": 3, "labeled": 4, "inter_bg": 3, "inter_fg": 0, "union_bg": 4, "union_fg": 1}


def test_segmentation_rows_by_hand():
    row_a, row_b = segmentation_rows(torch.stack([MAP_A, MAP_B]), torch.stack([MASK_A, MASK_B]))
    assert {k: row_a[k] for k in ROW_A} == ROW_A
    assert {k: row_b[k] for k in ROW_B} == ROW_B
    assert row_a["ap"] == pytest.approx(49 / 60, abs=1e-12)
    assert row_b["ap"] == pytest.approx(1 / 2, abs=1e-12)
    assert segmentation_row(MAP_A, MASK_A) == row_a


def test_segmentation_totals_by_hand():
    acc = SegmentationAccumulator()
    acc.update(MAP_A.unsqueeze(0), MASK_A.unsqueeze(0))
    acc.update(MAP_B.unsqueeze(0), MASK_B.unsqueeze(0))
    result = acc.result()
    # pixel acc 6/8; IoU_bg = 4/6, IoU_fg = 2/4 -> mIoU 7/12; mAP = (49/60 + 1/2) / 2 = 79/120
    assert result["pixel_acc"] == pytest.approx(6 / 8, abs=1e-12)
    assert result["iou_bg"] == pytest.approx(4 / 6, abs=1e-12)
    assert result["iou_fg"] == pytest.approx(2 / 4, abs=1e-12)
    assert result["miou"] == pytest.approx(7 / 12, abs=1e-12)
    assert result["map"] == pytest.approx(79 / 120, abs=1e-12)
    assert result["n_images"] == 2


def test_threshold_is_strictly_above_the_mean():
    # normalised (0, 1, 1/2, 1/2), mean 1/2: only pixel 1 is foreground (ties with the mean -> bg)
    row = segmentation_row(torch.tensor([[0.0, 2.0], [1.0, 1.0]]), torch.ones(2, 2, dtype=torch.bool))
    assert (row["correct"], row["inter_fg"], row["union_fg"], row["union_bg"]) == (1, 1, 4, 3)


def chefer_reference_row(pixel_map: torch.Tensor, mask: torch.Tensor) -> dict:
    """An independent numpy/sklearn restatement of the reference's per-image computation."""
    r = pixel_map.numpy()
    y = mask.numpy().astype(np.int64)
    with np.errstate(invalid="ignore"):
        n = (r - r.min()) / (r.max() - r.min())
    pred = (n > n.mean()).astype(np.int64)
    scores = np.nan_to_num(np.stack([1 - n, n]).reshape(-1))
    onehot = np.stack([y == 0, y == 1]).reshape(-1).astype(np.int64)
    return {
        "correct": int((pred == y).sum()), "labeled": y.size,
        "inter_bg": int(((pred == 0) & (y == 0)).sum()), "inter_fg": int(((pred == 1) & (y == 1)).sum()),
        "union_bg": int(((pred == 0) | (y == 0)).sum()), "union_fg": int(((pred == 1) | (y == 1)).sum()),
        "ap": float(np.nan_to_num(average_precision_score(onehot, scores))),
    }


def random_maps(batch: int, side: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = (torch.rand(batch, side, side, generator=g, dtype=dtype) * 8).round()  # many ties
    masks = torch.rand(batch, side, side, generator=g) > 0.6
    return maps, masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segmentation_matches_independent_reference_computation(dtype):
    maps, masks = random_maps(6, 7, seed=0, dtype=dtype)
    maps[2] = 1.0  # constant map
    for mine, ref in zip(segmentation_rows(maps, masks), map(chefer_reference_row, maps, masks)):
        assert {k: mine[k] for k in ref if k != "ap"} == {k: v for k, v in ref.items() if k != "ap"}
        assert mine["ap"] == pytest.approx(ref["ap"], abs=1e-12)


def test_accumulator_equals_merged_rows_in_any_order():
    maps, masks = random_maps(10, 6, seed=1)
    acc = SegmentationAccumulator()
    rows = acc.update(maps[:3], masks[:3]) + acc.update(maps[3:], masks[3:])
    random.Random(0).shuffle(rows)
    shard_rows = segmentation_rows(maps[5:], masks[5:]) + segmentation_rows(maps[:5], masks[:5])
    assert aggregate_segmentation(rows) == acc.result()
    assert aggregate_segmentation(shard_rows) == acc.result()


def test_segmentation_bad_input():
    with pytest.raises(InputError, match="masks"):
        segmentation_rows(torch.rand(2, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(InputError, match=r"\(B, H, W\)"):
        segmentation_rows(torch.rand(2, 4, 4), torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(InputError, match="lacks"):
        aggregate_segmentation([{"correct": 1}])


# ----------------------------------------------------------------------------- average precision


@pytest.mark.parametrize("levels", [None, 4])
def test_average_precision_equals_sklearn(levels):
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(8, 60, generator=g)
    if levels:
        scores = (scores * levels).round() / levels  # ties
    targets = torch.rand(8, 60, generator=g) > 0.5
    mine = average_precision(scores, targets)
    ref = [average_precision_score(t.numpy(), s.numpy()) for s, t in zip(scores, targets)]
    np.testing.assert_allclose(mine.numpy(), ref, rtol=0, atol=1e-12)


def test_average_precision_by_hand():
    # ranked (+, -, +): P@1 = 1, P@3 = 2/3 -> AP = (1 + 2/3) / 2 = 5/6
    ap = average_precision(torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[T, F_, T]]))
    assert ap.item() == pytest.approx(5 / 6)


# ----------------------------------------------------------------------------- perturbation

SIDE_H, SIDE_W = 2, 5  # 10 pixels: fraction p removes exactly 10p pixels
WATCHED = 3  # flat index of the pixel the toy classifier looks at


def watch_pixel(images: torch.Tensor) -> torch.Tensor:
    """Class 1 while pixel WATCHED is non-zero (in every channel), else class 0."""
    alive = (images.flatten(2)[:, :, WATCHED] != 0).all(dim=1)
    return torch.stack([(~alive).float(), alive.float()], dim=1)


def relevance_with_watched_third() -> torch.Tensor:
    # relevance ranks: pixel WATCHED has the 3rd-highest value (and the 8th-lowest)
    values = torch.tensor([9.0, 8.0, 6.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    return values.view(1, SIDE_H, SIDE_W)


def test_removed_count():
    assert [removed_count(10, p) for p in DEFAULT_FRACTIONS] == list(range(1, 10))
    assert removed_count(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996 in floats
    assert removed_count(224 * 224, 0.1) == 5017  # int(5017.6), as the reference


def test_positive_perturbation_by_hand():
    images = torch.full((1, 3, SIDE_H, SIDE_W), 0.5)
    hits = perturbation_hits(watch_pixel, images, relevance_with_watched_third(), torch.tensor([1]))
    # the watched pixel goes once 3 pixels are removed (p = 0.3): hits at p = 0, 0.1, 0.2 only
    assert hits.tolist() == [[T, T, T, F_, F_, F_, F_, F_, F_, F_]]
    # AUC = 100 * 0.1 * ((1 + 1)/2 + (1 + 1)/2 + (1 + 0)/2) = 25
    assert perturbation_auc(hits) == pytest.approx(25.0)


def test_negative_perturbation_by_hand():
    images = torch.full((1, 3, SIDE_H, SIDE_W), 0.5)
    hits = perturbation_hits(watch_pixel, images, relevance_with_watched_third(), torch.tensor([1]),
                             positive=False)
    # 8th-lowest relevance: removed from p = 0.8 on
    assert hits.tolist() == [[T] * 8 + [F_, F_]]
    # AUC = 100 * (0.7 * 1 + 0.1 * 1/2) = 75
    assert perturbation_auc(hits) == pytest.approx(75.0)


def test_channels_are_zeroed_together_ties_by_index_and_batching():
    seen: list[torch.Tensor] = []

    def spy(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        return torch.zeros(images.shape[0], 2)

    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, SIDE_H, SIDE_W, generator=g) * 0.9 + 0.1  # no zeros of their own
    flat_maps = torch.zeros(3, SIDE_H, SIDE_W)  # all ties
    labels = torch.zeros(3, dtype=torch.long)
    hits = perturbation_hits(spy, images, flat_maps, labels, fractions=(0.2, 0.5), max_batch=6)
    assert len(seen) == 2  # 3 copies per image, 6 per call -> images (0, 1) then (2,)
    copies = torch.cat(seen).view(3, 3, 3, SIDE_H * SIDE_W)  # (image, copy, channel, pixel)
    zeroed = copies == 0
    assert (zeroed.all(dim=2) == zeroed.any(dim=2)).all()  # a pixel loses all channels or none
    removed = zeroed.all(dim=2)
    assert removed[:, 0].sum() == 0
    assert removed[:, 1].tolist() == [[T, T] + [F_] * 8] * 3  # ties: lowest indices first
    assert removed[:, 2].tolist() == [[T] * 5 + [F_] * 5] * 3
    assert hits.shape == (3, 3) and hits.all()
    again = perturbation_hits(spy, images, flat_maps, labels, fractions=(0.2, 0.5), max_batch=1)
    assert torch.equal(again, hits)


def test_perturbation_auc_from_curves_by_hand():
    curve = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    # 100 * 0.1 * (0.9 + 0.7 + 0.5 + 0.3 + 0.1) = 25
    assert perturbation_auc(curve) == pytest.approx(25.0)
    hits = torch.tensor([[T] * 10, [F_] * 10])  # accuracy 1/2 everywhere -> 100 * 0.5 * 0.9
    assert perturbation_auc(hits) == pytest.approx(45.0)
    assert perturbation_auc([1.0, 0.0], fractions=(0.5,)) == pytest.approx(25.0)
    with pytest.raises(InputError):
        perturbation_auc([1.0, 0.5])


def test_perturbation_bad_input():
    images = torch.rand(2, 3, 4, 4)
    with pytest.raises(InputError, match="upsample"):
        perturbation_hits(watch_pixel, images, torch.rand(2, 2, 2), torch.zeros(2))
    with pytest.raises(InputError, match="fractions"):
        perturbation_hits(watch_pixel, images, torch.rand(2, 4, 4), torch.zeros(2), fractions=(0.5, 0.2))


# ----------------------------------------------------------------------------- top-k overlap


def test_topk_overlap_by_hand():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    b = torch.tensor([[1.0, 4.0, 5.0, 3.0, 2.0]])
    assert topk_overlap(a, b, 2).tolist() == [0.5]  # {0, 1} & {2, 1}
    assert topk_overlap(a, b, 3).item() == pytest.approx(2 / 3)  # {0, 1, 2} & {2, 1, 3}
    assert topk_overlap(a, b, 5).tolist() == [1.0]
    maps = torch.stack([a.view(1, 5), b.view(1, 5)])  # (B, 1, 5), flattened per image
    assert topk_overlap(maps, maps.flip(0), 2).tolist() == [0.5, 0.5]


def test_topk_overlap_ties():
    a = torch.tensor([[3.0, 2.0, 2.0, 1.0]])
    # Definition 4.1: index 1 and 2 each have 3 entries >= them > k = 2, so T_2 = {0}
    assert topk_overlap(a, a, 2).tolist() == [0.5]
    assert topk_overlap(a, a, 2, ties="stable").tolist() == [1.0]
    constant = torch.ones(1, 4)
    assert topk_overlap(constant, constant, 2).tolist() == [0.0]
    b = torch.tensor([[1.0, 2.0, 2.0, 3.0]])  # stable picks {0, 1} vs {3, 1}
    assert topk_overlap(a, b, 2, ties="stable").tolist() == [0.5]
    with pytest.raises(InputError, match="k"):
        topk_overlap(a, a, 5)


# ----------------------------------------------------------------------------- faithfulness


def test_faithfulness_score_by_hand():
    ref = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [2.0, 3.0]]])
    maps = torch.tensor([[[0.0, 3.0], [2.0, 1.0]], [[0.0, 10.0], [20.0, 30.0]]])
    # image 0: |(0, 1/3, 2/3, 1) - (0, 1, 2/3, 1/3)| = (0, 2/3, 0, 2/3) -> d = 1/3; image 1: d = 0
    assert faithfulness_score(ref, maps) == pytest.approx(6.0)  # 1 / mean(1/3, 0)
    per_image = faithfulness_score(ref, maps, reduction="none")
    assert per_image[0].item() == pytest.approx(3.0) and math.isinf(per_image[1].item())
    assert math.isinf(faithfulness_score(ref, ref))
    # constant map -> zeros: d = mean(0, 1/3, 2/3, 1) = 1/2
    assert faithfulness_score(ref[:1], torch.ones(1, 2, 2)) == pytest.approx(2.0)


def test_min_max_normalise_constant_conventions():
    assert torch.isnan(min_max_normalise(torch.ones(1, 2, 2))).all()
    assert (min_max_normalise(torch.ones(1, 2, 2), constant="zero") == 0).all()


# ----------------------------------------------------------------------------- classification


def test_accuracy_helpers_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert top1_hits(logits, labels).tolist() == [T, T, F_]
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([0, 1, 1]), labels) == 1.0  # predictions accepted too
    adversarial = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
    assert flip_rate(logits, adversarial) == pytest.approx(2 / 3)
    with pytest.raises(InputError):
        accuracy(logits, torch.tensor([0, 1]))
