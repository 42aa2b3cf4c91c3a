"""`fvit demo`: the papers' experiment, end to end, on the embedded world.

Trains or loads the world's classifier and denoiser (fvit.demo.world_models), then on the held-out
eval split runs, with the project's runners (fvit.bench.experiments) and renderers (fvit.viz):

1. segmentation under the PGD attack, every method without and with DDS (FViT Table 1, [Re]
   Table 3 layouts), with top-k overlap of clean vs attacked maps and clean / attacked accuracy of
   the plain and the smoothed classifier; the same without attack;
2. positive / negative perturbation AUC at the demo's radius for every method ± DDS, and against
   attack radius for a few methods (FViT Fig. 3a-b);
3. an ablation-lite (FViT Table 2: DDS, -smoothing, -denoising, -both) with TA;
4. robust accuracy of the smoothed classifier under an adaptive attack through DDS (expectation
   over the DDS noise), which the papers do not report;
5. certified radii (fvit.certify) for a handful of images;
6. explanation attacks (top-k, target map; fvit.attacks.explanation) on a subset, every method
   without and with DDS (adaptive: EOT through the denoiser), next to the classifier PGD;

and writes `report.md`, `results.json`, the tables as CSV / JSON and the figures into the output
folder. Every number in the report comes from this run.

Parts 1, 2, 3 and 6 are entries of the experiment engine (`fvit.bench.engine`, through the
in-memory calls of `fvit.bench.experiments`), each with its results store in `<out>/rows/<part>`:
a killed demo rerun into the same folder resumes there and gives the identical results (a store
written by other settings, another fvit version or other model weights is discarded). Parts 4 and
5 are direct library calls: the adaptive attack is one 12-image batch on one generator, and the
certification explains ONE set of DDS samples with all six methods (`certify_methods`), which the
one-method `certify` entry cannot share.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fvit.demo.settings import DemoSettings, get_settings
from fvit.demo.world_models import WorldModels, eval_split, get_world_models

DDS_CHUNK = 256  # samples per denoiser / explanation chunk
RUN_BATCH = 25  # images per runner batch


# ------------------------------------------------------------------------------------------------
# small pieces
# ------------------------------------------------------------------------------------------------


def use_all_cores() -> int:
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def build_dds(models: WorldModels, settings: DemoSettings, samples: int | None = None):
    from fvit.dds import DDS, DDSConfig, DenoiseMemo

    e = settings.experiment
    config = DDSConfig(sigma=float(e.sigma), denoise="one-shot", samples=samples or e.samples, seed=settings.seed,
                       max_batch=DDS_CHUNK)
    return DDS(models.denoiser, config, memo=DenoiseMemo(2))


def attack_spec(settings: DemoSettings, eps: float | None = None):
    from fvit.bench.experiments import AttackSpec

    e = settings.experiment
    return AttackSpec(e.attack, eps=e.eps if eps is None else eps, steps=e.attack_steps,
                      step_size=e.attack_step_size)


def models_digest(models: WorldModels) -> str:
    """SHA-256 (16 hex digits) of the classifier's and the denoiser's weights: the rows of a run
    belong to these exact models (a retrain invalidates them)."""
    import hashlib

    h = hashlib.sha256()
    for module in (models.classifier, models.denoiser):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class PartStores:
    """The results store of each demo part in ``<out>/rows/<part>`` (the engine's `ResultsStore`):
    rows are written as batches finish, so a killed demo rerun into the same folder resumes and
    gives the identical results. A store written by other settings, code version or models (a
    retrain) is discarded: the demo then recomputes that part."""

    root: Path
    identity: dict
    resumed: list[str] = field(default_factory=list)  # parts whose store already held rows

    def __call__(self, part: str):
        import shutil

        from fvit import __version__
        from fvit.bench.store import ResultsStore, StoreConfigError

        config = {"demo_part": part, "fvit": __version__, **self.identity}
        try:
            store = ResultsStore(self.root / part, config)
        except StoreConfigError:
            shutil.rmtree(self.root / part)
            store = ResultsStore(self.root / part, config)
        if len(store):
            self.resumed.append(part)
        return store


# ------------------------------------------------------------------------------------------------
# experiment parts: entries of the experiment engine (fvit.bench.engine) through its in-memory calls
# (fvit.bench.experiments), each with its results store; none computes a metric itself
# ------------------------------------------------------------------------------------------------


def segmentation_part(model, dds, data, settings: DemoSettings, progress: bool, stores: PartStores) -> dict:
    from fvit.bench.experiments import CLEAN_SUFFIX, run_segmentation

    e = settings.experiment
    common = dict(dds=dds, batch_size=RUN_BATCH, seed=settings.seed, progress=progress, fuse=e.fuse)
    both = run_segmentation(model, data, list(e.methods), attack=attack_spec(settings), topk=e.topk,
                            with_clean=True, store=stores("segmentation"), **common)
    attacked = {k: v for k, v in both.items() if not k.endswith(CLEAN_SUFFIX)}
    clean = {k.removesuffix(CLEAN_SUFFIX): v for k, v in both.items() if k.endswith(CLEAN_SUFFIX)}
    return {"attacked": attacked, "clean": clean}


def perturbation_part(model, dds, data, settings: DemoSettings, progress: bool, stores: PartStores) -> dict:
    from fvit.bench.experiments import run_perturbation

    e = settings.experiment
    common = dict(dds=dds, attack=attack_spec(settings), fractions=e.fractions, batch_size=RUN_BATCH,
                  seed=settings.seed, progress=progress, fuse=e.fuse)
    at_eps = run_perturbation(model, data, list(e.methods), radii=(e.eps,), store=stores("perturbation_at_eps"),
                              **common)
    sweep = run_perturbation(model, data.subset(min(len(data), e.sweep_images)), list(e.sweep_methods),
                             radii=e.radii, store=stores("perturbation_sweep"), **common)
    return {"at_eps": at_eps, "sweep": sweep}


def ablation_part(model, dds, data, settings: DemoSettings, progress: bool, stores: PartStores) -> dict:
    from fvit.bench.experiments import run_ablation

    e = settings.experiment
    return run_ablation(model, data.subset(min(len(data), e.sweep_images)), e.ablation_method, dds=dds,
                        attack=attack_spec(settings), batch_size=RUN_BATCH, seed=settings.seed,
                        progress=progress, fractions=e.fractions, fuse=e.fuse, store=stores("ablation"))


def adaptive_part(model, dds, data, settings: DemoSettings) -> dict:
    """Accuracy of the smoothed classifier under PGD through the DDS pipeline (expectation over the
    DDS noise: the forward is the mean logit over m fresh denoised samples), vs. the transfer attack
    on the plain model that the papers use. A direct library call (12 images, one batch, one
    generator), not an engine entry: no benchmark reports it."""
    from fvit.attacks import expectation_forward
    from fvit.utils import seeded_generator

    e = settings.experiment
    n = min(len(data), e.adaptive_images)
    x, y = data.images[:n].to(model.device), data.labels[:n].to(model.device)
    attack = attack_spec(settings).build(settings.seed)
    adv_plain = attack(model, x, model(x).argmax(1).detach())
    g = seeded_generator(settings.seed + 1, x.device)
    forward = expectation_forward(lambda images: dds.denoise_differentiable(images, g), model, reduce="mean-logits")
    with torch.no_grad():
        smoothed_clean = dds.smoothed_predict(model, x)
    adv_adaptive = attack(forward, x, smoothed_clean)
    with torch.no_grad():
        transfer = dds.smoothed_predict(model, adv_plain)
        adaptive = dds.smoothed_predict(model, adv_adaptive)
    acc = lambda p: float((p.cpu() == y.cpu()).float().mean())  # noqa: E731
    return {"n": n, "smoothed_clean_acc": acc(smoothed_clean), "smoothed_acc_transfer_attack": acc(transfer),
            "smoothed_acc_adaptive_attack": acc(adaptive), "eps": e.eps, "samples": dds.samples}


def explanation_attack_part(model, dds, data, settings: DemoSettings, progress: bool, stores: PartStores) -> dict:
    """Explanation attacks at the demo radii on the first `expl_images` eval images, every method
    ± DDS (adaptive through DDS), with the classifier PGD (the demo's attack settings) as the
    comparison row, the suite (per image the worst kept map) and paired confidence intervals."""
    from fvit.bench.experiments import ExplanationAttackSpec, run_explanation_attack

    e = settings.experiment
    dds = dds.replace(samples=e.expl_samples)
    spec = ExplanationAttackSpec(objectives=e.expl_objectives, steps=e.expl_steps, schedule=e.expl_schedule,
                                 restarts=e.expl_restarts, k=e.topk, eot=e.expl_eot,
                                 attack_samples=e.expl_attack_samples)
    return run_explanation_attack(model, data.subset(min(len(data), e.expl_images)), list(e.methods), dds=dds,
                                  radii=e.expl_radii, spec=spec, compare=attack_spec(settings),
                                  batch_size=RUN_BATCH, seed=settings.seed, progress=progress, fuse=e.fuse,
                                  store=stores("explanation_attack"))


def dds_verdict(part: dict, radius: str) -> list[str]:
    """Per method at `radius`, under PGD and under the strongest explanation attack: the paired
    difference of the top-k overlap with and without DDS, worded only as far as its confidence
    interval allows (`fvit.metrics.verdict`)."""
    from fvit.metrics import verdict
    from fvit.viz.names import display

    lines = []
    for base, per in part.get("comparisons", {}).get("dds", {}).items():
        for attack, name in (("pgd", "classifier PGD"), ("suite", "the strongest explanation attack")):
            d = per.get(attack, {}).get(radius)
            if d is not None:
                lines.append(verdict(d, higher="DDS keeps more of the map", lower="DDS keeps less of the map",
                                     what=f"{display(base)} under {name} at ε={radius}: "))
    return lines


def frontier_part(model, dds, data, settings: DemoSettings, progress: bool, stores: PartStores) -> dict | None:
    """The smoothing frontier (`fvit bench frontier`'s entry) on the first `frontier_images` eval
    images: the demo's sigmas x fusions for a few methods, adaptive attacks, certificates."""
    from fvit.bench.experiments import AttackSpec, ExplanationAttackSpec, run_frontier
    from fvit.bench.frontier import FrontierParams
    from fvit.certify import CertifyConfig

    e = settings.experiment
    if not e.frontier_images:
        return None
    spec = ExplanationAttackSpec(objectives=e.frontier_objectives, steps=e.frontier_steps, schedule=e.expl_schedule,
                                 k=e.topk, eot=e.expl_eot, attack_samples=e.expl_attack_samples)
    params = FrontierParams(sigmas=e.frontier_sigmas, fusions=e.frontier_fusions, samples=(e.expl_samples,),
                            eps=e.eps, spec=spec,
                            certify=CertifyConfig(k=e.certify_k, beta=e.certify_beta, alpha=e.certify_alpha,
                                                  n0=e.certify_n0, n=e.frontier_cert_samples, mc_batch=DDS_CHUNK),
                            cert_radii=e.frontier_cert_radii)
    attack = AttackSpec(e.attack, eps=e.eps, steps=e.frontier_pgd_steps, step_size=e.attack_step_size)
    return run_frontier(model, data.subset(min(len(data), e.frontier_images)), list(e.frontier_methods),
                        dds=dds.replace(samples=e.expl_samples), params=params, attack=attack,
                        batch_size=RUN_BATCH, seed=settings.seed, progress=progress, store=stores("frontier"))


def frontier_recommendation(front: dict, paper_sigma: float, paper_fuse: str) -> list[str]:
    """Plain sentences from the measured frontier: per method, the papers' cell against the cell
    whose map kept most of its top-k under the adaptive attack, with the price in clean mIoU and
    smoothed accuracy; whether the gain's interval clears the papers' cell's."""
    from fvit.viz.names import display, radius_label

    lines = []
    cells = front.get("cells", [])
    for method in dict.fromkeys(c["method"] for c in cells):
        mine = [c for c in cells if c["method"] == method and c.get("topk_overlap") is not None]
        paper = next((c for c in mine if abs(c["sigma"] - paper_sigma) < 1e-9 and c["fusion"] == paper_fuse), None)
        best = max(mine, key=lambda c: c["topk_overlap"], default=None)
        if paper is None or best is None:
            continue
        gain = best["topk_overlap"] - paper["topk_overlap"]
        separated = best["topk_overlap_ci"]["lo"] > paper["topk_overlap_ci"]["hi"]
        lines.append(
            f"{display(method)}: the papers' setting (σ={radius_label(paper_sigma)}, {paper_fuse}) keeps "
            f"{paper['topk_overlap']:.2f} of the clean top-k under the adaptive attack; σ={radius_label(best['sigma'])} "
            f"with {best['fusion']} keeps {best['topk_overlap']:.2f} ({gain:+.2f}"
            + ("; the intervals do not overlap" if separated else "; the intervals overlap: not a clear gain")
            + f"), at a clean mIoU of {best['miou']:.3f} vs {paper['miou']:.3f} and a smoothed clean accuracy of "
            f"{best['smoothed_clean_acc']:.2f} vs {paper['smoothed_clean_acc']:.2f} (under the adaptive classifier "
            f"attack {best['smoothed_attacked_acc']:.2f} vs {paper['smoothed_attacked_acc']:.2f}).")
    return lines


def certification_part(model, dds, data, settings: DemoSettings) -> dict:
    """Per method: every certificate family on the first ``certify_images`` images (l_2, pixel
    units), then the tightness / soundness attacks at 0.9R, 1R, 1.5R and 2R on the first
    ``tightness_images`` of them (prediction once, the top-k set per method). The demo's DDS
    (``samples`` per call) draws the certification samples; ``mc_batch`` records that m."""
    from fvit.certify import CertifyConfig, TightnessConfig, certify_methods
    from fvit.certify.tightness import run_tightness

    e = settings.experiment
    n = min(len(data), e.certify_images)
    x, labels, ids = data.images[:n].to(model.device), data.labels[:n], [data.item_id(i) for i in range(n)]
    config = CertifyConfig(k=e.certify_k, beta=e.certify_beta, alpha=e.certify_alpha, n0=e.certify_n0,
                           n=e.certify_samples, mc_batch=dds.samples)
    tight = TightnessConfig(factors=tuple(e.tightness_factors), attack_steps=e.tightness_steps, eot=e.tightness_eot,
                            check_samples=e.tightness_check_samples)
    # one set of DDS samples, explained by every method
    certified = certify_methods(model, dds, x, config, attentions=list(e.methods), seed=settings.seed, keys=ids)
    per_method, tightness = {}, {}
    t = min(n, e.tightness_images)
    for j, (method, results) in enumerate(certified.items()):
        per_method[method] = [dict(r.to_dict(), label=int(labels[r.index]), id=ids[r.index]) for r in results]
        properties = ("prediction", "topk") if j == 0 else ("topk",)
        report = run_tightness(model, dds, x[:t], labels[:t], certificates=results[:t], seed=settings.seed,
                               certify=config.replace(attention=method), tightness=tight.replace(properties=properties))
        tightness[method] = {key: report[key] for key in ("config", "summary", "violations")}
    return {"per_method": per_method, "tightness": tightness}


#: Certificate families in the demo's table: (family, part, column title).
CERT_COLUMNS = (("gaussian", "topk", "top-k gaussian"), ("renyi", "topk", "top-k renyi"),
                ("renyi-re", "topk", "top-k renyi-re*"), ("renyi-hu", "topk", "top-k renyi-hu*"))


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values that apply (None = not applicable, NaN skipped); None when none does."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else None


def certification_summary(part: dict) -> dict:
    """Means over the certified images per method and family; tightness rates; violations."""
    per_method, summary = part["per_method"], {}
    for method, rows in per_method.items():
        radii = [{fam: {key: (math.inf if v == "inf" else math.nan if v == "nan" else v)
                        for key, v in r["radii"][fam].items()} for fam in r["radii"]} for r in rows]
        summary[method] = {
            "n": len(rows), "abstained": sum(r["abstained"] for r in rows),
            **{f"{fam}_{part_}": _mean([rr[fam][part_] for rr in radii]) for fam in radii[0]
               for part_ in ("prediction", "topk", "region")},
            "membership_certified": {rad: _mean([r["membership_certified"][rad] for r in rows])
                                     for rad in rows[0]["membership_certified"]},
        }
    violations = [dict(v, method=m) for m, rep in part["tightness"].items() for v in rep["violations"]]
    return {"per_method": summary, "violations": violations}


def raise_if_unsound(part: dict) -> None:
    """A confirmed attack success inside a certified radius is a bug: fail the demo loudly."""
    from fvit.certify.tightness import raise_on_violations

    for report in part["tightness"].values():
        raise_on_violations(report)


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------


def heatmap_figure(model, dds, data, settings: DemoSettings, path: Path) -> Path:
    """The engine's heat-map grid (`fvit.bench.figures.explanation_grid`): per image, clean /
    attacked / mask, then per method (± DDS) its clean and attacked maps."""
    from fvit.bench.experiments import build_explainers, method_keys
    from fvit.bench.figures import explanation_grid

    e = settings.experiment
    n = min(len(data), e.grid_images)
    x = data.images[:n].to(model.device)
    with torch.no_grad():
        pred = model(x).argmax(1)
    adv = attack_spec(settings).build(settings.seed)(model, x, pred).detach()
    with torch.no_grad():
        adv_pred = model(adv).argmax(1).cpu()
    names = data.class_names
    rows = [f"{names[int(data.labels[i])]}: {names[int(pred[i])]}→{names[int(adv_pred[i])]}" for i in range(n)]
    title = (f"clean vs PGD ε={_radius(e.eps)} (plain model), without / with DDS (σ={_radius(e.sigma)}, "
             f"m={e.samples})")
    explainers = build_explainers(method_keys(e.grid_methods, dds), dds, e.fuse)
    return explanation_grid(model, {"clean": x, "attacked": adv}, explainers, path, by="method",
                            extra={"mask": data.masks[:n, None].float().expand(-1, 3, -1, -1)},
                            row_labels=rows, title=title)


def certified_set_figure(data, cert: dict, path: Path) -> Path:
    """The first certified image's smoothed top-k membership (the map whose top-k the gaussian
    certificate certifies) with its certified patches outlined (`fvit.viz.certified`): what is
    shown is what is certified."""
    from fvit.viz.certified import certified_figure
    from fvit.viz.names import display

    method, rows = next(iter(cert["per_method"].items()))
    record = next((r for r in rows if r.get("certified_patches")), rows[0])
    i = data.ids.index(record["id"])
    return certified_figure(data.images[i], record, path, title=(
        f"{display(method)}: smoothed top-k membership, certified patches outlined "
        f"({len(record.get('certified_patches') or [])} of k={record['k']})"))[0]


def _radius(value: float) -> str:
    from fvit.viz.names import radius_label

    return radius_label(value)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def accuracy_rows(seg: dict, adaptive: dict | None) -> dict:
    """Classification accuracy, clean and attacked, plain and smoothed (from the runners' output)."""
    from fvit.viz.names import split_key

    plain = next((v for k, v in seg.items() if not split_key(k)[1]), None)
    smooth = next((v for k, v in seg.items() if split_key(k)[1]), None)
    out = {}
    if plain is not None:
        out["plain"] = {"clean": plain.get("clean_acc"), "attacked": plain.get("robust_acc")}
    if smooth is not None:
        out["smoothed (DDS)"] = {"clean": smooth.get("clean_acc"), "attacked": smooth.get("robust_acc")}
    if adaptive:
        out["smoothed (DDS), adaptive attack"] = {"clean": adaptive["smoothed_clean_acc"],
                                                  "attacked": adaptive["smoothed_acc_adaptive_attack"],
                                                  "n": adaptive["n"]}
    return out


def build_tables(results: dict, settings: DemoSettings) -> list:
    from fvit.viz import (Table, ablation_table, dds_table, overlap_table, perturbation_table,
                          segmentation_table)

    e = settings.experiment
    eps = _radius(e.eps)
    seg = results["segmentation"]
    tables = [
        ("table1_segmentation_attacked",
         segmentation_table(seg["attacked"], title=f"Segmentation under PGD ε={eps} (FViT Table 1 layout)")),
        ("table3_dds_attacked",
         dds_table(seg["attacked"], model="tiny ViT",
                   title=f"Segmentation ± DDS under PGD ε={eps} ([Re] Table 3 layout)")),
        ("segmentation_clean",
         dds_table(seg["clean"], model="tiny ViT", title="Segmentation ± DDS without attack")),
        ("topk_overlap", overlap_table(seg["attacked"], title=(
            f"Clean vs attacked (ε={eps}): top-{e.topk} patch overlap and accuracy"))),
        ("perturbation_at_eps", perturbation_table(results["perturbation"]["at_eps"], title=(
            f"Perturbation AUC (x100) at attack radius {eps}"))),
        ("perturbation_sweep", perturbation_table(results["perturbation"]["sweep"], title=(
            "Perturbation AUC (x100) against attack radius"))),
    ]
    if results.get("explanation_attack"):
        tables += explanation_attack_tables(results["explanation_attack"], settings)
    if results.get("frontier"):
        tables += frontier_tables(results["frontier"], settings)
    acc = results["accuracy"]
    tables.append(("classification_accuracy", Table(
        f"Classification accuracy, clean and under PGD ε={eps}",
        ["Classifier", "Clean", "Attacked", "n"],
        [[k, v["clean"], v["attacked"], v.get("n", results["world"]["eval"]["size"])] for k, v in acc.items()],
        digits=[0, 4, 4, 0],
        notes=["plain/smoothed rows: the attack targets the plain model (the papers' protocol); "
               "adaptive row: PGD through DDS with expectation over its noise."])))
    if results.get("ablation"):
        tables.append(("ablation", ablation_table(results["ablation"], title=(
            f"Ablation-lite with {results['ablation_method']} under PGD ε={eps} (FViT Table 2 layout)"))))
    tables += certification_tables(results["certification"], settings)
    return tables


def certification_tables(cert: dict, settings: DemoSettings) -> list:
    from fvit.viz.names import display
    from fvit.viz.tables import Table

    e = settings.experiment
    summary = cert["summary"]["per_method"]
    first = next(iter(summary.values()))
    sigma = float(settings.experiment.sigma)
    radii_keys = list(first["membership_certified"])
    rows = [["prediction (all methods)", first["gaussian_prediction"], first["renyi_prediction"],
             first["renyi-re_prediction"], first["renyi-hu_prediction"], None]]
    for method, s in summary.items():
        rows.append([display(method), *(s[f"{fam}_{part}"] for fam, part, _ in CERT_COLUMNS),
                     s["membership_certified"][radii_keys[1]]])
    radius_table = Table(
        f"Certified l2 radii (mean over {first['n']} images, pixel units [0,1]; sigma = {sigma:.4g}, "
        f"n = {e.certify_samples}, alpha = {e.certify_alpha:g})",
        ["", "gaussian (tight)", "renyi (sound)", "renyi-re* (as published)", "renyi-hu* (as published)",
         f"patches certified at R={float(radii_keys[1]):.3g}"],
        rows, digits=[0, 4, 4, 4, 4, 3],
        notes=["gaussian: Cohen et al.'s prediction radius and the Lipschitz radius of the smoothed top-k "
               "membership; renyi: the papers' Rényi route made sound (exact minimum top-k divergence, "
               "confidence bounds on the mean attention, prefix-token mass kept); both are certificates at "
               f"confidence 1 - {e.certify_alpha:g} (alpha split between prediction and top-k).",
               "* NOT certificates: the papers' formulas as published (raw frequencies, point-estimate "
               "attention, pooled top-k form); inf = a raw frequency of 1. renyi top-k is empty for maps "
               "that are not attention rows; 0 = nothing certified (too few samples for the Bernstein box).",
               f"k = {e.certify_k}, beta = {e.certify_beta} (k0 = 3); an l_inf radius is the l_2 one / "
               f"sqrt(3 H W) (docs/CERTIFICATES.md)."])
    trows = []
    for method, rep in cert["tightness"].items():
        for prop, per in rep["summary"].items():
            name = "prediction" if prop == "prediction" else f"top-k {display(method)}"
            trows.append([name, per[next(iter(per))]["attacked"],
                          *(f"{row['successes']}/{row['attacked']} ({row['confirmed']})" if row["attacked"] else "-"
                            for row in per.values())])
    factors = [f"{float(f):g}R" for f in e.tightness_factors]
    n_viol = len(cert["summary"]["violations"])
    tight_table = Table(
        "Attacks at multiples of the certified (gaussian) radius: successes/attacked (statistically confirmed)",
        ["property", "images", *factors], trows, digits=0,
        notes=[f"prediction: PGD through the differentiable DDS; top-k: the top-k explanation attack through DDS "
               f"({e.tightness_steps} steps, {e.tightness_eot} EOT draw(s)); success judged on "
               f"{e.tightness_check_samples} fresh samples (point estimate, and confirmed by Clopper-Pearson "
               "bounds). Paper (its own radius, ImageNet): 23% at 1.5R, 64% at 2R.",
               f"soundness: {n_viol} confirmed success(es) inside a certified radius"
               + (" -- a BUG (the demo fails)." if n_viol else " (any would fail the run).")])
    return [("certification", radius_table), ("certification_tightness", tight_table)]


def explanation_attack_report_table(part: dict, settings: DemoSettings):
    from fvit.viz import explanation_attack_table

    e, p = settings.experiment, part["protocol"]
    table = explanation_attack_table(part["methods"], title=(
        f"Explanation attacks vs classifier PGD, ± DDS (first {e.expl_images} eval images, top-{p['k']})"))
    table.notes += [
        f"Explanation attacks: {', '.join(p['objectives'])} (and the suite: per image the worst map among them that "
        f"kept the prediction, chosen by what the attacker sees), l_{'∞' if p['norm'] == 'linf' else '2'}, "
        f"{p['steps']} steps, schedule {p['schedule']}"
        + (f" (from 2ε, halved on stagnation)" if p["schedule"] == "apgd" else f" of ε×{p['step_fraction']:g}")
        + (f", {p['restarts']} random restart(s)" if p.get("restarts") else "")
        + f", softplus surrogate β={p['surrogate']}, prediction kept (margin penalty, best kept iterate); '+ DDS' "
        f"rows are attacked adaptively through DDS: {p['dds_draws_per_step']} draw(s) per step of "
        f"{p['dds_samples_per_draw']} denoised sample(s), gradients through the one-shot denoiser; evaluated with "
        f"m={p['dds_samples_evaluation']} samples. Classifier PGD: {e.attack_steps} steps against the plain model "
        "(the papers' protocol).",
        "DDS maps of the clean and the attacked image use the same evaluation noise (as the segmentation "
        "runner), so the clean DDS map is compared without its own sampling variability."]
    return table


def explanation_attack_tables(part: dict, settings: DemoSettings) -> list:
    """The explanation-attack table, the DDS effect with its paired intervals, and the check that
    the explanation adversary is at least as strong as classifier PGD."""
    from fvit.viz import adversary_table, dds_effect_table

    top = part["protocol"]["radii"][-1]
    effect = dds_effect_table(part["comparisons"], top)
    effect.notes += dds_verdict(part, top)
    return [("explanation_attack", explanation_attack_report_table(part, settings)),
            ("explanation_attack_dds_effect", effect),
            ("explanation_attack_vs_pgd", adversary_table(part["methods"], part["comparisons"], top))]


def frontier_tables(front: dict, settings: DemoSettings) -> list:
    from fvit.viz.tables import frontier_table

    e = settings.experiment
    table = frontier_table(front, title=(f"The smoothing frontier (first {e.frontier_images} eval images; "
                                         f"{e.frontier_steps}-step adaptive attacks)"))
    table.notes += frontier_recommendation(front, e.sigma, e.fuse)
    return [("frontier", table)]


def preamble(results: dict, settings: DemoSettings) -> str:
    w, m, e = results["world"], results["models"], settings.experiment
    c, d = m["classifier"], m["denoiser"]
    dq = d["held_out"]
    lines = [
        "**What this is.** A self-contained run of the FViT experiment (Hu et al., ICML 2024) and its [Re] "
        "extension on a small *synthetic* world generated by `fvit.data.world` — not ImageNet. Use it to "
        "check the pipeline and see DDS at work in minutes on a CPU; do not compare its numbers with the "
        "papers'.",
        "",
        f"- **World**: {w['img_size']}×{w['img_size']} px images, {len(w['classes'])} shape classes "
        f"({', '.join(w['classes'])}) at random position, size and rotation on cluttered backgrounds "
        f"(smooth colour noise, thin strokes, soft blobs); exact ground-truth masks (mean object area "
        f"{100 * w['eval']['mean_mask_fraction']:.1f}% of the image). Class-biased but overlapping "
        f"colour and texture; the background carries no class information. "
        f"Train split: {c['train_images']} images (seed {c['data_seed']}); held-out eval split (seed "
        f"{w['eval']['seed']}): {w['eval']['size']} images used here.",
        f"- **Classifier**: timm VisionTransformer, patch {c['recipe']['patch_size']} "
        f"({w['img_size'] // c['recipe']['patch_size']}×{w['img_size'] // c['recipe']['patch_size']} "
        f"tokens + CLS), dim {c['recipe']['embed_dim']}, depth {c['recipe']['depth']}, "
        f"{c['recipe']['num_heads']} heads, {m['classifier_parameters']:,} parameters, trained from scratch "
        f"for {c['recipe']['steps']} steps of {c['recipe']['batch_size']} (flips, 90° rotations, Gaussian "
        f"noise σ={_radius(c['recipe']['noise_sigma'])} on {int(100 * c['recipe']['noise_prob'])}% of "
        f"images). **Held-out clean accuracy {100 * c['clean_accuracy']:.1f}%** "
        f"(n={c['held_out']['n']}).",
        f"- **Denoiser**: the project's small DDPM (`fvit.denoise.SmallDDPM`, {d['parameters']:,} parameters, "
        f"linear schedule T=1000) trained for {d['recipe']['steps']} steps of {d['recipe']['batch_size']} on "
        f"t < {d['recipe']['max_t']}. One-shot denoising at σ={_radius(dq['sigma'])} (t*={dq['t_star']}): "
        f"held-out MSE {dq['mse_denoised']:.5f} vs {dq['mse_noisy']:.5f} for the noisy input; classifier "
        f"accuracy {100 * dq['accuracy_denoised']:.1f}% on denoised vs {100 * dq['accuracy_noisy']:.1f}% "
        f"on noisy images (n={dq['n']}).",
        f"- **DDS**: σ={_radius(e.sigma)} (pixel units), t* by the Carlini mapping, one-shot denoising, "
        f"m={e.samples} samples, fusion `{e.fuse}`.",
        f"- **Attack**: {e.attack.upper()} l_∞, ε={_radius(e.eps)}, {e.attack_steps} steps, step "
        f"`{e.attack_step_size}` (=ε/4), random start, against the plain model's clean prediction; "
        f"radius sweep {', '.join(_radius(r) for r in e.radii)} on {min(e.sweep_images, w['eval']['size'])} images.",
        f"- **Run**: preset `{settings.name}`, seed {settings.seed}, device {results['device']}, "
        f"{results['threads']} torch threads; models {results['models_source']} "
        f"(cache `{results['cache_dir']}`); total {results['timings']['total']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in results['timings'].items() if k != 'total')})"
        + (f"; rows of {', '.join(results['resumed_parts'])} were read from the results stores of an "
           f"earlier run in this folder (resumed), so their times are not compute times"
           if results.get("resumed_parts") else "") + ".",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def run_demo(out_dir: str | Path = "fvit-demo", *, quick: bool = False, retrain: bool = False,
             device=None, seed: int = 0, progress: bool = True, log=print) -> dict:
    """Run the demo; returns the results dict (also written to `out_dir/results.json`)."""
    from fvit.bench.engine import write_json
    from fvit.timing import Stopwatch
    from fvit.utils import resolve_device
    from fvit.viz.plots import plot_auc_vs_radius, plot_frontier, plot_overlap_vs_radius
    from fvit.viz.report import write_report

    settings = get_settings("quick" if quick else "full", seed)
    e = settings.experiment
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = use_all_cores()
    dev = resolve_device(device)
    clock = Stopwatch()
    t_start = time.perf_counter()

    with clock("models"):
        log(f"fvit demo [{settings.name}]: loading or training the world's models "
            f"(cache {settings.cache_key()}) ...")
        models = get_world_models(settings, device=dev, retrain=retrain, progress=progress)
    model = models.classifier
    with clock("data"):
        data = eval_split(settings, e.eval_images)
    dds = build_dds(models, settings)
    stores = PartStores(out / "rows", {"settings": settings.to_dict(), "models": models_digest(models),
                                       "device": str(dev)})

    results: dict[str, Any] = {
        "preset": settings.name, "settings": settings.to_dict(), "device": str(dev), "threads": threads,
        "cache_dir": str(models.directory),
        "models_source": ("trained now (" + ", ".join(models.trained) + ")") if models.trained else "loaded from cache",
        "world": {"img_size": settings.world.img_size, "classes": data.class_names,
                  "eval": {**data.describe(), "ids": data.ids}},
        "models": {"classifier": models.classifier_info, "denoiser": models.denoiser_info,
                   "classifier_parameters": sum(p.numel() for p in model.parameters()),
                   "dds": repr(dds), "dds_settings": dds.settings(), "fuse": e.fuse},
    }
    log(f"  classifier held-out accuracy {models.classifier_info['clean_accuracy']:.3f}; {dds!r}")

    with clock("segmentation"):
        log("  segmentation, all methods ± DDS, clean and attacked ...")
        results["segmentation"] = segmentation_part(model, dds, data, settings, progress, stores)
    with clock("perturbation"):
        log("  perturbation tests ...")
        results["perturbation"] = perturbation_part(model, dds, data, settings, progress, stores)
    with clock("ablation"):
        log("  ablation-lite ...")
        results["ablation_method"] = e.ablation_method
        results["ablation"] = ablation_part(model, dds, data, settings, progress, stores)
    with clock("adaptive attack"):
        log("  adaptive attack through DDS ...")
        results["adaptive_attack"] = adaptive_part(model, dds, data, settings)
    results["accuracy"] = accuracy_rows(results["segmentation"]["attacked"], results["adaptive_attack"])
    with clock("explanation attacks"):
        log("  explanation attacks, all methods ± DDS (adaptive) ...")
        results["explanation_attack"] = explanation_attack_part(model, dds, data, settings, progress, stores)
    with clock("frontier"):
        log("  the smoothing frontier (sigma x fusion, adaptive attacks, certificates) ...")
        results["frontier"] = frontier_part(model, dds, data, settings, progress, stores)
    with clock("certification"):
        log("  certification and its tightness attacks ...")
        cert_part = certification_part(model, dds, data, settings)
        results["certification"] = {"summary": certification_summary(cert_part), **cert_part}
    with clock("figures"):
        figures = [heatmap_figure(model, dds, data, settings, out / "heatmaps.png"),
                   plot_auc_vs_radius(results["perturbation"]["sweep"], out / "auc_vs_radius.png",
                                      title="Perturbation AUC against PGD radius (world eval split)"),
                   plot_overlap_vs_radius(results["explanation_attack"]["methods"], out / "overlap_vs_radius.png",
                                          title="Top-k overlap under classifier PGD and explanation attacks")]
        figures.append(certified_set_figure(data, results["certification"], out / "certified_set.png"))
        if results.get("frontier") and results["frontier"]["cells"]:
            figures.append(plot_frontier(results["frontier"], out / "frontier.png",
                                         title="The smoothing frontier (world eval split)"))
    results["figures"] = [str(f.name) for f in figures]
    results["timings"] = {"total": time.perf_counter() - t_start, **clock.seconds}
    results["resumed_parts"] = list(stores.resumed)

    write_report(out, build_tables(results, settings), title=f"fvit demo ({settings.name}): FViT on the embedded world",
                 preamble=preamble(results, settings), figures=figures)
    write_json(out / "results.json", results)  # the engine's one JSON sanitiser (non-finite -> None)
    log(f"  done in {results['timings']['total']:.0f} s: {out / 'report.md'}")
    raise_if_unsound(results["certification"])
    return results


__all__ = ["run_demo"]
