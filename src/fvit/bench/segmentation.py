"""Entry 'segmentation': Chefer et al.'s segmentation test, optionally under attack (FViT Table 1,
[Re] Tables 1, 3, 5).

Rows: one per (image, method key) with the segmentation scores of the (attacked) image's map, the
label, the clean and the attacked prediction (the explainer's own: plain argmax or the smoothed
vote), and the top-k overlap of the clean and attacked patch maps when ``topk`` > 0. With
``with_clean`` (and an attack) also '<key>@clean' rows: the clean images' maps, which the overlap
computes anyway (the rows a run without attack gives, at no extra explanation cost).

Results: {key: {pixel_acc, miou, map, n, clean_acc, robust_acc, agreement, seconds,
[topk_overlap, k]}}; accuracies against labels (none for unlabelled sets: `agreement`, attacked ==
clean prediction, is always given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment
from fvit.bench.runner import RunOutput
from fvit.errors import FvitError
from fvit.keys import clean_key, split_key
from fvit.settings import Settings, check_int, set_field


@dataclass(frozen=True)
class SegmentationParams(Settings):
    """topk: also the top-k overlap of clean vs attacked patch maps (0: off; doubles the cost);
    with_clean: also score the clean images' maps ('<key>@clean'); figure: heat-map grid of the
    first N images (0: none; report only)."""

    topk: int = 0
    with_clean: bool = False
    figure: int = 0
    unkeyed: ClassVar[tuple[str, ...]] = ("with_clean", "figure")

    def __post_init__(self) -> None:
        set_field(self, "topk", check_int("SegmentationParams", "topk", self.topk, lo=0))
        set_field(self, "figure", check_int("SegmentationParams", "figure", self.figure, lo=0))


def _attacked_run(ctx: RunContext) -> bool:
    return ctx.attack is not None and ctx.attack.eps > 0


@register_experiment
class Segmentation(Experiment):
    name = "segmentation"
    batch_seeded = False  # DDS noise and attack starts per image (by id)
    Params = SegmentationParams
    supports_cost = True

    def prepare(self, ctx: RunContext) -> None:
        grid = getattr(ctx.model, "grid_size", None)
        if ctx.params.topk and grid is not None and ctx.params.topk > grid[0] * grid[1]:
            raise FvitError(f"topk {ctx.params.topk}: larger than the model's {grid[0] * grid[1]} patches "
                            f"({grid[0]}x{grid[1]} grid)", params=("topk",))

    def settings(self, ctx: RunContext) -> list[str]:
        keys = ctx.keys
        return keys + [clean_key(k) for k in keys] if self._with_clean(ctx) else keys

    def _with_clean(self, ctx: RunContext) -> bool:
        return ctx.params.with_clean and _attacked_run(ctx)

    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        from fvit.metrics import topk_overlap

        if "mask" not in batch:
            raise FvitError("segmentation needs a data set with masks (imagenet-seg, masks:…, world)")
        model, target, topk = ctx.model, ctx.settings.methods.target, ctx.params.topk
        x, masks = batch["image"].to(ctx.device), batch["mask"].to(ctx.device)
        clean_pred = ops.predict(model, x)
        adv = ops.attacked(ctx.attack, model, x, clean_pred, bctx)
        # every DDS key shares the run's DDS: one smoothed clean prediction per batch
        smooth_clean = next((e.predict(model, x, keys=ops.dds_keys(bctx, x))
                             for k, e in ctx.explainers.items() if split_key(k)[1]), None)
        plain_adv = ops.predict(model, adv)
        want_overlap = topk > 0 and _attacked_run(ctx)
        with_clean = self._with_clean(ctx)
        rows = []
        for key, explainer in ctx.explainers.items():
            with_dds = split_key(key)[1]
            e = ops.explain(explainer, model, adv, target, clean_pred, bctx, key)
            e_clean = (ops.explain(explainer, model, x, target, clean_pred, bctx, key)
                       if want_overlap or with_clean else None)
            overlap = None
            if want_overlap:
                k = min(int(topk), e.patch[0].numel())
                overlap = topk_overlap(e_clean.patch.detach().float(), e.patch.detach().float(), k).tolist()
            pred_clean = smooth_clean if with_dds else clean_pred
            rows += _scored(batch, masks, key, e, plain_adv, pred_clean, with_dds, target, overlap)
            if with_clean:
                rows += _scored(batch, masks, clean_key(key), e_clean, clean_pred, pred_clean, with_dds, target)
        return rows

    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        return summarise_segmentation(out, self.settings(ctx), ctx.params.topk)

    def timings(self, results: dict, ctx: RunContext) -> dict:
        return {k: results[k].get("seconds") for k in ctx.keys if k in results}

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz import tables as T

        model = ctx.settings.model
        out = [("segmentation", T.segmentation_table(results))]
        if any(split_key(k)[1] for k in results):
            out.append(("segmentation_dds", T.dds_table(results, model=model.label or model.name)))
        if any("topk_overlap" in v for v in results.values()):
            out.append(("overlap", T.overlap_table(results)))
        return out

    def figures(self, results: dict, ctx: RunContext, out_dir: Path) -> list[Path]:
        from fvit.bench.figures import batch_figure

        n = ctx.params.figure
        return [batch_figure(ctx, n, out_dir / "heatmaps.png")] if n > 0 else []


def _scored(batch, masks, setting: str, e, plain_pred, pred_clean, with_dds: bool, target: str,
            overlap=None) -> list[dict]:
    """The rows of one explanation: segmentation scores, label, clean and explained prediction."""
    from fvit.metrics import segmentation_rows

    seg = segmentation_rows(e.pixel.detach().float(), masks)
    pred = (e.target if target == "prediction" else e.prediction) if with_dds else plain_pred
    out = []
    for i, id_ in enumerate(batch["id"]):
        row = {"id": id_, "setting": setting, **seg[i], "label": int(batch["label"][i]),
               "pred_clean": int(pred_clean[i]), "pred_adv": int(pred[i])}
        if overlap is not None:
            row["overlap"] = overlap[i]
        out.append(row)
    return out


def summarise_segmentation(out: RunOutput, keys, topk: int = 0) -> dict[str, dict]:
    """Per setting: aggregated segmentation scores, accuracies and agreement (see module doc)."""
    from fvit.metrics import aggregate_segmentation

    result = {}
    for key in keys:
        rows = [r for r in out.rows if r["setting"] == key]
        if not rows:
            continue
        agg = aggregate_segmentation(rows)
        labelled = [r for r in rows if r["label"] >= 0]
        res = {"pixel_acc": agg["pixel_acc"], "miou": agg["miou"], "map": agg["map"], "n": len(rows),
               "clean_acc": ops.mean(r["pred_clean"] == r["label"] for r in labelled),
               "robust_acc": ops.mean(r["pred_adv"] == r["label"] for r in labelled),
               "agreement": ops.mean(r["pred_adv"] == r["pred_clean"] for r in rows),
               "seconds": out.timings.get(key)}
        if any("overlap" in r for r in rows):
            res["topk_overlap"] = ops.mean(r["overlap"] for r in rows if "overlap" in r)
            res["k"] = topk
        result[key] = res
    return result
