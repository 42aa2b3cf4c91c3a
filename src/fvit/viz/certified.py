"""The certified set on a heat map: the patches whose top-k overlap a certificate guarantees, outlined.

A certificate (`fvit.certify.CertificationResult` or its ``to_dict()``) names its set by
``certified_patches`` (flat, row-major indices in the patch grid ``map_shape``; [] when nothing is
certified). `certified_figure` draws a heat map (default: the certificate's own ``membership_map``,
the smoothed top-k membership whose top-k IS the gaussian family's set) over the image and outlines
each certified patch, so what the figure shows is what is certified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from fvit.errors import InputError  # noqa: E402
from fvit.viz.heatmap import overlay  # noqa: E402


def patch_boxes(indices: Sequence[int], grid: Sequence[int], size: Sequence[int]) -> list[tuple[float, float, float, float]]:
    """(x0, y0, width, height) in ``imshow`` pixel coordinates (pixel centres at integers, so a
    patch's box starts at -0.5) of each flat patch index in a ``grid`` = (gh, gw) over an image of
    ``size`` = (H, W)."""
    gh, gw = int(grid[0]), int(grid[1])
    h, w = int(size[0]), int(size[1])
    ph, pw = h / gh, w / gw
    boxes = []
    for index in indices:
        index = int(index)
        if not 0 <= index < gh * gw:
            raise InputError(f"patch index {index} outside the {gh}x{gw} grid")
        row, col = divmod(index, gw)
        boxes.append((col * pw - 0.5, row * ph - 0.5, pw, ph))
    return boxes


def outline_patches(ax, indices: Sequence[int], grid: Sequence[int], size: Sequence[int], *,
                    color: str = "white", linewidth: float = 1.5) -> list[Rectangle]:
    """Draw an unfilled rectangle around each patch of ``indices`` on ``ax`` (`patch_boxes`)."""
    rectangles = []
    for x0, y0, width, height in patch_boxes(indices, grid, size):
        rect = Rectangle((x0, y0), width, height, fill=False, edgecolor=color, linewidth=linewidth)
        ax.add_patch(rect)
        rectangles.append(rect)
    return rectangles


def _field(certificate: Any, name: str) -> Any:
    return certificate[name] if isinstance(certificate, Mapping) else getattr(certificate, name)


def certified_figure(image01: torch.Tensor, certificate: Any, path: str | Path, *, heat: torch.Tensor | None = None,
                     title: str | None = None, color: str = "white"):
    """Write a figure of ``image01`` (3, H, W) in [0, 1]: the heat map ``heat`` (gh, gw) (default:
    the certificate's ``membership_map``) and an outline around every patch of the certificate's
    ``certified_patches``. Returns (path, the outlined rectangles)."""
    grid = [int(v) for v in _field(certificate, "map_shape")]
    if len(grid) != 2:
        raise InputError(f"certified_figure: the certificate's map_shape must be a patch grid (gh, gw), got {grid}")
    if heat is None:
        heat = torch.tensor(_field(certificate, "membership_map"), dtype=torch.float32).view(*grid)
    heat = torch.as_tensor(heat).detach().float().cpu()
    if tuple(heat.shape) != tuple(grid):
        raise InputError(f"certified_figure: heat map of shape {tuple(heat.shape)}, the certificate's grid is {grid}")
    image01 = torch.as_tensor(image01).detach().float().cpu()
    if image01.ndim != 3 or image01.shape[0] != 3:
        raise InputError(f"certified_figure: image must be (3, H, W), got {tuple(image01.shape)}")
    size = image01.shape[-2:]
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(overlay(image01, heat).clamp(0, 1).numpy())
    rectangles = outline_patches(ax, _field(certificate, "certified_patches"), grid, size, color=color)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is None:
        count = len(rectangles)
        family = _field(certificate, "certificate")
        radius = _field(certificate, "radius_topk")
        title = (f"{family}: {count} certified patches, top-k radius {float(radius):.3g}" if count  # 'inf' parses
                 else f"{family}: no certified top-k set")
    ax.set_title(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path, rectangles


__all__ = ["certified_figure", "outline_patches", "patch_boxes"]
