"""Heat-map grid figure: rows = images, columns = image + (clean / attacked) x methods x (± DDS).

Uses `fvit.viz.heatmap.overlay` (the explain engineers' helper) when present, else a minimal jet
overlay here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fvit.errors import InputError  # noqa: E402


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1).float()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def _resize_maps(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == hw:
        return maps.float()
    return torch.nn.functional.interpolate(maps[:, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def jet_overlay(images01: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """(B,3,H,W) [0,1] + (B,h,w) raw maps -> (B,H,W,3) blended [0,1] (maps min-max per image)."""
    m = _normalise(_resize_maps(maps.detach().cpu(), tuple(images01.shape[-2:])))
    rgba = torch.from_numpy(matplotlib.colormaps["jet"](m.numpy())[..., :3]).float()
    return (1 - alpha) * images01.detach().cpu().permute(0, 2, 3, 1).float() + alpha * rgba


def _overlay(images01: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    try:
        from fvit.viz import heatmap
    except ImportError:
        return jet_overlay(images01, maps)
    fn = getattr(heatmap, "overlay", None)
    if fn is None:
        return jet_overlay(images01, maps)
    out = torch.as_tensor(np.asarray(fn(images01.detach().cpu(), maps.detach().cpu())))
    if out.ndim == 4 and out.shape[1] == 3:  # (B,3,H,W) -> (B,H,W,3)
        out = out.permute(0, 2, 3, 1)
    out = out.float()
    return out / 255.0 if out.max() > 1.5 else out


def heatmap_grid(images: Mapping[str, torch.Tensor], maps: Mapping[str, torch.Tensor], path: str | Path,
                 image_columns: tuple[str, ...] | None = None, row_labels: list[str] | None = None,
                 title: str | None = None) -> Path:
    """Write a grid figure.

    images: column title -> (B,3,H,W) [0,1] (e.g. {"clean": x, "attacked": x_adv}).
    maps:   column title -> (B,h,w) raw maps; a title "attacked / TA + DDS" is drawn over the
            image whose name starts it ("attacked"), else over the first image set.
    """
    if not images:
        raise InputError("heatmap_grid needs at least one image set")
    names = list(images)
    b = next(iter(images.values())).shape[0]
    for k, v in {**images, **maps}.items():
        if v.shape[0] != b:
            raise InputError(f"heatmap_grid: {k!r} has {v.shape[0]} rows, expected {b}")
    shown = list(image_columns) if image_columns is not None else names
    cols: list[tuple[str, torch.Tensor]] = [(n, images[n].detach().cpu().permute(0, 2, 3, 1)) for n in shown]
    for title_, m in maps.items():
        base = next((n for n in names if title_.startswith(n)), names[0])
        cols.append((title_, _overlay(images[base], m)))
    fig, axes = plt.subplots(b, len(cols), figsize=(1.9 * len(cols), 1.9 * b + 0.4), squeeze=False)
    for j, (name, arr) in enumerate(cols):
        for i in range(b):
            ax = axes[i][j]
            ax.imshow(arr[i].clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
