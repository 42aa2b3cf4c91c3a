"""Entry 'ablation': DDS variants under attack (FViT Table 2): full, -smoothing, -denoising, -both.

One explanation method (the first of ``settings.methods``) explains the attacked images through
each variant of the run's DDS (`fvit.dds` VARIANTS via ``dds.replace(variant=...)``; 'no_both' is
the plain method). Rows per (image, variant): whether the explained class hits the reference (the
label, or the clean prediction for unlabelled sets: ``reference`` says which), segmentation scores
(sets with masks) and perturbation hits (labelled sets). Results: {variant: {robust_acc,
reference, n, pos_auc, neg_auc, seconds, [pixel_acc, miou, map]}}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment
from fvit.bench.perturbation import auc
from fvit.bench.runner import RunOutput
from fvit.errors import FvitError
from fvit.metrics.perturbation import DEFAULT_FRACTIONS
from fvit.settings import Settings, set_field

#: The paper's Table 2 rows, in order; each name is an alias of a `fvit.dds.VARIANTS` entry (the one
#: place that defines the variants): full, no-noise, no-denoise, none (= the plain method).
ABLATION_VARIANTS = ("full", "no_smoothing", "no_denoising", "no_both")


def dds_variant(variant: str) -> str:
    """The `fvit.dds.VARIANTS` name of an ablation row ('no_smoothing' -> 'no-noise', ...)."""
    from fvit.dds import VARIANTS

    return VARIANTS.resolve(variant).replace("_", "-")


@dataclass(frozen=True)
class AblationParams(Settings):
    """variants: among `ABLATION_VARIANTS`; fractions: the perturbation test's fractions."""

    variants: tuple[str, ...] = ABLATION_VARIANTS
    fractions: tuple[float, ...] = tuple(DEFAULT_FRACTIONS)
    unkeyed: ClassVar[tuple[str, ...]] = ("variants",)

    def __post_init__(self) -> None:
        set_field(self, "variants", tuple(self.variants))
        from fvit.dds import VARIANTS

        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise FvitError(f"unknown ablation variant {bad[0] if bad else None!r}; use {', '.join(ABLATION_VARIANTS)}",
                            params=("variants",))
        set_field(self, "fractions", ops.numbers(self.fractions, "fractions"))


def ablation_dds(dds, variant: str):
    """The DDS of an ablation variant: full, no_smoothing (denoise without added noise),
    no_denoising (noise, no denoiser: plain randomized smoothing), no_both (None: the plain model)."""
    from fvit.dds import VARIANTS

    if variant not in VARIANTS:
        raise FvitError(f"unknown ablation variant {variant!r}; use {', '.join(ABLATION_VARIANTS)}")
    name = dds_variant(variant)
    return None if name == "none" else dds.replace(variant=name)


@register_experiment
class Ablation(Experiment):
    name = "ablation"
    batch_seeded = False  # DDS noise and attack starts per image (by id)
    Params = AblationParams
    needs_dds = True
    uses_methods = False

    def prepare(self, ctx: RunContext) -> None:
        from fvit.dds import DDSExplainer

        base = self.method(ctx)
        explainers = {}
        for v in ctx.params.variants:
            vd = ablation_dds(ctx.dds, v)
            explainers[v] = base if vd is None else DDSExplainer(base, vd, fuse=ctx.settings.methods.fuse)
        ctx.state["variants"] = explainers

    @staticmethod
    def method(ctx: RunContext):
        """The ablated method: the first of ``settings.methods`` (as an instance)."""
        from fvit.bench.settings import MethodsSpec

        first = MethodsSpec(methods=ctx.settings.methods.methods[:1])
        return next(iter(first.resolve().values()))[0]

    def settings(self, ctx: RunContext) -> list[str]:
        return list(ctx.params.variants)

    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        from fvit.metrics import perturbation_hits, segmentation_rows

        model, fractions = ctx.model, ctx.params.fractions
        x, labels = batch["image"].to(ctx.device), batch["label"].to(ctx.device)
        clean_pred = ops.predict(model, x)
        adv = ops.attacked(ctx.attack, model, x, clean_pred, bctx)
        has_labels = ops.labels_known(batch)
        reference = labels if has_labels else clean_pred
        rows = []
        for v, explainer in ctx.state["variants"].items():
            e = ops.explain(explainer, model, adv, "prediction", clean_pred, bctx, v)
            pixel = e.pixel.detach().float()
            seg = segmentation_rows(pixel, batch["mask"].to(ctx.device)) if "mask" in batch else None
            with bctx.timed(v):
                pos = perturbation_hits(model, adv, pixel, labels, fractions, True) if has_labels else None
                neg = perturbation_hits(model, adv, pixel, labels, fractions, False) if has_labels else None
            for i, id_ in enumerate(batch["id"]):
                row = {"id": id_, "setting": v, "hit": bool(e.target[i] == reference[i]),
                       "reference": "label" if has_labels else "clean prediction"}
                if seg is not None:
                    row.update(seg[i])
                if pos is not None:
                    row.update(pos=pos[i].tolist(), neg=neg[i].tolist())
                rows.append(row)
        return rows

    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        return summarise_ablation(out, ctx.params.variants, ctx.params.fractions)

    def resolved(self, ctx: RunContext) -> dict:
        m = self.method(ctx)
        return {"ablation_method": {"name": m.name, "params": dict(m.params)}}

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz import tables as T

        return [("ablation", T.ablation_table(results))]


def summarise_ablation(out: RunOutput, variants, fractions=DEFAULT_FRACTIONS) -> dict[str, dict]:
    from fvit.metrics import aggregate_segmentation

    result = {}
    for v in variants:
        rows = [r for r in out.rows if r["setting"] == v]
        if not rows:
            continue
        res = {"robust_acc": ops.mean(r["hit"] for r in rows),
               "reference": ", ".join(sorted({r["reference"] for r in rows})), "n": len(rows),
               "pos_auc": auc(rows, "pos", fractions), "neg_auc": auc(rows, "neg", fractions),
               "seconds": out.timings.get(v)}
        if all("ap" in r for r in rows):
            agg = aggregate_segmentation(rows)
            res.update(pixel_acc=agg["pixel_acc"], miou=agg["miou"], map=agg["map"])
        result[v] = res
    return result
