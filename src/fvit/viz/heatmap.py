"""Heat-map overlays: an explanation map min-max normalised, coloured with matplotlib's ``jet`` and
blended on the image (the papers' figure style)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1] over the last two dims (constant maps become 0)."""
    flat = maps.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp(min=1e-12)).reshape(maps.shape)


def overlay(images01: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] + ``(B, h, w)`` raw maps -> ``(B, H, W, 3)`` in [0, 1]:
    ``(1 - alpha) * image + alpha * cmap(minmax(bilinear(map)))``. Unbatched inputs also work."""
    single = images01.ndim == 3
    images = images01[None] if single else images01
    maps = maps[None] if maps.ndim == 2 else maps
    images, maps = images.detach().float().cpu(), maps.detach().float().cpu()
    if tuple(maps.shape[-2:]) != tuple(images.shape[-2:]):
        maps = F.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    colours = torch.from_numpy(matplotlib.colormaps[cmap](normalize_maps(maps).numpy())[..., :3]).float()
    out = (1 - alpha) * images.permute(0, 2, 3, 1) + alpha * colours
    return out[0] if single else out


def save_overlay(image01: torch.Tensor, heat: torch.Tensor, path: str | Path, alpha: float = 0.5) -> Path:
    """Write ``overlay(image01, heat)`` for one image as a PNG."""
    from PIL import Image

    rgb = overlay(image01, heat, alpha=alpha).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    path = Path(path)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path
