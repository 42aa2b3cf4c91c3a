"""Collating data-set items (dicts) into batches, over a fixed list of index chunks."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from fvit.errors import InputError


def collate(items: Sequence[dict]) -> dict:
    """[{image, label, id, mask?}] -> {image (B,3,H,W), label (B,) long, id [str], mask (B,H,W) bool?}."""
    if not items:
        raise InputError("cannot collate an empty batch")
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) != 1:
        raise InputError(f"images in one batch differ in shape: {sorted(shapes)}")
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([int(it.get("label", -1)) for it in items], dtype=torch.long),
        "id": [str(it["id"]) for it in items],
    }
    if all("mask" in it and it["mask"] is not None for it in items):
        batch["mask"] = torch.stack([torch.as_tensor(it["mask"]).bool() for it in items])
    return batch


def chunks(seq: Sequence, size: int) -> list[list]:
    if size < 1:
        raise InputError(f"batch size must be >= 1, got {size}")
    return [list(seq[i:i + size]) for i in range(0, len(seq), size)]


def iter_batches(dataset: Dataset, index_batches: Iterable[Sequence[int]], num_workers: int = 0,
                 pin_memory: bool | None = None) -> Iterator[dict]:
    """Yield collated batches for the given index chunks (order kept); workers prefetch if > 0.
    ``pin_memory`` (default: when CUDA is available) has the workers' batches put in page-locked
    memory, so that copies to the GPU can overlap with compute (``.to(device, non_blocking=True)``)."""
    index_batches = [list(b) for b in index_batches]
    if num_workers <= 0:
        for b in index_batches:
            yield collate([dataset[i] for i in b])
        return
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    loader = DataLoader(dataset, batch_sampler=index_batches, collate_fn=collate, num_workers=num_workers,
                        pin_memory=pin)
    yield from loader
