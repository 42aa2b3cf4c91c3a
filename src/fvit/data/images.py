"""Reading user images for the CLI and the library: any PIL-readable file (PNG / JPEG / TIFF ...,
modes RGB, L, RGBA, P, 16-bit and float grey, ...) -> float RGB tensors in [0, 1]. 16-bit images
are read as value / 65535, float images as they are (they must lie in [0, 1]); nothing is clipped.
Resizing is a plain Resize((H, W)) without crop, as in the segmentation protocol; large files are
decoded no larger than needed (`fvit.data._io.open_image`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fvit.data._io import DEFAULT_MAX_PIXELS, as_hw, open_image, pil_to_tensor01, resize_exact
from fvit.errors import InputError


def _open(path: str | Path, size=None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    path = Path(path)
    if path.is_dir():
        raise InputError(f"image {path}: is a folder, not an image file")
    if not path.exists():
        raise InputError(f"image {path}: no such file")
    if not path.is_file():
        raise InputError(f"image {path}: not a regular file")
    return open_image(path, size, max_pixels)  # InputError naming the file when it cannot be read


def image_size(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(H, W) of an image file, read from its header (the same checks as loading, no decoding)."""
    from PIL import Image

    from fvit.data._io import _no_pillow_limit, oriented_size

    if not Path(path).is_file():
        _open(path, max_pixels=max_pixels)  # raises the message loading would give
    try:
        with _no_pillow_limit(), Image.open(path) as im:
            w, h = oriented_size(im)  # as displayed (EXIF orientation)
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    if max_pixels is not None and w * h > max_pixels:
        open_image(path, max_pixels=max_pixels)  # raises the pixel-limit message (before decoding)
    return h, w


def load_image(path: str | Path, max_side: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One image as float ``(3, H, W)`` in [0, 1] at its own size (alpha dropped, palette / grey
    converted to RGB), or shrunk (aspect kept) so that its longer side is at most ``max_side``.
    Raises InputError naming the file if it is missing, not an image, or over ``max_pixels``."""
    if max_side is None:
        return pil_to_tensor01(_open(path, max_pixels=max_pixels))
    h, w = image_size(path, max_pixels)
    scale = min(1.0, max_side / max(h, w))
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    return pil_to_tensor01(resize_exact(_open(path, hw, max_pixels), hw))


def load_images(paths: Sequence[str | Path], size: int | tuple[int, int],
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Images resized (bilinear, no crop) to ``size`` and stacked as ``(B, 3, H, W)`` in [0, 1]."""
    if not paths:
        raise InputError("no images given")
    hw = as_hw(size)
    return torch.stack([pil_to_tensor01(resize_exact(_open(p, hw, max_pixels), hw)) for p in paths])
