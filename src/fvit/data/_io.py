"""Image / mask decoding and resizing shared by the data-set readers (PIL in, tensors out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fvit.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """224 -> (224, 224); (H, W) stays."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def open_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def pil_to_tensor01(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [0, 1]."""
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_exact(im: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize to exactly (H, W) without crop, bilinear (torchvision Resize((H, W)) on PIL)."""
    h, w = as_hw(size)
    return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)


def resize_center_crop(im: Image.Image, size: int | tuple[int, int], crop_pct: float = 0.875) -> Image.Image:
    """The usual ImageNet eval transform: shorter side to size/crop_pct, then centre crop to size."""
    h, w = as_hw(size)
    scale = max(h, w) / crop_pct / min(im.size)
    new_w, new_h = max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))
    im = im.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return im.crop((left, top, left + w, top + h))


def mask_to_tensor(mask: np.ndarray | Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """Any 2-D mask (non-zero = foreground) -> bool (H, W), nearest-resized."""
    h, w = as_hw(size)
    arr = np.asarray(mask)
    if arr.ndim == 3:  # an RGB(A) mask PNG: foreground where any channel is set
        arr = arr[..., :3].max(axis=-1)
    if arr.ndim != 2:
        raise InputError(f"mask must be 2-D, got shape {arr.shape}")
    im = Image.fromarray((arr > 0).astype(np.uint8) * 255)
    if im.size != (w, h):
        im = im.resize((w, h), Image.NEAREST)
    return torch.from_numpy(np.asarray(im) > 127)


RESIZERS = {"exact": resize_exact, "crop": resize_center_crop}


def load_rgb_tensor(path: str | Path, size: int | tuple[int, int], resize: str = "exact") -> torch.Tensor:
    if resize not in RESIZERS:
        raise InputError(f"unknown resize mode {resize!r}; use one of {', '.join(RESIZERS)}")
    return pil_to_tensor01(RESIZERS[resize](open_rgb(path), size))


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
