"""Entry 'perturbation': positive / negative perturbation AUC per method key and attack radius
(FViT Fig. 3a-b, [Re] Fig. 1).

Hits against the true label, classified by the plain model; AUC = trapezoid over p = 0, 0.1, ...,
0.9 (x100) of the accuracy over *all* images (Chefer et al. / FACTS); ``only_correct`` gives the [Re]
study's variant (AUC over the images whose prediction on the attacked image was correct).
Results: {key: {radius_label: {pos_auc, neg_auc, acc, n}}}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from fvit.attacks.spec import AttackSpec
from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment
from fvit.bench.runner import RunOutput
from fvit.errors import FvitError
from fvit.keys import radius_value, setting, split_key
from fvit.metrics.perturbation import DEFAULT_FRACTIONS
from fvit.settings import Settings, set_field


@dataclass(frozen=True)
class PerturbationParams(Settings):
    """radii: attack radii (0 = clean); positive / negative: which tests; only_correct: the [Re]
    AUC (summary only); fractions: the perturbed fractions p."""

    radii: tuple[float, ...] = (0.0, 8 / 255)
    positive: bool = True
    negative: bool = True
    only_correct: bool = False
    fractions: tuple[float, ...] = tuple(DEFAULT_FRACTIONS)
    unkeyed: ClassVar[tuple[str, ...]] = ("radii", "only_correct")

    def __post_init__(self) -> None:
        set_field(self, "radii", ops.numbers(self.radii, "radii"))
        set_field(self, "fractions", ops.numbers(self.fractions, "fractions"))
        if not (self.positive or self.negative):
            raise FvitError("perturbation: enable positive and/or negative")


def auc(rows: list[dict], field_: str, fractions) -> float | None:
    """Perturbation AUC of the stored hit lists ``field_`` ('pos' / 'neg') of ``rows``."""
    from fvit.metrics import perturbation_auc

    hits = [r[field_] for r in rows if r.get(field_) is not None]
    return perturbation_auc(torch.tensor(hits, dtype=torch.bool), fractions) if hits else None


@register_experiment
class Perturbation(Experiment):
    name = "perturbation"
    batch_seeded = False  # DDS noise and attack starts per image (by id)
    Params = PerturbationParams
    default_attack = AttackSpec()
    supports_cost = True

    def settings(self, ctx: RunContext) -> list[str]:
        return [setting(k, r) for k in ctx.keys for r, _ in ops.labelled(ctx.params.radii)]

    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        from fvit.metrics import perturbation_hits

        if not ops.labels_known(batch):
            raise FvitError("the perturbation test needs class labels (e.g. imagenet-val:DIR, world)")
        p, model, target = ctx.params, ctx.model, ctx.settings.methods.target
        x, labels = batch["image"].to(ctx.device), batch["label"].to(ctx.device)
        clean_pred = ops.predict(model, x)
        rows = []
        for r_label, r in ops.labelled(p.radii):
            adv = ops.attacked(ctx.attack, model, x, clean_pred, bctx, eps=r)
            plain_adv = ops.predict(model, adv)
            for key, explainer in ctx.explainers.items():
                e = ops.explain(explainer, model, adv, target, clean_pred, bctx, key)
                pred = e.target if (split_key(key)[1] and target == "prediction") else plain_adv
                pixel = e.pixel.detach().float()
                with bctx.timed(key):
                    pos = perturbation_hits(model, adv, pixel, labels, p.fractions, True) if p.positive else None
                    neg = perturbation_hits(model, adv, pixel, labels, p.fractions, False) if p.negative else None
                for i, id_ in enumerate(batch["id"]):
                    rows.append({"id": id_, "setting": setting(key, r_label), "method": key, "radius": r_label,
                                 "label": int(labels[i]), "pred": int(pred[i]),
                                 "pos": None if pos is None else pos[i].tolist(),
                                 "neg": None if neg is None else neg[i].tolist()})
        return rows

    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        p = ctx.params
        return summarise_perturbation(out, ctx.keys, [r for r, _ in ops.labelled(p.radii)], p.fractions,
                                      p.only_correct)

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz import tables as T

        return [("perturbation", T.perturbation_table(results))]

    def figures(self, results: dict, ctx: RunContext, out_dir: Path) -> list[Path]:
        from fvit.viz.plots import plot_auc_vs_radius

        return [plot_auc_vs_radius(results, out_dir / "auc_vs_radius.png")]


def summarise_perturbation(out: RunOutput, keys, radii: Sequence[str], fractions=DEFAULT_FRACTIONS,
                           only_correct: bool = False) -> dict[str, dict[str, dict]]:
    result: dict[str, dict[str, dict]] = {}
    for key in keys:
        per = {}
        for r in radii:
            rows = [row for row in out.rows if row["setting"] == setting(key, r)]
            if not rows:
                continue
            used = [row for row in rows if row["pred"] == row["label"]] if only_correct else rows
            per[r] = {"pos_auc": auc(used, "pos", fractions), "neg_auc": auc(used, "neg", fractions),
                      "acc": ops.mean(row["pred"] == row["label"] for row in rows), "n": len(used)}
        if per:
            result[key] = dict(sorted(per.items(), key=lambda kv: radius_value(kv[0])))
    return result
