"""Heat-map grid figure: rows = images, columns = image + (clean / attacked) x methods x (± DDS),
each heat map drawn with `fvit.viz.heatmap.overlay`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fvit.errors import InputError  # noqa: E402
from fvit.viz.heatmap import overlay  # noqa: E402


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
        cols.append((title_, overlay(images[base], m)))
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
