"""Data sets (items are dicts: image (3,H,W) in [0,1], label int or -1, mask bool (H,W) for
segmentation sets, id str) and the spec-string registry `open_dataset`.

`load_image` / `load_images` live in `fvit.data.images` and are forwarded lazily from here.
"""

from __future__ import annotations

from fvit.data.batching import chunks, collate, iter_batches
from fvit.data.sets import (
    DATASETS,
    SubsetDataset,
    available_datasets,
    dataset_ids,
    open_dataset,
    sample_indices,
    subsample,
)

_LAZY = {
    "load_image": "fvit.data.images",
    "load_images": "fvit.data.images",
    "ImageNetSegmentation": "fvit.data.imagenet_seg",
    "imagenet_val": "fvit.data.imagenet_val",
    "MaskFolder": "fvit.data.masks",
    "WorldDataset": "fvit.data.world",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fvit.data' has no attribute {name!r}")


__all__ = [
    "DATASETS", "SubsetDataset", "available_datasets", "chunks", "collate", "dataset_ids",
    "iter_batches", "open_dataset", "sample_indices", "subsample", *_LAZY,
]
