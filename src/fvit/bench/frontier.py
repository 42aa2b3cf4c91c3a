"""Entry 'frontier': the smoothing frontier. What protects a map, and at what price?

A grid over the DDS noise ``sigmas``, the fusions of the samples' maps ``fusions`` and the sample
counts ``samples`` (a *cell* is one (sigma, m); a fusion changes only the map). Per image:

- per cell: the smoothed classifier's clean prediction and its prediction under the classifier
  attack run adaptively through DDS (``settings.attack``, expectation over fresh DDS draws,
  per-image noise streams), against the true label; and the certificates of
  `fvit.certify.certify_methods` (ONE set of DDS samples for every method): Cohen et al.'s
  prediction radius (certified accuracy at the l_2 ``cert_radii``), the certified top-k radius
  and the share of patches whose top-k membership is certified (radii in [0, 1] pixel units,
  l_2; a normalised-input radius is this one divided by the normaliser's std);
- per cell, fusion and method: the clean DDS map's segmentation scores and positive perturbation
  hits (classified by the plain model, as the perturbation entry), and the top-k overlap of the
  clean DDS map with the map of the image attacked adaptively through that DDS explainer by the
  explanation attacks of ``spec`` (per image the worst kept map of the objectives, chosen by the
  attacker's own draws);
- per method without DDS (the reference point): the same map scores and the same attack.

Results: {"cells": [{sigma, samples, fusion, method, pixel_acc, miou, map, pos_auc,
topk_overlap, topk_overlap_ci, changed, smoothed_clean_acc, smoothed_attacked_acc,
certified_accuracy {radius: acc}, topk_radius, membership_certified {radius: share}, n}],
"plain": {method: {...}}, "pareto": [indices of the cells no other cell beats on both clean
mIoU and attacked overlap], "protocol": {...}}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from fvit.attacks.spec import ExplanationAttackSpec
from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment
from fvit.bench.runner import RunOutput
from fvit.certify.config import CertifyConfig
from fvit.errors import FvitError
from fvit.keys import radius_label
from fvit.settings import Settings, check_int, set_field

DEFAULT_SIGMAS = (8 / 255, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
DEFAULT_FUSIONS = ("max-drop10", "mean")
DEFAULT_CERT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class FrontierParams(Settings):
    """sigmas (pixel units), fusions, samples (m; () = the run's DDS m), eps (the attacks' l_inf
    radius), spec (the explanation attacks), certify (the certificates; n = 0 skips them),
    cert_radii (l_2, pixel units, for the certified accuracy)."""

    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    fusions: tuple[str, ...] = DEFAULT_FUSIONS
    samples: tuple[int, ...] = ()
    eps: float = 8 / 255
    spec: ExplanationAttackSpec = field(default_factory=ExplanationAttackSpec)
    certify: CertifyConfig = field(default_factory=lambda: CertifyConfig(n0=16, n=128, mc_batch=32))
    cert_radii: tuple[float, ...] = DEFAULT_CERT_RADII
    unkeyed: ClassVar[tuple[str, ...]] = ("sigmas", "fusions", "samples", "cert_radii")

    def __post_init__(self) -> None:
        from fvit.dds.fusion import FUSIONS

        set_field(self, "sigmas", ops.numbers(self.sigmas, "sigmas", positive=True))
        set_field(self, "cert_radii", ops.numbers(self.cert_radii, "cert_radii"))
        set_field(self, "fusions", tuple(FUSIONS.resolve(f).replace("_", "-") for f in self.fusions))
        if not self.fusions:
            raise FvitError("frontier: give at least one fusion")
        set_field(self, "samples", tuple(check_int("FrontierParams", "samples", m, lo=1) for m in self.samples))
        set_field(self, "eps", ops.numbers((self.eps,), "eps", positive=True)[0])
        if not isinstance(self.spec, ExplanationAttackSpec) or not isinstance(self.certify, CertifyConfig):
            raise FvitError("FrontierParams: spec must be an ExplanationAttackSpec and certify a CertifyConfig")


def cell_label(sigma: float, m: int) -> str:
    return f"s={radius_label(sigma)},m={m}"


@register_experiment
class Frontier(Experiment):
    name = "frontier"
    Params = FrontierParams
    needs_dds = True
    batch_seeded = False  # DDS noise, attack starts and the attacks' DDS draws per image (by id)
    memo = 2

    # -- the grid ------------------------------------------------------------------------------
    def cells(self, ctx: RunContext) -> list[tuple[str, float, int]]:
        p = ctx.params
        ms = p.samples or (ctx.dds.samples,)
        return [(cell_label(s, m), s, m) for _, s in ops.labelled(p.sigmas, "sigmas") for m in ms]

    def methods(self, ctx: RunContext) -> dict:
        """The plain methods (the '+dds' keys of the run are rebuilt per cell and fusion)."""
        return {k: m for k, m in ctx.methods.items() if not k.endswith("+dds")}

    def prepare(self, ctx: RunContext) -> None:
        from fvit.dds import DDS

        if ctx.dds is None:
            raise FvitError("frontier: needs a denoiser (the DDS of every cell)")
        ctx.state["dds"] = {label: ctx.dds.replace(sigma=s, samples=m) for label, s, m in self.cells(ctx)}
        n_attack = ctx.params.spec.attack_samples
        ctx.state["attack_dds"] = {label: DDS(ctx.dds.denoiser, ctx.dds.config.replace(sigma=s, samples=n_attack or m))
                                   for label, s, m in self.cells(ctx)}

    def settings(self, ctx: RunContext) -> list[str]:
        out = [f"{m}@plain" for m in self.methods(ctx)]
        for label, _, _ in self.cells(ctx):
            out.append(f"classifier@{label}")
            out += [f"{m}@{label}/{f}" for m in self.methods(ctx) for f in ctx.params.fusions]
            if ctx.params.certify.n > 0:
                out += [f"{m}@{label}/certificate" for m in self.methods(ctx)]
        return out

    # -- one batch -----------------------------------------------------------------------------
    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        from fvit.dds import DDSExplainer

        if "mask" not in batch or not ops.labels_known(batch):
            raise FvitError("frontier: needs a labelled data set with masks (world, imagenet-seg, masks:…)")
        p, model = ctx.params, ctx.model
        x, labels = batch["image"].to(ctx.device), batch["label"].to(ctx.device)
        masks = batch["mask"].to(ctx.device)
        ids = [str(i) for i in batch["id"]]
        keys = ops.dds_keys(bctx, x)
        seed = ops.image_attack_seed(bctx)  # every draw of the attacks is per image (keys)
        rows: list[dict] = []
        for key, method in self.methods(ctx).items():
            rows += self._map_rows(ctx, bctx, f"{key}@plain", method, method, x, labels, masks, ids, keys, seed)
        for label, _, _ in self.cells(ctx):
            dds, attack_dds = ctx.state["dds"][label], ctx.state["attack_dds"][label]
            rows += self._classifier_rows(ctx, bctx, label, dds, x, labels, ids, seed)
            for fusion in p.fusions:
                for key, method in self.methods(ctx).items():
                    rows += self._map_rows(ctx, bctx, f"{key}@{label}/{fusion}", DDSExplainer(method, dds, fuse=fusion),
                                           DDSExplainer(method, attack_dds, fuse=fusion), x, labels, masks, ids,
                                           keys, seed)
            if p.certify.n > 0:
                rows += self._certificate_rows(ctx, bctx, label, dds, x, labels, ids)
        return rows

    def _map_rows(self, ctx, bctx, setting_, explainer, attack_explainer, x, labels, masks, ids, keys, seed):
        from fvit.metrics import perturbation_hits, segmentation_rows, topk_overlap

        p, model = ctx.params, ctx.model
        with bctx.timed(setting_):
            clean = explainer(model, x, keys=keys)
            k = min(int(p.spec.k), clean.patch[0].numel())
            suite = p.spec.replace(suite=True)
            results = {o: suite.build(o, p.eps, seed).run(attack_explainer, model, x, target=clean.target,
                                                          clean_maps=clean.patch, keys=keys)
                       for o in suite.names()}
            from fvit.attacks.explanation import combine_worst

            worst = combine_worst(results)
            attacked = explainer(model, worst.adv, target=clean.target, keys=keys)
            overlap = topk_overlap(clean.patch.float(), attacked.patch.float(), k).tolist()
            prediction = explainer.predict(model, worst.adv, keys=keys) if explainer.stochastic else \
                ops.predict(model, worst.adv)
            seg = segmentation_rows(clean.pixel.detach().float(), masks)
            pos = perturbation_hits(model, x, clean.pixel.detach().float(), labels, positive=True)
        return [{"id": i, "setting": setting_, **seg[j], "pos": pos[j].tolist(), "overlap": overlap[j],
                 "changed": bool(prediction[j] != clean.target[j])} for j, i in enumerate(ids)]

    def _classifier_rows(self, ctx, bctx, label, dds, x, labels, ids, seed):
        from fvit.attacks import expectation_forward
        from fvit.seeding import PerImageGenerator

        model = ctx.model
        with bctx.timed(f"classifier@{label}"):
            clean = dds.smoothed_predict(model, x, keys=ids)
            adv = x
            if ctx.attack is not None and ctx.attack.eps > 0:
                g = PerImageGenerator.from_keys(seed, [f"pgd|{i}" for i in ids], x.device)
                forward = expectation_forward(lambda images: dds.denoise_differentiable(images, g), model,
                                              reduce="mean-logits")
                adv = ctx.attack.build(seed, ctx.params.eps)(forward, x, clean, keys=ids)
            attacked = dds.smoothed_predict(model, adv, keys=ids)
        return [{"id": i, "setting": f"classifier@{label}", "label": int(labels[j]), "clean": int(clean[j]),
                 "attacked": int(attacked[j])} for j, i in enumerate(ids)]

    def _certificate_rows(self, ctx, bctx, label, dds, x, labels, ids):
        from fvit.certify import certify_methods

        p = ctx.params
        methods = list(self.methods(ctx))
        with bctx.timed(f"certificate@{label}"):
            sampler = dds.replace(samples=p.certify.dds_samples)
            certified = certify_methods(ctx.model, sampler, x, p.certify, attentions=methods,
                                        seed=ctx.settings.run.seed, keys=ids)
        rows = []
        for key, results in certified.items():
            for j, r in enumerate(results):
                rows.append({"id": ids[j], "setting": f"{key}@{label}/certificate", "label": int(labels[j]),
                             "predicted_class": int(r.predicted_class), "abstained": bool(r.abstained),
                             "radius_pred": ops.finite(float(r.radius_pred)) if not r.abstained else 0.0,
                             "radius_topk": ops.finite(float(r.radius_topk)) if not r.abstained else 0.0,
                             "membership_certified": dict(r.membership_certified),
                             "is_certificate": bool(r.is_certificate)})
        return rows

    # -- results -------------------------------------------------------------------------------
    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        from fvit.metrics import aggregate_segmentation, mean_interval

        from fvit.bench.perturbation import auc

        by: dict[str, list[dict]] = {}
        for row in out.rows:
            by.setdefault(row["setting"], []).append(row)
        p = ctx.params

        def maps(rows):
            agg = aggregate_segmentation(rows)
            return {"pixel_acc": agg["pixel_acc"], "miou": agg["miou"], "map": agg["map"],
                    "pos_auc": auc(rows, "pos", _fractions()), "topk_overlap": ops.mean(r["overlap"] for r in rows),
                    "topk_overlap_ci": mean_interval([r["overlap"] for r in rows]),
                    "changed": ops.mean(r["changed"] for r in rows), "n": len(rows)}

        plain = {k: maps(by[f"{k}@plain"]) for k in self.methods(ctx) if by.get(f"{k}@plain")}
        cells = []
        for label, s, m in self.cells(ctx):
            cls = by.get(f"classifier@{label}", [])
            acc = {"smoothed_clean_acc": ops.mean(r["clean"] == r["label"] for r in cls),
                   "smoothed_attacked_acc": ops.mean(r["attacked"] == r["label"] for r in cls)}
            for fusion in p.fusions:
                for key in self.methods(ctx):
                    rows = by.get(f"{key}@{label}/{fusion}")
                    if not rows:
                        continue
                    cell = {"sigma": s, "samples": m, "fusion": fusion, "method": key, **maps(rows), **acc}
                    certs = by.get(f"{key}@{label}/certificate")
                    if certs:
                        cell["certified_accuracy"] = {
                            f"{r0:g}": ops.mean((c["predicted_class"] == c["label"]) and not c["abstained"]
                                                and (c["radius_pred"] or 0.0) > r0 for c in certs)
                            for r0 in p.cert_radii}
                        cell["topk_radius"] = ops.mean(c["radius_topk"] or 0.0 for c in certs)
                        radii = list(certs[0]["membership_certified"])
                        cell["membership_certified"] = {r: ops.mean(c["membership_certified"][r] for c in certs)
                                                        for r in radii}
                    cells.append(cell)
        protocol = {"eps": p.eps, "norm": "linf", "attack": p.spec.as_config(),
                    "classifier_attack": ctx.attack.as_config() if ctx.attack else None,
                    "certify": p.certify.to_dict() if p.certify.n > 0 else None,
                    "radius_units": "l_2 in [0, 1] pixel units (divide by the normaliser's std for "
                                    "normalised-input units)",
                    "interval": "percentile bootstrap over images, 95 %"}
        return {"cells": cells, "plain": plain, "pareto": pareto_front(cells), "protocol": protocol}

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz import tables as T

        return [("frontier", T.frontier_table(results))]

    def figures(self, results: dict, ctx: RunContext, out_dir: Path) -> list[Path]:
        from fvit.viz.plots import plot_frontier

        return [plot_frontier(results, out_dir / "frontier.png")] if results["cells"] else []


def _fractions():
    from fvit.metrics.perturbation import DEFAULT_FRACTIONS

    return DEFAULT_FRACTIONS


def pareto_front(cells: list[dict], x: str = "miou", y: str = "topk_overlap") -> list[int]:
    """Indices of the cells that no other cell of the same method beats on both ``x`` (clean
    faithfulness) and ``y`` (attacked overlap), higher being better for both."""
    front = []
    for i, c in enumerate(cells):
        if c.get(x) is None or c.get(y) is None:
            continue
        dominated = any(o is not c and o["method"] == c["method"] and o.get(x) is not None and o.get(y) is not None
                        and o[x] >= c[x] and o[y] >= c[y] and (o[x] > c[x] or o[y] > c[y]) for o in cells)
        if not dominated:
            front.append(i)
    return front


__all__ = ["DEFAULT_SIGMAS", "Frontier", "FrontierParams", "cell_label", "pareto_front"]
