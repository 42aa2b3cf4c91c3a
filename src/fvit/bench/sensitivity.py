"""Entry 'sensitivity': robust accuracy of the smoothed classifier per noise level sigma and attack
radius, next to the unsmoothed baseline (FViT Fig. 3c).

The attack targets the plain model (the papers). Each sigma is the run's DDS with that sigma
(``dds.replace(sigma=...)``: t* follows). Accuracy against the labels, or against the clean
prediction for unlabelled sets. Results: {"baseline" | sigma_label: {radius_label: accuracy}}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fvit.attacks.spec import AttackSpec
from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment
from fvit.bench.runner import RunOutput
from fvit.keys import setting
from fvit.settings import Settings, set_field


@dataclass(frozen=True)
class SensitivityParams(Settings):
    sigmas: tuple[float, ...] = (4 / 255, 8 / 255)
    radii: tuple[float, ...] = (0.0, 2 / 255, 4 / 255, 8 / 255)
    unkeyed: ClassVar[tuple[str, ...]] = ("sigmas", "radii")

    def __post_init__(self) -> None:
        set_field(self, "sigmas", ops.numbers(self.sigmas, "sigmas"))
        set_field(self, "radii", ops.numbers(self.radii, "radii"))


@register_experiment
class Sensitivity(Experiment):
    name = "sensitivity"
    batch_seeded = False  # DDS noise and attack starts per image (by id)
    Params = SensitivityParams
    needs_dds = True
    uses_methods = False
    default_attack = AttackSpec()

    def prepare(self, ctx: RunContext) -> None:
        smoothers = ctx.state.get("smoothers")
        if smoothers is None:  # a caller may supply its own (label -> Smoother)
            smoothers = {label: ctx.dds.replace(sigma=s) for label, s in ops.labelled(ctx.params.sigmas, "sigmas")}
        ctx.state["smoothers"] = smoothers

    def groups(self, ctx: RunContext) -> list[str]:
        return ["baseline", *[label for label, _ in ops.labelled(ctx.params.sigmas, "sigmas")]]

    def settings(self, ctx: RunContext) -> list[str]:
        return [setting(g, r) for g in self.groups(ctx) for r, _ in ops.labelled(ctx.params.radii)]

    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        model = ctx.model
        x = batch["image"].to(ctx.device)
        clean_pred = ops.predict(model, x)
        reference = batch["label"].to(ctx.device) if ops.labels_known(batch) else clean_pred
        rows = []
        for r_label, r in ops.labelled(ctx.params.radii):
            adv = ops.attacked(ctx.attack, model, x, clean_pred, bctx, eps=r)
            preds = {"baseline": ops.predict(model, adv)}
            for s_label, smoother in ctx.state["smoothers"].items():
                with bctx.timed(s_label):
                    preds[s_label] = smoother.smoothed_predict(model, adv, keys=ops.dds_keys(bctx, adv))
            for g, p in preds.items():
                hit = (p == reference).tolist()
                rows += [{"id": id_, "setting": setting(g, r_label), "hit": bool(hit[i])}
                         for i, id_ in enumerate(batch["id"])]
        return rows

    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        radii = [r for r, _ in ops.labelled(ctx.params.radii)]
        result: dict[str, dict[str, float]] = {}
        for g in self.groups(ctx):
            per = {r: ops.mean(row["hit"] for row in out.rows if row["setting"] == setting(g, r)) for r in radii}
            result[g] = {r: v for r, v in per.items() if v is not None}
        return result

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz import tables as T

        return [("sensitivity", T.sensitivity_table(results))]

    def figures(self, results: dict, ctx: RunContext, out_dir: Path) -> list[Path]:
        from fvit.viz.plots import plot_sensitivity

        return [plot_sensitivity(results, out_dir / "sensitivity.png")]
