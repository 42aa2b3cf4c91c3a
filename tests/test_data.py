"""fvit.data: the gtsegs_ijcv.mat layout, ImageNet-val folders, mask folders, the spec registry."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fvit.data import collate, dataset_ids, open_dataset, sample_indices
from fvit.data.imagenet_seg import ImageNetSegmentation, write_gtsegs_like
from fvit.errors import FvitError

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def _seg_file(tmp_path, n=3):
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(n):
        h, w = 20 + 4 * i, 30  # non-square so a wrong transpose shows
        im = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im[0, 0] = [255, 0, 0]
        m = np.zeros((h, w), np.uint8)
        m[: h // 2, : w // 3] = 1  # top-left block: also catches a wrong transpose
        images.append(im)
        masks.append(m)
    path = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs_like(path, images, masks)
    return path, images, masks


def test_imagenet_seg_layout_and_transposes(tmp_path):
    path, images, masks = _seg_file(tmp_path)
    ds = ImageNetSegmentation(path, size=16)
    assert len(ds) == 3
    raw_img, raw_gt = ds.read_raw(1)
    np.testing.assert_array_equal(raw_img, images[1])
    np.testing.assert_array_equal(raw_gt, masks[1])
    item = ds[2]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (16, 16)
    assert item["label"] == -1 and item["id"] == "imagenet-seg/00002"
    # nearest-resized top-left block: rows < 8 and cols < ~5 are foreground, the rest background
    assert item["mask"][:8, :5].all() and not item["mask"][8:].any() and not item["mask"][:, 6:].any()


def test_imagenet_seg_via_spec_and_errors(tmp_path):
    path, _, _ = _seg_file(tmp_path, n=5)
    ds = open_dataset(f"imagenet-seg:{path}", size=(8, 12), limit=2, seed=44)
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 8, 12)
    with pytest.raises(FvitError, match="nope.mat"):
        open_dataset(f"imagenet-seg:{tmp_path / 'nope.mat'}")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FvitError, match="bad.mat"):
        open_dataset(f"imagenet-seg:{bad}")
    with pytest.raises(FvitError, match="unknown data set"):
        open_dataset("cifar:foo")


def _jpeg(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), color).save(path)


def test_imagenet_val_folder_layout(tmp_path):
    root = tmp_path / "val"
    for wnid, k in (("n01443537", 2), ("n01440764", 1), ("n01484850", 1)):
        for j in range(k):
            _jpeg(root / wnid / f"ILSVRC2012_val_{wnid}_{j}.JPEG", (10 * j, 0, 0))
    ds = open_dataset(f"imagenet-val:{tmp_path}", size=24)  # DIR/val/ found
    labels = {it: ds[i]["label"] for i, it in enumerate(dataset_ids(ds))}
    # ImageNet-1k indices (tench=0, goldfish=1, great white shark=2), sorted-wnid order
    assert sorted(labels.values()) == [0, 1, 1, 2]
    assert all(k.startswith("n014") for k in labels)
    assert ds[0]["image"].shape == (3, 24, 24)


def test_imagenet_val_non_imagenet_folders_use_sorted_order(tmp_path):
    for name in ("zebra", "apple"):
        _jpeg(tmp_path / name / "a.jpg", (0, 0, 0))
    ds = open_dataset(f"imagenet-val:{tmp_path}", size=8)
    assert [ds[i]["label"] for i in range(2)] == [0, 1] and ds.ids == ["apple/a.jpg", "zebra/a.jpg"]


def test_imagenet_val_flat_with_labels_file(tmp_path):
    for n in ("b.JPEG", "a.JPEG", "c.JPEG"):
        _jpeg(tmp_path / "flat" / n, (0, 0, 0))
    lab = tmp_path / "labels.txt"
    lab.write_text("a.JPEG 5\nb.JPEG,7\nc.JPEG n01440764\n")
    ds = open_dataset(f"imagenet-val:{tmp_path / 'flat'},{lab}", size=8)
    assert [(ds.ids[i], ds[i]["label"]) for i in range(3)] == [("a.JPEG", 5), ("b.JPEG", 7), ("c.JPEG", 0)]
    lab.write_text("1\n2\n3\n")  # one per line in sorted name order
    ds = open_dataset(f"imagenet-val:{tmp_path / 'flat'},{lab}", size=8)
    assert [ds[i]["label"] for i in range(3)] == [1, 2, 3]
    lab.write_text("a.JPEG 1\n")
    with pytest.raises(FvitError, match="no label"):
        open_dataset(f"imagenet-val:{tmp_path / 'flat'},{lab}")


def test_limit_is_seeded_and_nested():
    a = sample_indices(50000, 4000, seed=44)
    assert a == sample_indices(50000, 4000, seed=44) and len(set(a)) == 4000 and a == sorted(a)
    assert a != sample_indices(50000, 4000, seed=0)
    assert set(sample_indices(100, 10, 3)) <= set(sample_indices(100, 20, 3))
    assert sample_indices(5, None) == sample_indices(5, 10) == [0, 1, 2, 3, 4]


def test_mask_folder_and_collate(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "m").mkdir()
    for s in ("x1", "x2", "x3"):
        _jpeg(tmp_path / "im" / f"{s}.jpg", (200, 0, 0))
    for s in ("x1", "x3"):
        m = np.zeros((30, 40), np.uint8)
        m[:, :20] = 255
        Image.fromarray(m).save(tmp_path / "m" / f"{s}.png")
    ds = open_dataset(f"masks:{tmp_path / 'im'},{tmp_path / 'm'}", size=10)
    assert ds.ids == ["x1", "x3"] and [p.name for p in ds.unmatched] == ["x2.jpg"]
    b = collate([ds[0], ds[1]])
    assert b["image"].shape == (2, 3, 10, 10) and b["mask"].shape == (2, 10, 10)
    assert b["mask"][:, :, :5].all() and not b["mask"][:, :, 5:].any()
    assert b["label"].tolist() == [-1, -1] and b["id"] == ["x1", "x3"]
    with pytest.raises(FvitError, match="masks folder not found"):
        open_dataset(f"masks:{tmp_path / 'im'},{tmp_path / 'zz'}")


@pytest.mark.assets
def test_coco128_masks_asset():
    images, masks = ASSETS / "coco128-seg" / "images" / "train2017", ASSETS / "coco128-seg" / "masks_fg"
    if not (images.is_dir() and masks.is_dir()):
        pytest.skip("../shared/assets/coco128-seg absent")
    ds = open_dataset(f"masks:{images},{masks}", size=32, limit=4, seed=1)
    b = collate([ds[i] for i in range(len(ds))])
    assert b["image"].shape == (4, 3, 32, 32) and b["mask"].dtype == torch.bool
    # the seeded subset of the full folder, and each mask is its PNG's non-zero pixels sampled at
    # the 32 x 32 pixel centres (nearest), recomputed here by index arithmetic
    full = open_dataset(f"masks:{images},{masks}", size=32)
    assert b["id"] == [full.ids[i] for i in sample_indices(len(full), 4, 1)]
    for mask, stem in zip(b["mask"], b["id"]):
        arr = np.asarray(Image.open(masks / f"{stem}.png").convert("L")) > 0
        rows = ((np.arange(32) + 0.5) * arr.shape[0] / 32).astype(int)
        cols = ((np.arange(32) + 0.5) * arr.shape[1] / 32).astype(int)
        assert torch.equal(mask, torch.from_numpy(arr[rows][:, cols])), stem
    assert 0 < int(b["mask"].sum()) < b["mask"].numel()  # both classes occur on these four images


@pytest.mark.assets
def test_imagenet_samples_flat_labels_from_names():
    root = ASSETS / "imagenet-samples"
    if not root.is_dir():
        pytest.skip("../shared/assets/imagenet-samples absent")
    ds = open_dataset(f"imagenet-val:{root}", size=16)
    first = ds.ids.index("n01440764_tench.JPEG")
    assert ds[first]["label"] == 0 and len(ds) == 100
