"""Entry 'explanation-attack': attacks on the explanation (Ghorbani et al. 2019's top-k, Dombrowski
et al. 2019's target map), per method key (± DDS) and radius, next to the classifier attack.

For every image, method key and radius: the clean explanation (each explainer's own prediction, the
smoothed one for DDS) is the reference; the attacked image is made by each explanation attack of
``params.spec`` (against that key's explainer, adaptive through DDS for '+dds' keys: EOT over
``spec.eot`` draws, gradients through the denoiser, the clean target class kept) and by the
classifier attack ``settings.attack`` (the papers' protocol, against the plain model's clean
prediction; None: skipped); the attacked image is explained again (DDS: the same evaluation noise as
the clean explanation) and scored: top-k overlap with the clean map (k = ``spec.k``), Spearman rank
correlation of the patch maps, segmentation of the attacked map (sets with masks), and whether the
explained class changed.

Results: {"methods": {key: {attack: {radius_label: {topk_overlap, rank_corr, changed, n, seconds,
[pixel_acc, miou, map], [objective, clean_objective]}}}}, "protocol": {...}} with attack in
('clean', 'pgd', 'topk', 'target-map'); 'clean' has the single radius '0'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from fvit.attacks.spec import ExplanationAttackSpec
from fvit.bench import ops
from fvit.bench.engine import Experiment, RunContext, register_experiment
from fvit.bench.runner import RunOutput
from fvit.errors import FvitError
from fvit.keys import setting, split_key
from fvit.settings import Settings, set_field

CLASSIFIER_ATTACK = "pgd"  # the comparison rows ('<key>/pgd@<radius>'), whatever the classifier attack
CLEAN_ATTACK = "clean"  # the clean explanations' rows ('<key>/clean@0')
SUITE_ATTACK = "suite"  # per image the worst kept map of the objectives ('<key>/suite@<radius>')
WARM_ATTACK = "warm-start"  # the first objective started from the classifier attack's image


@dataclass(frozen=True)
class ExplanationAttackParams(Settings):
    """radii: attack radii (> 0); spec: the explanation attacks."""

    radii: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255)
    spec: ExplanationAttackSpec = field(default_factory=ExplanationAttackSpec)
    unkeyed: ClassVar[tuple[str, ...]] = ("radii",)

    def __post_init__(self) -> None:
        set_field(self, "radii", ops.numbers(self.radii, "radii"))
        if not isinstance(self.spec, ExplanationAttackSpec):
            raise FvitError(f"ExplanationAttackParams: spec must be an ExplanationAttackSpec, got "
                            f"{type(self.spec).__name__}")
        if not [r for r in self.radii if r > 0]:
            raise FvitError(f"explanation attack: give at least one radius > 0, got {list(self.radii)}")


def explained_class(key: str, e) -> torch.Tensor:
    """The class a map explains: the plain model's prediction, or DDS's smoothed one (its target)."""
    return e.target if split_key(key)[1] else e.prediction


@register_experiment
class ExplanationAttack(Experiment):
    name = "explanation-attack"
    Params = ExplanationAttackParams
    batch_seeded = False  # DDS noise, attack starts and the attacks' DDS draws per image (by id)

    def radii(self, ctx: RunContext) -> list[tuple[str, float]]:
        return [(label, v) for label, v in ops.labelled(ctx.params.radii) if v > 0]

    def attacks(self, ctx: RunContext) -> list[str]:
        spec = ctx.params.spec
        warm = [WARM_ATTACK] if spec.warm_start and ctx.attack is not None else []
        suite = [SUITE_ATTACK] if spec.suite and len(spec.names()) + len(warm) > 1 else []
        return ([CLASSIFIER_ATTACK] if ctx.attack is not None else []) + spec.names() + warm + suite

    def prepare(self, ctx: RunContext) -> None:
        """The explainers the attack differentiates: the evaluation ones, except that DDS keys use a
        DDS with ``spec.attack_samples`` samples per draw when that is set."""
        from fvit.dds import DDS, DDSExplainer

        n, dds = ctx.params.spec.attack_samples, ctx.dds
        if dds is None or n is None or n == dds.samples:
            ctx.state["attack_explainers"] = ctx.explainers
            return
        cheap = DDS(dds.denoiser, dds.config.replace(samples=n))  # no memo: every draw is fresh
        fuse = ctx.settings.methods.fuse
        ctx.state["attack_explainers"] = {k: (DDSExplainer(ctx.methods[k], cheap, fuse=fuse) if split_key(k)[1]
                                              else e) for k, e in ctx.explainers.items()}

    def settings(self, ctx: RunContext) -> list[str]:
        out = [setting(f"{k}/{CLEAN_ATTACK}", "0") for k in ctx.keys]
        return out + [setting(f"{k}/{a}", r) for k in ctx.keys for a in self.attacks(ctx) for r, _ in self.radii(ctx)]

    def compute(self, batch: dict, bctx, ctx: RunContext) -> list[dict]:
        model, spec = ctx.model, ctx.params.spec
        x = batch["image"].to(ctx.device)
        masks = batch["mask"].to(ctx.device) if "mask" in batch else None
        clean_pred = ops.predict(model, x)
        clean = {key: ops.explain(e, model, x, "prediction", clean_pred, bctx, key) for key, e in ctx.explainers.items()}
        k = min(int(spec.k), clean[ctx.keys[0]].patch[0].numel())
        rows: list[dict] = []
        for key in ctx.keys:
            rows += _scored(batch, masks, clean, k, key, CLEAN_ATTACK, "0", clean[key])
        for r_label, r in self.radii(ctx):
            if ctx.attack is not None:
                adv = ops.attacked(ctx.attack, model, x, clean_pred, bctx, eps=r)
                for key, e in ctx.explainers.items():
                    e_adv = ops.explain(e, model, adv, "prediction", clean_pred, bctx, key)
                    rows += _scored(batch, masks, clean, k, key, CLASSIFIER_ATTACK, r_label, e_adv)
            results: dict[str, dict] = {key: {} for key in ctx.keys}
            scored: dict[str, dict] = {key: {} for key in ctx.keys}
            keys = ops.dds_keys(bctx, x)
            seed = ops.image_attack_seed(bctx) if keys is not None else ops.attack_seed(bctx)
            runs = [(o, o, None) for o in spec.names()]
            if WARM_ATTACK in self.attacks(ctx):  # the first objective again, from the classifier attack's image
                runs.append((WARM_ATTACK, spec.names()[0], adv))
            for name, objective, start in runs:
                atk = spec.build(objective, r, seed)
                for key, e in ctx.explainers.items():
                    with bctx.timed(f"{key}/{name}"):
                        res = atk.run(ctx.state["attack_explainers"][key], model, x, target=clean[key].target,
                                      clean_maps=clean[key].patch, keys=keys, start=start)
                    e_adv = ops.explain(e, model, res.adv, "prediction", clean_pred, bctx, key)
                    part = _scored(batch, masks, clean, k, key, name, r_label, e_adv,
                                   {"objective": res.objective.tolist(), "clean_objective": res.clean_objective.tolist(),
                                    "score": res.score.tolist()}, kept=res.kept.tolist())
                    results[key][name], scored[key][name] = res, part
                    rows += part
            if SUITE_ATTACK in self.attacks(ctx):
                for key in ctx.keys:
                    rows += _suite_rows(results[key], scored[key], key, r_label)
        return rows

    def summarise(self, out: RunOutput, ctx: RunContext) -> dict:
        spec, dds = ctx.params.spec, ctx.dds
        radii = [r for r, _ in self.radii(ctx)]
        with_dds = any(split_key(k)[1] for k in ctx.keys)
        protocol = {**spec.as_config(), "compare": ctx.attack.as_config() if ctx.attack else None,
                    "radii": radii, "evaluations_per_attack": (spec.steps + 1) * (1 + spec.restarts),
                    "interval": "percentile bootstrap over images, 95 %, 2000 resamples (paired for differences)",
                    "dds_draws_per_step": spec.eot if with_dds else None,
                    "dds_samples_per_draw": (spec.attack_samples or dds.samples) if with_dds else None,
                    "dds_samples_evaluation": dds.samples if with_dds else None}
        return {"methods": summarise_explanation_attack(out, ctx.keys, self.attacks(ctx), radii),
                "comparisons": compare_explanation_attack(out, ctx.keys, self.attacks(ctx), radii),
                "protocol": protocol}

    def store_config(self, settings) -> dict:
        """The radii and objectives key the rows; the classifier attack's eps is a radius."""
        config = super().store_config(settings)
        spec = {k: v for k, v in settings.params.spec.as_config().items() if k != "objectives"}
        config["params"] = {"explanation_attack": spec}
        if config["attack"] is not None:
            config["attack"].pop("eps", None)
        return config

    def tables(self, results: dict, ctx: RunContext) -> list:
        from fvit.viz import tables as T

        out = [("explanation_attack", T.explanation_attack_table(results["methods"]))]
        comparisons = results.get("comparisons") or {}
        for r in results["protocol"]["radii"][-1:]:
            if comparisons.get("dds"):
                out.append(("dds_effect", T.dds_effect_table(comparisons, r)))
            if comparisons.get("vs_pgd"):
                out.append(("adversary", T.adversary_table(results["methods"], comparisons, r)))
        return out

    def figures(self, results: dict, ctx: RunContext, out_dir: Path) -> list[Path]:
        from fvit.viz.plots import plot_overlap_vs_radius

        return [plot_overlap_vs_radius(results["methods"], out_dir / "overlap_vs_radius.png")]


def _suite_rows(results: dict, scored: dict, key: str, radius: str) -> list[dict]:
    """The suite's rows: per image, the evaluated row of the objective whose attack result the
    attacker rates worst for the map among those that kept the prediction
    (`fvit.attacks.explanation.combine_worst`: by its own score, not by the evaluation)."""
    from fvit.attacks.explanation import combine_worst

    names = list(results)
    chosen = combine_worst(results).chosen.tolist()
    out = []
    for i, c in enumerate(chosen):
        row = dict(scored[names[c]][i])
        row.update(setting=setting(f"{key}/{SUITE_ATTACK}", radius), objective_chosen=names[c])
        out.append(row)
    return out


def _scored(batch, masks, clean: dict, k: int, key: str, attack: str, radius: str, e,
            extra: dict | None = None, kept: list | None = None) -> list[dict]:
    """Rows of one (key, attack, radius): overlap / rank correlation with the clean map, whether
    the explained class changed, segmentation (with masks), the attack objective (``extra``)."""
    from fvit.metrics import rank_correlation, segmentation_rows, topk_overlap

    ref = clean[key]
    seg = segmentation_rows(e.pixel.detach().float(), masks) if masks is not None else None
    overlap = topk_overlap(ref.patch.float(), e.patch.detach().float(), k).tolist()
    rho = [ops.finite(v) for v in rank_correlation(ref.patch, e.patch.detach()).tolist()]
    changed = (explained_class(key, e) != explained_class(key, ref)).tolist()
    rows = []
    for i, id_ in enumerate(batch["id"]):
        row = {"id": id_, "setting": setting(f"{key}/{attack}", radius), "overlap": overlap[i],
               "rank_corr": rho[i], "changed": bool(changed[i])}
        if seg is not None:
            row.update(seg[i])
        if extra:
            row.update({name: ops.finite(values[i]) for name, values in extra.items()})
        if kept is not None:
            row["kept_attack"] = bool(kept[i])
        rows.append(row)
    return rows


def summarise_explanation_attack(out: RunOutput, keys: Sequence[str], attacks: Sequence[str],
                                 radii: Sequence[str]) -> dict[str, dict]:
    by_setting: dict[str, list[dict]] = {}
    for row in out.rows:
        by_setting.setdefault(row["setting"], []).append(row)
    result: dict[str, dict] = {}
    for key in keys:
        per: dict[str, dict] = {}
        pairs = [(CLEAN_ATTACK, "0")] + [(a, r) for a in attacks for r in radii]
        for attack, radius in pairs:
            rows = by_setting.get(setting(f"{key}/{attack}", radius))
            if rows:
                per.setdefault(attack, {})[radius] = _summary(rows, out.timings.get(f"{key}/{attack}"))
        if per:
            result[key] = per
    return result


def compare_explanation_attack(out: RunOutput, keys: Sequence[str], attacks: Sequence[str],
                               radii: Sequence[str]) -> dict:
    """Paired differences of the top-k overlap over the same images (`fvit.metrics.paired_interval`):
    ``dds``: {method: {attack: {radius: (with DDS) - (without)}}} (> 0: DDS keeps more of the map);
    ``vs_pgd``: {key: {attack: {radius: (explanation attack) - (classifier PGD)}}} (< 0: the
    explanation attack moves the map more than PGD)."""
    from fvit.metrics import paired_interval

    overlap: dict[str, dict[str, float]] = {}
    for row in out.rows:
        overlap.setdefault(row["setting"], {})[row["id"]] = row["overlap"]

    def diff(a: str, b: str):
        ra, rb = overlap.get(a), overlap.get(b)
        if not ra or not rb:
            return None
        ids = sorted(set(ra) & set(rb))
        return paired_interval([ra[i] for i in ids], [rb[i] for i in ids]) if ids else None

    out_dds: dict = {}
    out_pgd: dict = {}
    pairs = [(CLEAN_ATTACK, "0")] + [(a, r) for a in attacks for r in radii]
    for key in keys:
        base, with_dds = split_key(key)
        for attack, radius in pairs:
            if with_dds and base in keys:
                d = diff(setting(f"{key}/{attack}", radius), setting(f"{base}/{attack}", radius))
                if d is not None:
                    out_dds.setdefault(base, {}).setdefault(attack, {})[radius] = d
            if attack not in (CLASSIFIER_ATTACK, CLEAN_ATTACK):
                d = diff(setting(f"{key}/{attack}", radius), setting(f"{key}/{CLASSIFIER_ATTACK}", radius))
                if d is not None:
                    out_pgd.setdefault(key, {}).setdefault(attack, {})[radius] = d
    return {"dds": out_dds, "vs_pgd": out_pgd}


def _summary(rows: list[dict], seconds) -> dict:
    from fvit.metrics import aggregate_segmentation

    from fvit.metrics import mean_interval

    res = {"topk_overlap": ops.mean(r["overlap"] for r in rows),
           "topk_overlap_ci": mean_interval([r["overlap"] for r in rows]),
           "rank_corr": ops.mean(r["rank_corr"] for r in rows if r["rank_corr"] is not None),
           "changed": ops.mean(r["changed"] for r in rows), "n": len(rows), "seconds": seconds}
    if all("ap" in r for r in rows):
        agg = aggregate_segmentation(rows)
        res.update(pixel_acc=agg["pixel_acc"], miou=agg["miou"], map=agg["map"])
    if all("objective" in r for r in rows):
        res.update(kept_attack=ops.mean(r.get("kept_attack", True) for r in rows),
                   objective=ops.mean(r["objective"] for r in rows if r["objective"] is not None),
                   clean_objective=ops.mean(r["clean_objective"] for r in rows if r["clean_objective"] is not None))
    return res
