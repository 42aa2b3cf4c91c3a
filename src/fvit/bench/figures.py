"""The one heat-map figure builder of the experiments and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch


def explanation_grid(model, sets: Mapping[str, torch.Tensor], explainers: Mapping[str, object], path: Path, *,
                     target=None, keys: Sequence[str] | None = None, extra: Mapping[str, torch.Tensor] | None = None,
                     by: str = "set", row_labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """A grid of explanations: one image column per entry of ``sets`` ({'clean': x, 'attacked':
    adv}) and ``extra`` (e.g. {'mask': masks}), one map column per (set, method key) titled
    '<set> / <display name>' (``by``: 'set' groups the map columns by image set, 'method' by key).
    ``target`` and ``keys`` (per-image DDS noise keys) are passed to every explainer."""
    from fvit.viz.grid import heatmap_grid
    from fvit.viz.names import display

    if by not in ("set", "method"):
        raise ValueError(f"by must be 'set' or 'method', got {by!r}")
    pairs = ([(s, k) for s in sets for k in explainers] if by == "set" else
             [(s, k) for k in explainers for s in sets])
    maps = {}
    for set_name, key in pairs:
        e = explainers[key](model, sets[set_name], target=target, keys=keys)
        maps[f"{set_name} / {display(key)}"] = e.pixel.detach().cpu()
    images = {name: imgs.cpu() for name, imgs in sets.items()}
    images.update({name: imgs.cpu() for name, imgs in (extra or {}).items()})
    return heatmap_grid(images, maps, path, row_labels=list(row_labels) if row_labels is not None else None,
                        title=title)


def batch_figure(ctx, n: int, path: Path) -> Path:
    """The segmentation run's figure: the first ``n`` images, clean and attacked (the run's attack,
    seeded as the first batch would be), explained by every method key of the run."""
    from fvit.bench.ops import attacked, dds_keys, predict
    from fvit.bench.runner import BatchContext, batch_seed
    from fvit.data import collate

    n = min(n, len(ctx.dataset))
    batch = collate([ctx.dataset[i] for i in range(n)])
    x = batch["image"].to(ctx.device)
    bctx = BatchContext(seed=batch_seed(ctx.settings.run.seed, batch["id"]), index=0,
                        ids=tuple(str(i) for i in batch["id"]), run_seed=ctx.settings.run.seed)
    torch.manual_seed(bctx.seed)
    clean_pred = predict(ctx.model, x)
    adv = attacked(ctx.attack, ctx.model, x, clean_pred, bctx)
    sets = {"clean": x} if adv is x else {"clean": x, "attacked": adv}
    target = None if ctx.settings.methods.target == "prediction" else clean_pred
    return explanation_grid(ctx.model, sets, ctx.explainers, path, target=target, keys=dds_keys(bctx, x),
                            row_labels=batch["id"], title="Explanations, clean and attacked")
