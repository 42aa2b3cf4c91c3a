"""Reading user images for the CLI and the library: any PIL-readable file (PNG / JPEG / ..., modes
RGB, L, RGBA, P, ...) -> float RGB tensors in [0, 1]. Resizing is a plain Resize((H, W)) without
crop, as in the segmentation protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fvit.data._io import as_hw, open_rgb, pil_to_tensor01, resize_exact
from fvit.errors import InputError


def _open(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path}: no such file")
    if not path.is_file():
        raise InputError(f"image {path}: not a file")
    return open_rgb(path)  # InputError naming the file when PIL cannot decode it


def load_image(path: str | Path) -> torch.Tensor:
    """One image as float ``(3, H, W)`` in [0, 1] at its own size (alpha dropped, palette / grey
    converted to RGB). Raises InputError naming the file if it is missing or not an image."""
    return pil_to_tensor01(_open(path))


def load_images(paths: Sequence[str | Path], size: int | tuple[int, int]) -> torch.Tensor:
    """Images resized (bilinear, no crop) to ``size`` and stacked as ``(B, 3, H, W)`` in [0, 1]."""
    if not paths:
        raise InputError("no images given")
    hw = as_hw(size)
    return torch.stack([pil_to_tensor01(resize_exact(_open(p), hw)) for p in paths])
