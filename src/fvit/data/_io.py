"""Image / mask decoding and resizing shared by the data-set readers (PIL in, tensors out)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
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


#: Default limit on decoded pixels (Pillow's own decompression-bomb refusal threshold, ~179 Mpx).
DEFAULT_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
#: Largest 16-bit value: 16-bit and 16-bit-in-32-bit integer images are read as value / 65535.
_U16 = 65535.0


@contextmanager
def _no_pillow_limit():
    """Pillow's decompression-bomb check off (fvit applies its own `max_pixels` limit instead)."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_PILLOW_LIMIT_LOCK = threading.RLock()


def _to_rgb_or_grey01(im: Image.Image, path) -> Image.Image:
    """8-bit modes -> RGB; 16-bit / 32-bit integer and float grey images -> mode 'F' in [0, 1] by
    their real range (16-bit: / 65535; float: as is when in [0, 1]); anything else is refused."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > _U16:
            raise InputError(f"image {path}: 32-bit integer pixels in [{lo:.6g}, {hi:.6g}]; fvit reads 8-bit, "
                             "16-bit (0..65535) and float [0, 1] images")
        return Image.fromarray((arr / _U16).astype(np.float32), mode="F")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        finite = bool(np.isfinite(arr).all())
        lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size and finite else (0.0, 0.0)
        if not finite or lo < 0 or hi > 1:
            what = "non-finite values" if not finite else f"values in [{lo:.6g}, {hi:.6g}]"
            raise InputError(f"image {path}: float image with {what}; fvit expects float images in [0, 1] "
                             "(rescale it, or save it as an 8/16-bit image)")
        return im.copy()
    return im.convert("RGB")


#: EXIF orientations (tag 0x0112) that swap width and height (a transpose or a 90-degree turn).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image (1 = upright, also when absent or unreadable)."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a damaged EXIF block: the image is read as stored
        return 1


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(W, H) of the image as displayed (its EXIF orientation applied)."""
    w, h = im.size
    return (h, w) if exif_orientation(im) in _SWAPPING_ORIENTATIONS else (w, h)


def _reduce_factor(have: tuple[int, int], want: tuple[int, int] | None) -> int:
    """An integer factor that keeps the image at least twice `want` (W, H) in both directions."""
    if want is None:
        return 1
    return max(1, min(have[0] // (2 * max(1, want[0])), have[1] // (2 * max(1, want[1]))))


def open_image(path: str | Path, size: int | tuple[int, int] | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file as PIL RGB (8-bit modes) or mode 'F' (grey, float in [0, 1], for 16-bit
    and float files; see `_to_rgb_or_grey01`). InputError naming the file when it cannot be read,
    has an unsupported range, or has more than `max_pixels` pixels (None: no limit).

    `size` (H, W), when given, is a hint: the file is decoded no larger than needed for a later resize
    to that size (JPEG DCT scaling via draft, then an integer reduce), keeping at least twice the
    requested size so that the final bilinear resize sees the same detail. The EXIF orientation (phone
    photos) is applied: the image comes out as it is displayed."""
    try:
        with _no_pillow_limit(), Image.open(path) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise InputError(
                    f"image {path}: {w}x{h} pixels ({w * h / 1e6:.0f} Mpx) is over the decompression-bomb "
                    f"limit of {max_pixels / 1e6:.0f} Mpx; if you trust the file, pass max_pixels=None",
                    params=("max_pixels",))
            want = None if size is None else tuple(reversed(as_hw(size)))  # (W, H), as displayed
            orientation = exif_orientation(im)
            stored_want = (None if want is None else
                           (want[1], want[0]) if orientation in _SWAPPING_ORIENTATIONS else want)
            if stored_want is not None and im.format == "JPEG" and im.mode in ("RGB", "L"):
                im.draft(im.mode, (2 * stored_want[0], 2 * stored_want[1]))
            im.load()
            if orientation != 1:
                from PIL import ImageOps

                im = ImageOps.exif_transpose(im)
            out = _to_rgb_or_grey01(im, path)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None
    factor = _reduce_factor(out.size, want)
    return out.reduce(factor) if factor > 1 else out


def open_rgb(path: str | Path) -> Image.Image:
    """`open_image` without a size hint (kept for the data-set readers)."""
    return open_image(path)


def pil_to_tensor01(im: Image.Image) -> torch.Tensor:
    """PIL RGB (8-bit) or 'F' (grey in [0, 1]) -> float (3, H, W) in [0, 1]."""
    if im.mode == "F":
        grey = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).clamp_(0, 1)
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    arr = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
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
