"""Data-set registry: spec strings -> data sets, seeded subsampling, stable ids.

Specs (`open_dataset(spec, size)`):
- `imagenet-seg:PATH`               gtsegs_ijcv.mat (ImageNet-segmentation, 4,276 images)
- `imagenet-val:DIR`                ImageNet val, `DIR/<wnid>/*.JPEG` (or `DIR/val/<wnid>/…`);
                                    `image_resize="crop"` (default, the usual eval transform) or
                                    `"exact"` (Resize((H, W)) without crop: Chefer et al.'s
                                    perturbation test)
- `imagenet-val:DIR,LABELS`         flat folder + labels file
- `masks:IMAGES_DIR,MASKS_DIR`      images + mask PNGs matched by stem
- `world`, `world:VARIANT`          the embedded demo world (fvit.data.world)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from fvit.errors import FvitError, InputError
from fvit.registry import Registry

Opener = Callable[..., Dataset]  # opener(arg, size, image_resize=None) -> Dataset
IMAGE_RESIZES = ("crop", "exact")
DATASETS: Registry[Opener] = Registry("data set")


def _split_paths(arg: str, n: int, name: str, usage: str) -> list[str]:
    parts = [p for p in arg.split(",")] if arg else []
    if not (1 <= len(parts) <= n) or not all(parts):
        raise FvitError(f"data set {name!r} needs {usage}, got {arg!r}")
    return parts


@DATASETS.register("imagenet-seg", aliases=("imagenet-segmentation", "gtsegs"))
def _open_imagenet_seg(arg: str, size, image_resize=None):
    from fvit.data.imagenet_seg import ImageNetSegmentation

    (path,) = _split_paths(arg, 1, "imagenet-seg", "a path: imagenet-seg:PATH/gtsegs_ijcv.mat")
    return ImageNetSegmentation(path, size)


@DATASETS.register("imagenet-val", aliases=("imagenet",))
def _open_imagenet_val(arg: str, size, image_resize=None):
    from fvit.data.imagenet_val import imagenet_val

    parts = _split_paths(arg, 2, "imagenet-val", "imagenet-val:DIR or imagenet-val:DIR,LABELS_FILE")
    return imagenet_val(parts[0], size, labels_file=parts[1] if len(parts) > 1 else None,
                        resize=image_resize or "crop")


@DATASETS.register("masks", aliases=("mask-folder",))
def _open_masks(arg: str, size, image_resize=None):
    from fvit.data.masks import MaskFolder

    parts = _split_paths(arg, 2, "masks", "masks:IMAGES_DIR,MASKS_DIR")
    if len(parts) != 2:
        raise FvitError(f"data set 'masks' needs masks:IMAGES_DIR,MASKS_DIR, got {arg!r}")
    return MaskFolder(parts[0], parts[1], size)


@DATASETS.register("world", aliases=("demo",))
def _open_world(arg: str, size, image_resize=None):
    from fvit.data.world import WorldDataset

    return WorldDataset(arg or "eval", size)


def parse_spec(spec: str) -> tuple[str, str]:
    name, _, arg = str(spec).partition(":")
    if not name:
        raise FvitError(f"empty data set spec {spec!r}; available: {', '.join(DATASETS.names())}")
    return name, arg


class SubsetDataset(Dataset):
    """`base` restricted to `indices` (kept in the given order), with ids."""

    def __init__(self, base: Dataset, indices: list[int]):
        self.base, self.indices = base, list(indices)
        base_ids = dataset_ids(base)
        self.ids = [base_ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.base[self.indices[index]]


def sample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """All of range(n), or `limit` of them drawn uniformly without replacement with `seed` (sorted).

    A larger limit with the same seed gives a superset (prefix of the same permutation), so a
    resumed run with a bigger limit reuses the rows already stored.
    """
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 0:
        raise FvitError(f"limit must be >= 0, got {limit}", params=("limit",))
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def subsample(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    idx = sample_indices(len(dataset), limit, seed)
    return dataset if len(idx) == len(dataset) else SubsetDataset(dataset, idx)


def dataset_ids(dataset: Dataset) -> list[str]:
    """Stable string ids of every item: `dataset.ids` when present, else read item by item."""
    ids = getattr(dataset, "ids", None)
    if ids is not None:
        return [str(i) for i in ids]
    return [str(dataset[i]["id"]) for i in range(len(dataset))]


def open_dataset(spec: str, size: int | tuple[int, int] = 224, limit: int | None = None, seed: int = 0,
                 image_resize: str | None = None) -> Dataset:
    """Open a data set from a spec string (see module doc), optionally a seeded random `limit`.
    `image_resize` ("crop" | "exact") applies to the sets whose images are not already resized
    without crop (imagenet-val); None keeps each set's default."""
    if image_resize is not None and image_resize not in IMAGE_RESIZES:
        raise FvitError(f"image resize must be one of {', '.join(IMAGE_RESIZES)}, got {image_resize!r}")
    name, arg = parse_spec(spec)
    opener = DATASETS.get(name)
    ds = opener(arg, size, image_resize=image_resize)
    if len(ds) == 0:
        raise InputError(f"data set {spec!r} is empty")
    return subsample(ds, limit, seed)


def available_datasets() -> list[str]:
    return DATASETS.names()


__all__ = ["DATASETS", "SubsetDataset", "available_datasets", "dataset_ids", "open_dataset",
           "parse_spec", "sample_indices", "subsample"]
