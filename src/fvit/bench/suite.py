"""One benchmark run end to end, from plain options (what `fvit bench ...` passes): load the model,
open the data set, build DDS and the attack, open the results store in `out`, run the experiment
(sharded under torchrun), and on rank 0 write results.json, report.md, CSV / JSON tables and plots.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fvit.bench import experiments as ex
from fvit.bench.cost import measure
from fvit.bench.distributed import init_distributed
from fvit.bench.store import ResultsStore
from fvit.errors import FvitError
from fvit.seeding import NOISE_RULE
from fvit.utils import parse_number, write_text_atomic
from fvit.viz.names import split_key

EXPERIMENTS = ("segmentation", "perturbation", "ablation", "sensitivity", "explanation-attack")
DDS_MODES = ("off", "on", "both")


@dataclass
class BenchOptions:
    experiment: str
    data: str
    out: Path
    model: str = "vit_base_patch16_224"
    checkpoint: str | None = None
    pretrained: bool = True
    methods: list = field(default_factory=lambda: ["transformer_attribution"])  # names or ExplanationMethods
    dds_mode: str | None = None  # None: 'both' when a denoiser is given, else 'off'
    denoiser: str | None = None
    sigma: str = "8/255"
    samples: int = 2
    denoise: str = "one-shot"
    mapping: str = "carlini"
    fuse: str = "max-drop10"
    dds_max_batch: int = 32
    attack: str | None = "pgd"
    eps: str = "8/255"
    steps: int | None = None
    step_size: str | None = None
    radii: list[str] = field(default_factory=lambda: ["0", "8/255"])
    sigmas: list[str] = field(default_factory=lambda: ["4/255", "8/255"])
    variants: list[str] = field(default_factory=lambda: list(ex.ABLATION_VARIANTS))
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    device: str | None = None
    topk: int = 0
    target: str = "prediction"
    only_correct: bool = False
    cost: bool = False
    country: str = "NLD"
    carbon_intensity: float | None = None
    figure: int = 0
    progress: bool = True
    model_name_in_table: str | None = None
    protocol: str = "default"  # fvit.bench.protocols: default | chefer2021 | re-fvit
    noise: str = "paper"  # DDS noise construction: paper | q-sample
    variance: str = "auto"  # reverse-step variance: auto | learned | fixed-small
    image_resize: str | None = None  # data-set image resizing: None (the set's default) | crop | exact
    # explanation-attack experiment (steps / step_size above apply to the explanation attacks)
    objectives: list[str] = field(default_factory=lambda: ["topk", "target-map"])
    norm: str = "linf"
    k: int = 10
    keep_weight: float = 1.0
    eot: int = 1
    attack_samples: int | None = None
    surrogate: float | None = 10.0
    target_map: str = "roll"

    def resolved_dds_mode(self) -> str:
        mode = self.dds_mode or ("both" if self.denoiser else "off")
        if mode not in DDS_MODES:
            raise FvitError(f"dds must be one of {', '.join(DDS_MODES)}, got {mode!r}", params=("dds",))
        return mode


def _number(text, field_: str) -> float:
    """`parse_number` of the option `field_`; its error lists the option in ``params``."""
    try:
        return parse_number(text, field_)
    except FvitError as e:
        raise FvitError(str(e), params=(field_,)) from None


def _attack_spec(o: BenchOptions) -> ex.AttackSpec | None:
    if not o.attack or o.attack.lower() in ("none", "off"):
        return None
    step = o.step_size
    step = _number(step, "step_size") if step and any(c.isdigit() for c in step) else step
    return ex.AttackSpec(o.attack, _number(o.eps, "eps"), o.steps, step)


def _explanation_spec(o: BenchOptions) -> ex.ExplanationAttackSpec:
    step = _number(o.step_size, "step_size") if o.step_size else None
    return ex.ExplanationAttackSpec(objectives=tuple(o.objectives), norm=o.norm,
                                    steps=ex.ExplanationAttackSpec.steps if o.steps is None else o.steps,
                                    step_size=step, k=o.k, keep_weight=o.keep_weight, eot=o.eot,
                                    attack_samples=o.attack_samples, surrogate=o.surrogate,
                                    target_map=o.target_map)


def _compare_spec(o: BenchOptions) -> ex.AttackSpec | None:
    """The classifier attack next to the explanation attacks (its own defaults; step eps/4)."""
    if not o.attack or o.attack.lower() in ("none", "off"):
        return None
    return ex.AttackSpec(o.attack, _number(o.eps, "eps"), None, "scaled" if o.attack.startswith("pgd") else None)


def _needs_dds(o: BenchOptions) -> bool:
    return o.experiment in ("ablation", "sensitivity") or o.resolved_dds_mode() != "off"


def _build_dds(o: BenchOptions, device):
    if not _needs_dds(o):
        return None
    from fvit.dds import DDSConfig, DenoiseMemo, make_dds

    config = DDSConfig(denoiser=o.denoiser, sigma=_number(o.sigma, "sigma"), mapping=o.mapping, denoise=o.denoise,
                       samples=o.samples, seed=o.seed, max_batch=o.dds_max_batch, noise=o.noise,
                       variance=o.variance)
    return make_dds(config, device=device, memo=DenoiseMemo(2))


def apply_protocol(o: BenchOptions) -> BenchOptions:
    """``o`` with everything its protocol preset sets (fvit.bench.protocols); methods become
    parameterised instances."""
    from fvit.bench.protocols import PROTOCOLS, protocol_method, protocol_model

    p = PROTOCOLS.get(o.protocol)
    changes: dict = {"protocol": p.name, "methods": [protocol_method(p, m) for m in o.methods]}
    if o.checkpoint is None:
        changes["model"] = protocol_model(p, o.model)
    if p.image_resize is not None:
        changes["image_resize"] = p.image_resize
    changes.update(p.dds)
    changes.update(p.attack)
    return dataclasses.replace(o, **changes)


def store_config(o: BenchOptions, attack: ex.AttackSpec | None) -> dict:
    """What determines the rows: a different value here means a different experiment (store error).
    Method lists, radii, sigmas and the limit are not in it: rows are keyed by them, so a run can be
    extended with more methods / radii / images in the same folder."""
    dds = None
    if _needs_dds(o):
        dds = {"denoiser": o.denoiser, "sigma": _number(o.sigma, "sigma"), "samples": o.samples,
               "denoise": o.denoise, "mapping": o.mapping, "fuse": o.fuse, "seed": o.seed,
               "noise_rule": NOISE_RULE.replace("key", "data-set id"), "noise": o.noise, "variance": o.variance}
    # batch_size: the DDS noise is per image (keyed by id), but the attacks' random starts and the
    # global RNG are seeded per batch, so the batch make-up still changes a row.
    config = {"experiment": o.experiment, "model": o.model, "checkpoint": o.checkpoint,
              "pretrained": o.pretrained if o.checkpoint is None else None, "data": o.data, "seed": o.seed,
              "attack": attack.as_config() if attack else None, "dds": dds, "target": o.target,
              "batch_size": o.batch_size, "image_resize": o.image_resize}
    if o.experiment == "explanation-attack":  # objectives key the rows: not part of the config
        spec = {k: v for k, v in _explanation_spec(o).as_config().items() if k != "objectives"}
        compare = _compare_spec(o)
        config.update(attack=compare.as_config() if compare else None, explanation_attack=spec)
        if compare is not None:
            config["attack"].pop("eps", None)  # the radii key the rows
    return config


def _method_list(o: BenchOptions) -> list:
    """Items for `experiments.resolve_methods`: each method, its DDS twin, or both (--dds)."""
    from fvit.explain import ExplanationMethod, get_method

    mode = o.resolved_dds_mode()
    methods = [m if isinstance(m, ExplanationMethod) else get_method(m) for m in o.methods]
    if mode == "off":
        return methods
    if mode == "on":
        return [(m, True) for m in methods]
    return [k for m in methods for k in (m, (m, True))]


def resolved_settings(o: BenchOptions, model, dds, attack) -> dict:
    """Every resolved choice of the run, for results.json: protocol, methods with their parameters,
    the model and its exact weights, image resizing, DDS (noise construction, sampler variance,
    ...) and the attack."""
    keys = ex.resolve_methods(_method_list(o), dds) if o.experiment in ("segmentation", "perturbation") else {}
    return {"protocol": o.protocol, "methods": ex.method_settings(keys), "model": o.model,
            "weights": getattr(model, "weights", None), "image_resize": o.image_resize or "dataset default",
            "dds": dds.settings() if dds is not None and hasattr(dds, "settings") else None,
            "attack": attack.as_config() if attack else None}


def run_bench(o: BenchOptions) -> dict[str, Any]:
    """Run one experiment (see module doc); returns {config, results, cost, files} (rank 0 writes)."""
    if o.experiment not in EXPERIMENTS:
        raise FvitError(f"unknown experiment {o.experiment!r}; use {', '.join(EXPERIMENTS)}")
    from fvit.data import open_dataset
    from fvit.models import load_model

    o = apply_protocol(o)
    ctx = init_distributed()
    try:
        device = ctx.device(o.device)
        model = load_model(o.model, pretrained=o.pretrained, checkpoint=o.checkpoint, device=device)
        dataset = open_dataset(o.data, tuple(model.input_size), limit=o.limit, seed=o.seed,
                               image_resize=o.image_resize)
        attack = _attack_spec(o)
        dds = _build_dds(o, device)
        config = store_config(o, attack)
        store = ResultsStore(o.out, config, rank=ctx.rank, world_size=ctx.world_size)
        results, costs = _dispatch(o, model, dataset, dds, attack, store, ctx)
        out = {"config": config, "settings": resolved_settings(o, model, dds, attack), "results": results,
               "cost": costs, "n_images": len(dataset), "world_size": ctx.world_size}
        if ctx.is_main:
            out["files"] = write_outputs(o, out, model, dataset, dds, attack)
        return out
    finally:
        ctx.close()


def _common(o: BenchOptions, store, ctx) -> dict:
    return dict(store=store, batch_size=o.batch_size, seed=o.seed, progress=o.progress, ctx=ctx)


def _dispatch(o, model, dataset, dds, attack, store, ctx):
    common = _common(o, store, ctx)
    costs: dict[str, dict] = {}
    if o.experiment in ("segmentation", "perturbation"):
        resolved = ex.resolve_methods(_method_list(o), dds)
        keys = list(resolved)
        items = {k: (m, split_key(k)[1]) for k, m in resolved.items()}
        run = _segmentation if o.experiment == "segmentation" else _perturbation
        if o.cost:  # [Re] Table 8: one measured pass per method key (attack included, as theirs)
            for key in keys:
                with measure(key, country_iso_code=o.country, carbon_intensity_g_per_kwh=o.carbon_intensity,
                             images=len(dataset)) as c:
                    run(o, model, dataset, [items[key]], dds, attack, common)
                costs[key] = c.as_dict()
        results, timings = run(o, model, dataset, list(items.values()), dds, attack, common)
        if not o.cost:
            costs = {k: {"seconds": timings.get(k), "seconds_per_image": (timings.get(k) or 0) / max(len(dataset), 1),
                         "energy_j": None, "co2_g": None,
                         "note": "runtime from this run's timers (explanation + metric time per method; the "
                                 "shared attack is not included); use --cost for energy / CO2"}
                     for k in keys if k in timings}
        return results, costs
    if o.experiment == "explanation-attack":
        return ex.run_explanation_attack(model, dataset, _method_list(o), dds=dds, radii=o.radii,
                                         spec=_explanation_spec(o), compare=_compare_spec(o), fuse=o.fuse,
                                         **common), costs
    if o.experiment == "ablation":
        method = o.methods[0]  # a name or an instance
        return ex.run_ablation(model, dataset, method, dds=dds, attack=attack, variants=o.variants,
                               fuse=o.fuse, **common), costs
    radii = o.radii
    return ex.run_sensitivity(model, dataset, dds=dds, sigmas=o.sigmas, radii=radii,
                              attack=attack or ex.AttackSpec(), **common), costs


def _segmentation(o, model, dataset, keys, dds, attack, common):
    timings: dict = {}
    res = ex.run_segmentation(model, dataset, keys, dds=dds, attack=attack, topk=o.topk, target=o.target,
                              fuse=o.fuse, **common)
    for k, v in res.items():
        timings[k] = v.get("seconds")
    return res, timings


def _perturbation(o, model, dataset, keys, dds, attack, common):
    res = ex.run_perturbation(model, dataset, keys, dds=dds, radii=o.radii, attack=attack or ex.AttackSpec(),
                              only_correct=o.only_correct, target=o.target, fuse=o.fuse, **common)
    return res, {}


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------

def write_outputs(o: BenchOptions, out: dict, model, dataset, dds, attack) -> list[str]:
    from fvit.viz import tables as T
    from fvit.viz.report import write_report

    o.out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    tables: list = []
    figures: list[Path] = []
    res = out["results"]
    if o.experiment == "segmentation":
        tables.append(("segmentation", T.segmentation_table(res)))
        if any(k.endswith("+dds") for k in res):
            tables.append(("segmentation_dds", T.dds_table(res, model=o.model_name_in_table or o.model)))
        if any("topk_overlap" in v for v in res.values()):
            tables.append(("overlap", T.overlap_table(res)))
        if o.figure > 0:
            figures.append(heatmap_figure(o, model, dataset, dds, attack))
    elif o.experiment == "perturbation":
        tables.append(("perturbation", T.perturbation_table(res)))
        from fvit.viz.plots import plot_auc_vs_radius

        figures.append(plot_auc_vs_radius(res, o.out / "auc_vs_radius.png"))
    elif o.experiment == "explanation-attack":
        from fvit.viz.plots import plot_overlap_vs_radius

        tables.append(("explanation_attack", T.explanation_attack_table(res["methods"])))
        figures.append(plot_overlap_vs_radius(res["methods"], o.out / "overlap_vs_radius.png"))
    elif o.experiment == "ablation":
        tables.append(("ablation", T.ablation_table(res)))
    else:
        tables.append(("sensitivity", T.sensitivity_table(res)))
        from fvit.viz.plots import plot_sensitivity

        figures.append(plot_sensitivity(res, o.out / "sensitivity.png"))
    if out.get("cost"):
        tables.append(("cost", T.cost_table(out["cost"])))
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()}
    opts["methods"] = [getattr(m, "spec", m) for m in o.methods]
    write_text_atomic(o.out / "results.json", json.dumps({**out, "options": opts}, indent=2, default=str))
    files.append(o.out / "results.json")
    preamble = (f"Model `{o.model}` (weights `{out['settings']['weights']}`), protocol `{o.protocol}`, "
                f"data `{o.data}` ({out['n_images']} images), seed {o.seed}, "
                f"attack {json.dumps(out['config']['attack'])}, DDS {json.dumps(out['settings']['dds'])}.")
    files.append(write_report(o.out, tables, title=f"fvit bench {o.experiment}", preamble=preamble, figures=figures))
    files += [o.out / f"{stem}.csv" for stem, _ in tables] + figures
    return [str(f) for f in files]


def heatmap_figure(o: BenchOptions, model, dataset, dds, attack) -> Path:
    """Heat-map grid of the first `o.figure` images: columns clean / attacked x method keys."""
    import torch

    from fvit.bench.runner import BatchContext, batch_seed
    from fvit.data import collate
    from fvit.viz.grid import heatmap_grid
    from fvit.viz.names import display

    n = min(o.figure, len(dataset))
    batch = collate([dataset[i] for i in range(n)])
    device = next(model.parameters()).device
    x = batch["image"].to(device)
    bctx = BatchContext(seed=batch_seed(o.seed, batch["id"]), index=0, ids=tuple(str(i) for i in batch["id"]))
    torch.manual_seed(bctx.seed)
    clean_pred = ex._predict(model, x)
    adv = ex._attacked(attack, model, x, clean_pred, bctx)
    resolved = ex.resolve_methods(_method_list(o), dds)
    keys = list(resolved)
    explainers = ex.build_explainers(resolved, dds, o.fuse)
    sets = {"clean": x} if adv is x else {"clean": x, "attacked": adv}
    maps = {}
    for name, imgs in sets.items():
        for key, e in explainers.items():
            maps[f"{name} / {display(key)}"] = ex._explain(e, model, imgs, o.target, clean_pred,
                                                          bctx, key).pixel.detach().cpu()
    images = {name: imgs.cpu() for name, imgs in sets.items()}
    return heatmap_grid(images, maps, o.out / "heatmaps.png", row_labels=batch["id"],
                        title="Explanations, clean and attacked")
