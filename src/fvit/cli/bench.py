"""`fvit bench segmentation|perturbation|ablation|sensitivity|explanation-attack` (+ `certify` from
bench_certify).

Each command writes into --out: rows.jsonl (the resumable store: rerun the same command to resume),
results.json, report.md, one CSV / JSON per table and the plots. Under
`torchrun --nproc_per_node N -m fvit.cli bench ...` the images are sharded over the ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvit.cli import world
from fvit.cli.common import MODEL_HELP

bench_app = typer.Typer(name="bench", help="The papers' experiments as resumable, sharded benchmarks.",
                        no_args_is_help=True)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# Options shared by every command (typer has no option groups: the same defaults everywhere).
DATA = typer.Option(..., "--data", help="imagenet-seg:PATH | imagenet-val:DIR[,LABELS] | masks:IMAGES,MASKS | world[:VARIANT]")
OUT = typer.Option(..., "--out", help="output folder (results store, tables, plots); rerun to resume")
MODEL = typer.Option("vit_base_patch16_224", "--model", help=MODEL_HELP)
CHECKPOINT = typer.Option(None, "--checkpoint", help="local .safetensors / .pth state dict (timm; torchvision for tv:)")
PRETRAINED = typer.Option(True, "--pretrained/--no-pretrained", help="timm hub weights (ignored with --checkpoint)")
DENOISER = typer.Option(None, "--denoiser", help="guided-diffusion-256[:PATH] | diffusers:PATH | small-DDPM folder | "
                                                  "world[:quick] (the demo's trained DDPM for --seed)")
SIGMA = typer.Option("8/255", "--sigma", help="DDS noise std in [0,1] pixel units")
SAMPLES = typer.Option(2, "--samples", help="DDS samples per image (papers: 2 under attack)")
DENOISE = typer.Option("one-shot", "--denoise", help="one-shot | ddim:N | ancestral:N | fvit-demo[:K]")
MAPPING = typer.Option("carlini", "--mapping", help="sigma -> t* mapping: carlini | fvit-demo")
FUSE = typer.Option("max-drop10", "--fuse", help="fusion of the m maps: max-drop10 (paper) | mean ([Re] code)")
ATTACK = typer.Option("pgd", "--attack", help="pgd | pgd-reference | pgd-l2 | fgsm | autoattack | none")
EPS = typer.Option("8/255", "--eps", help="attack radius")
STEPS = typer.Option(None, "--steps", help="attack steps (default: the attack's, 10 for PGD)")
STEP_SIZE = typer.Option(None, "--step-size", help="paper (2/255) | scaled | reference | a number")
LIMIT = typer.Option(None, "--limit", help="a seeded random sample of N images ([Re]: 4000, seed 44)")
SEED = typer.Option(0, "--seed", help="seed for --limit, attacks and DDS noise")
BATCH = typer.Option(8, "--batch-size", help="images per batch")
DEVICE = typer.Option(None, "--device", help="cpu | cuda | cuda:1 (default: cuda if available)")
PROGRESS = typer.Option(True, "--progress/--no-progress")
DISCARD = typer.Option(False, "--discard-damaged",
                       help="a damaged results store: drop the damaged line and every line after it (recomputed)")
DDS_MODE = typer.Option(None, "--dds", help="off | on | both (default: both with --denoiser, else off)")
TARGET = typer.Option("prediction", "--target", help="prediction (each method's own) | clean")
COST = typer.Option(False, "--cost", help="one measured pass per method: runtime, energy, CO2 ([Re] Table 8)")
COUNTRY = typer.Option("NLD", "--country", help="ISO code for codecarbon's grid intensity")
CARBON_INTENSITY = typer.Option(None, "--carbon-intensity", help="gCO2/kWh ([Re]: 370)")


OBJECTIVES = typer.Option("topk,soft-topk,target-map", "--objectives",
                          help="explanation attacks: topk (mass share, Ghorbani et al.) | soft-topk (rank-aware) | "
                               "target-map (Dombrowski et al.); the suite keeps per image the worst kept map")
EXPL_STEPS = typer.Option(None, "--steps", help="explanation-attack steps per restart (default 20)")
SCHEDULE = typer.Option("apgd", "--schedule", help="apgd (momentum, step halving on stagnation) | constant")
RESTARTS = typer.Option(0, "--restarts", help="further runs of every objective from random starts")
SUITE = typer.Option(True, "--suite/--no-suite", help="also report the strongest (per image worst kept) map")
WARM_START = typer.Option(True, "--warm-start/--no-warm-start",
                          help="also run the first objective from the classifier attack's image (in the suite)")


def check_options(kw: dict) -> None:
    """Validate the options every bench command shares before anything is loaded or computed
    (one-line FvitError naming the option)."""
    from fvit.cli.common import (FvitError, device_option, number, number_in, out_path, output_dir, positive_int,
                                 sigma_value)

    for name in ("batch_size", "samples", "limit", "steps"):
        if kw.get(name) is not None:
            positive_int(kw[name], "--" + name.replace("_", "-"))
    if kw.get("sigma") is not None:
        sigma_value(kw["sigma"], "--sigma")
    for s in kw.get("sigmas") or []:
        sigma_value(s, "--sigmas")
    linf = _linf(kw)
    hint = " (an l_inf radius in [0, 1] pixel units, e.g. 8/255)"
    if kw.get("eps") is not None:
        number_in(kw["eps"], "--eps", 0.0, 1.0, hint=hint) if linf else number(kw["eps"], "--eps")
    for r in kw.get("radii") or []:
        number_in(r, "--radii", 0.0, 1.0, hint=hint) if linf else number(r, "--radii")
    if kw.get("methods") is not None and not [m for m in kw["methods"] if str(m).strip()]:
        raise FvitError("--methods '': give at least one method (see `fvit methods`)")
    device_option(kw.get("device"))
    output_dir(out_path(kw["out"]))
    from fvit.utils import check_output_file

    for name in ("rows.jsonl", "results.json", "report.md"):
        check_output_file(Path(kw["out"]) / name, "--out")
PROTOCOL = typer.Option("default", "--protocol",
                        help="reproduction preset: default | chefer2021 (Chefer et al.'s evaluation: start_layer=1, "
                             "LRP rules=orig, AR unclamped, the papers' weights, resize without crop, q-sample noise, "
                             "learned variance) | re-fvit (chefer2021 + the [Re] code's DDS and attack choices)")
NOISE = typer.Option("paper", "--noise", help="DDS noisy input: paper (sqrt(abar)(2(x+delta)-1)) | q-sample (Carlini's code)")
VARIANCE = typer.Option("auto", "--variance", help="ancestral reverse-step variance: auto (learned when the denoiser "
                                                  "predicts it) | learned | fixed-small")
IMAGE_RESIZE = typer.Option(None, "--image-resize", help="imagenet-val images: crop (default) | exact (no crop, Chefer)")


def _linf(kw: dict) -> bool:
    """Whether the command's radii (--eps, --radii) are l_inf ones: explanation-attack's --norm, or
    the norm of the --attack."""
    if "norm" in kw:
        return str(kw["norm"]).lower() in ("linf", "l_inf", "inf")
    name = kw.get("attack")
    if not name or name.lower() in ("none", "off"):
        return False
    from fvit.attacks import get_attack

    return get_attack(name, 0.0).norm == "linf"


def _attack(kw: dict):
    """The --attack / --eps / --steps / --step-size options as an AttackSpec (None: 'none' / 'off')."""
    from fvit.attacks.spec import AttackSpec
    from fvit.cli.common import number

    name = kw.get("attack")
    if not name or name.lower() in ("none", "off"):
        return None
    step = kw.get("step_size")
    step = number(step, "--step-size") if step and any(c.isdigit() for c in step) else step
    return AttackSpec(name, number(kw.get("eps") or "8/255", "--eps"), kw.get("steps"), step)


def _compare(kw: dict):
    """explanation-attack's --compare: the classifier attack with its own defaults (step eps/4)."""
    from fvit.attacks.spec import AttackSpec

    name = kw.get("attack")
    if not name or name.lower() in ("none", "off"):
        return None
    return AttackSpec(name, 8 / 255, None, "scaled" if name.startswith("pgd") else None)


def _numbers(values, option: str) -> tuple[float, ...]:
    from fvit.cli.common import number

    return tuple(number(v, option) for v in values)


def _params(experiment: str, kw: dict):
    """The experiment's own Params from its options (strings parsed here)."""
    from fvit.attacks.spec import ExplanationAttackSpec
    from fvit.bench.ablation import AblationParams
    from fvit.bench.explanation_attack import ExplanationAttackParams
    from fvit.bench.perturbation import PerturbationParams
    from fvit.bench.segmentation import SegmentationParams
    from fvit.bench.sensitivity import SensitivityParams
    from fvit.cli.common import number

    if experiment == "segmentation":
        return SegmentationParams(topk=kw["topk"], figure=kw["figure"])
    if experiment == "perturbation":
        return PerturbationParams(radii=_numbers(kw["radii"], "--radii"), only_correct=kw["only_correct"])
    if experiment == "ablation":
        return AblationParams(variants=tuple(kw["variants"]))
    if experiment == "sensitivity":
        return SensitivityParams(sigmas=_numbers(kw["sigmas"], "--sigmas"), radii=_numbers(kw["radii"], "--radii"))
    if experiment == "frontier":
        from fvit.bench.frontier import FrontierParams
        from fvit.certify import CertifyConfig

        cert = CertifyConfig(k=kw["k"], n0=kw["cert_n0"], n=kw["cert_samples"], alpha=kw["alpha"])
        return FrontierParams(sigmas=_numbers(kw["sigmas"], "--sigmas"), fusions=tuple(kw["fusions"]),
                              samples=tuple(kw["samples_grid"]), eps=number(kw["eps"], "--eps"),
                              spec=_explanation_spec(kw), certify=cert,
                              cert_radii=_numbers(kw["cert_radii"], "--cert-radii"))
    return ExplanationAttackParams(radii=_numbers(kw["radii"], "--radii"), spec=_explanation_spec(kw))


def _explanation_spec(kw: dict):
    """The explanation attacks' options as an ExplanationAttackSpec."""
    from fvit.attacks.spec import ExplanationAttackSpec
    from fvit.cli.common import number

    step = number(kw["step_size"], "--step-size") if kw.get("step_size") else None
    return ExplanationAttackSpec(objectives=tuple(kw["objectives"]), norm=kw.get("norm", "linf"),
                                 steps=ExplanationAttackSpec.steps if kw.get("steps") is None else kw["steps"],
                                 step_size=step, k=kw["k"], keep_weight=kw.get("keep_weight", 1.0), eot=kw["eot"],
                                 attack_samples=kw["attack_samples"], surrogate=kw.get("surrogate", 10.0),
                                 target_map=kw.get("target_map", "roll"), schedule=kw.get("schedule", "apgd"),
                                 restarts=kw.get("restarts", 0), suite=kw.get("suite", True),
                                 warm_start=kw.get("warm_start", True))


#: Option (keyword) -> the setting path it fills, for `BenchSettings.given` (what a preset must
#: not override); explanation-attack's --steps / --step-size / --compare are not the classifier
#: attack's (`_compare`).
OPTION_PATHS = {"model": "model.name", "image_resize": "data.image_resize", "fuse": "methods.fuse",
                "denoiser": "dds.denoiser", "sigma": "dds.sigma", "samples": "dds.samples", "denoise": "dds.denoise",
                "mapping": "dds.mapping", "noise": "dds.noise", "variance": "dds.variance", "attack": "attack.name",
                "eps": "attack.eps", "steps": "attack.steps", "step_size": "attack.step_size"}


def given_paths(experiment: str, typed, method_texts) -> tuple[str, ...]:
    """The setting paths the user set: the options ``typed`` (keyword names) through `OPTION_PATHS`,
    and ``methods.I.PARAM`` for every parameter typed in method spec I (even at its default)."""
    from fvit.cli.common import method_specs, typed_parameters

    skip = {"attack", "steps", "step_size"} if experiment == "explanation-attack" else set()
    paths = [OPTION_PATHS[k] for k in typed if k in OPTION_PATHS and k not in skip]
    specs = method_specs(",".join(method_texts or []))
    paths += [f"methods.{i}.{key}" for i, spec in enumerate(specs) for key in typed_parameters(spec)]
    return tuple(paths)


def typed_options(ctx, kw: dict) -> set[str]:
    """The keyword names of the options typed on the command line (or set from the environment),
    not left at their defaults, from the command's typer context (None: none typed)."""
    if ctx is None:
        return set()
    sources = {k: ctx.get_parameter_source(k) for k in kw}
    return {k for k, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")}


def bench_settings(experiment: str, kw: dict, typed=()):
    """`BenchSettings` from a command's options: the one place where `fvit bench` parses strings.
    ``typed``: the keyword names of the options the user typed (their values beat any preset)."""
    from fvit.bench.engine import needs_dds, resolve_settings
    from fvit.bench.settings import DDS_MODES, BenchSettings, CostSpec, DataSpec, MethodsSpec, ModelSpec, RunSpec
    from fvit.cli.common import FvitError, parse_methods, sigma_value
    from fvit.dds import DDSConfig

    mode = kw.get("dds_mode") or ("both" if kw.get("denoiser") else "off")
    if mode not in DDS_MODES:
        raise FvitError(f"dds must be one of {', '.join(DDS_MODES)}, got {mode!r}", params=("dds",))
    method_texts = kw.get("methods") or ["transformer_attribution"]
    methods = MethodsSpec(methods=tuple(parse_methods(",".join(method_texts))),
                          dds_mode=mode, fuse=kw.get("fuse", "max-drop10"), target=kw.get("target", "prediction"))
    settings = resolve_settings(BenchSettings(
        experiment, out=Path(kw["out"]),
        model=(ModelSpec(name=kw["model"], checkpoint=world.world_classifier_path(kw["model"], kw["seed"]),
                         pretrained=False) if world.is_world(kw["model"]) else
               ModelSpec(name=kw["model"], checkpoint=kw.get("checkpoint"), pretrained=kw["pretrained"])),
        data=DataSpec(spec=kw["data"], limit=kw.get("limit"), image_resize=kw.get("image_resize")),
        run=RunSpec(seed=kw["seed"], batch_size=kw["batch_size"], device=kw.get("device"), progress=kw["progress"]),
        methods=methods,
        attack=_compare(kw) if experiment in ("explanation-attack", "frontier") else _attack(kw),
        params=_params(experiment, kw), protocol=kw.get("protocol", "default"),
        cost=CostSpec(kw["country"], kw.get("carbon_intensity")) if kw.get("cost") else None,
        given=given_paths(experiment, typed, method_texts)))
    if not needs_dds(settings):
        return settings
    return settings.replace(dds=DDSConfig(
        denoiser=world.denoiser_spec(kw.get("denoiser"), kw["seed"]), sigma=sigma_value(kw.get("sigma") or "8/255"),
        samples=kw["samples"], denoise=kw["denoise"], mapping=kw["mapping"], noise=kw.get("noise", "paper"),
        variance=kw.get("variance", "auto"), seed=kw["seed"]))


def _run_world(settings, kw: dict) -> dict:
    """`run_experiment` with the demo world's models (`fvit.cli.world`): trained on first use, the
    classifier handed over loaded (torchrun: every rank loads it), the denoiser from its cache."""
    from fvit.bench.distributed import init_distributed
    from fvit.bench.engine import run_experiment

    dist = init_distributed()
    try:
        if not dist.is_main:
            dist.barrier()  # rank 0 trains what is missing; the others then load it
        net = world.prepare(kw["model"], kw.get("denoiser"), kw["seed"], device=dist.device(settings.run.device),
                            progress=settings.run.progress and dist.is_main,
                            log=lambda m: typer.echo(m, err=True) if dist.is_main else None)
        if dist.is_main:
            dist.barrier()
        return run_experiment(settings, model=net, dist=dist, discard_damaged=kw.get("discard_damaged", False))
    finally:
        dist.close()


def _run(experiment: str, ctx=None, **kw) -> None:
    from fvit.bench.engine import run_experiment
    from fvit.cli.common import OPTION_FLAGS, exit_on_error

    # a library error naming a setting (``params``) gets the command's option for it: every keyword of
    # the command is its option (topk -> --topk, keep_weight -> --keep-weight, ...), except those the
    # shared table spells out (checkpoint -> --checkpoint PATH, pretrained -> --no-pretrained)
    flags = {name: "--" + name.replace("_", "-") for name in kw
             if name not in ("dds_mode", "attack") and name not in OPTION_FLAGS}
    flags.update(dds_mode="--dds", attack="--compare" if experiment == "explanation-attack" else "--attack")
    with exit_on_error(flags=flags):
        check_options(kw)
        world.check_world_options(kw["model"], kw.get("checkpoint"), kw["seed"], kw.get("denoiser"))
        settings = bench_settings(experiment, kw, typed_options(ctx, kw))
        if world.is_world(kw["model"]) or world.is_world(kw.get("denoiser")):
            out = _run_world(settings, kw)
        else:
            out = run_experiment(settings, discard_damaged=kw.get("discard_damaged", False))
    if "files" in out:
        report = Path(kw["out"]) / "report.md"
        typer.echo(report.read_text())
        typer.echo(f"wrote {', '.join(out['files'])}")


@bench_app.command("segmentation")
def segmentation(
    ctx: typer.Context, data: str = DATA, out: str = OUT, model: str = MODEL, checkpoint: Optional[str] = CHECKPOINT,
    pretrained: bool = PRETRAINED,
    methods: str = typer.Option("raw_attention,rollout,gradcam,lrp,transformer_attribution", "--methods"),
    dds: Optional[str] = DDS_MODE,
    denoiser: Optional[str] = DENOISER, sigma: str = SIGMA, samples: int = SAMPLES, denoise: str = DENOISE,
    mapping: str = MAPPING, fuse: str = FUSE, attack: str = ATTACK, eps: str = EPS,
    steps: Optional[int] = STEPS, step_size: Optional[str] = STEP_SIZE,
    topk: int = typer.Option(0, "--topk", help="also top-k overlap of clean vs attacked patch maps (0 = off; doubles cost)"),
    target: str = TARGET,
    figure: int = typer.Option(4, "--figure", help="heat-map grid of the first N images (0 = none)"),
    cost: bool = COST, country: str = COUNTRY, carbon_intensity: Optional[float] = CARBON_INTENSITY,
    limit: Optional[int] = LIMIT, seed: int = SEED, batch_size: int = BATCH, device: Optional[str] = DEVICE,
    progress: bool = PROGRESS, discard_damaged: bool = DISCARD, protocol: str = PROTOCOL, noise: str = NOISE, variance: str = VARIANCE,
    image_resize: Optional[str] = IMAGE_RESIZE,
) -> None:
    """Chefer et al.'s ImageNet-segmentation test under attack (FViT Table 1, [Re] Tables 1, 3, 5)."""
    _run("segmentation", ctx, data=data, out=out, model=model, checkpoint=checkpoint, pretrained=pretrained,
         methods=_csv(methods), dds_mode=dds, denoiser=denoiser, sigma=sigma, samples=samples, denoise=denoise,
         mapping=mapping, fuse=fuse, attack=attack, eps=eps, steps=steps, step_size=step_size, topk=topk,
         target=target, figure=figure, cost=cost, country=country, carbon_intensity=carbon_intensity,
         limit=limit, seed=seed, batch_size=batch_size, device=device, progress=progress, discard_damaged=discard_damaged,
         protocol=protocol, noise=noise, variance=variance, image_resize=image_resize)


@bench_app.command("perturbation")
def perturbation(
    ctx: typer.Context, data: str = DATA, out: str = OUT, model: str = MODEL, checkpoint: Optional[str] = CHECKPOINT,
    pretrained: bool = PRETRAINED,
    methods: str = typer.Option("raw_attention,rollout,transformer_attribution,attribution_rollout", "--methods"),
    dds: Optional[str] = DDS_MODE,
    denoiser: Optional[str] = DENOISER, sigma: str = SIGMA, samples: int = SAMPLES, denoise: str = DENOISE,
    mapping: str = MAPPING, fuse: str = FUSE, attack: str = ATTACK,
    steps: Optional[int] = STEPS, step_size: Optional[str] = STEP_SIZE,
    radii: str = typer.Option("0,2/255,4/255,8/255,16/255,32/255", "--radii", help="attack radii (0 = clean)"),
    only_correct: bool = typer.Option(False, "--only-correct/--all-images",
                                      help="AUC over correctly classified images only ([Re]); default all (Chefer)"),
    target: str = TARGET, cost: bool = COST, country: str = COUNTRY,
    carbon_intensity: Optional[float] = CARBON_INTENSITY,
    limit: Optional[int] = LIMIT, seed: int = SEED, batch_size: int = BATCH, device: Optional[str] = DEVICE,
    progress: bool = PROGRESS, discard_damaged: bool = DISCARD, protocol: str = PROTOCOL, noise: str = NOISE, variance: str = VARIANCE,
    image_resize: Optional[str] = IMAGE_RESIZE,
) -> None:
    """Positive / negative perturbation AUC against attack radius (FViT Fig. 3a-b, [Re] Fig. 1)."""
    _run("perturbation", ctx, data=data, out=out, model=model, checkpoint=checkpoint, pretrained=pretrained,
         methods=_csv(methods), dds_mode=dds, denoiser=denoiser, sigma=sigma, samples=samples, denoise=denoise,
         mapping=mapping, fuse=fuse, attack=attack, steps=steps, step_size=step_size, radii=_csv(radii),
         only_correct=only_correct, target=target, cost=cost, country=country, carbon_intensity=carbon_intensity,
         limit=limit, seed=seed, batch_size=batch_size, device=device, progress=progress, discard_damaged=discard_damaged,
         protocol=protocol, noise=noise, variance=variance, image_resize=image_resize)


@bench_app.command("ablation")
def ablation(
    ctx: typer.Context, data: str = DATA, out: str = OUT, model: str = MODEL, checkpoint: Optional[str] = CHECKPOINT,
    pretrained: bool = PRETRAINED,
    method: str = typer.Option("transformer_attribution", "--method", "--methods"),
    variants: str = typer.Option("full,no_smoothing,no_denoising,no_both", "--variants"),
    denoiser: Optional[str] = DENOISER, sigma: str = SIGMA, samples: int = SAMPLES, denoise: str = DENOISE,
    mapping: str = MAPPING, fuse: str = FUSE, attack: str = ATTACK, eps: str = EPS,
    steps: Optional[int] = STEPS, step_size: Optional[str] = STEP_SIZE,
    limit: Optional[int] = LIMIT, seed: int = SEED, batch_size: int = BATCH, device: Optional[str] = DEVICE,
    progress: bool = PROGRESS, discard_damaged: bool = DISCARD, protocol: str = PROTOCOL, noise: str = NOISE, variance: str = VARIANCE,
    image_resize: Optional[str] = IMAGE_RESIZE,
) -> None:
    """DDS ablation under attack (FViT Table 2): full, -smoothing, -denoising, -both."""
    _run("ablation", ctx, data=data, out=out, model=model, checkpoint=checkpoint, pretrained=pretrained,
         methods=[method], variants=_csv(variants), denoiser=denoiser, sigma=sigma, samples=samples,
         denoise=denoise, mapping=mapping, fuse=fuse, attack=attack, eps=eps, steps=steps, step_size=step_size,
         limit=limit, seed=seed, batch_size=batch_size, device=device, progress=progress, discard_damaged=discard_damaged,
         protocol=protocol, noise=noise, variance=variance, image_resize=image_resize)


@bench_app.command("sensitivity")
def sensitivity(
    ctx: typer.Context, data: str = DATA, out: str = OUT, model: str = MODEL, checkpoint: Optional[str] = CHECKPOINT,
    pretrained: bool = PRETRAINED,
    sigmas: str = typer.Option("4/255,6/255,8/255,10/255,12/255", "--sigmas"),
    radii: str = typer.Option("0,2/255,4/255,6/255,8/255,10/255", "--radii"),
    denoiser: Optional[str] = DENOISER, samples: int = SAMPLES, denoise: str = DENOISE,
    mapping: str = MAPPING, attack: str = ATTACK, steps: Optional[int] = STEPS,
    step_size: Optional[str] = STEP_SIZE,
    limit: Optional[int] = LIMIT, seed: int = SEED, batch_size: int = BATCH, device: Optional[str] = DEVICE,
    progress: bool = PROGRESS, discard_damaged: bool = DISCARD, protocol: str = PROTOCOL, noise: str = NOISE, variance: str = VARIANCE,
    image_resize: Optional[str] = IMAGE_RESIZE,
) -> None:
    """Robust accuracy of the smoothed classifier per sigma and attack radius (FViT Fig. 3c)."""
    _run("sensitivity", ctx, data=data, out=out, model=model, checkpoint=checkpoint, pretrained=pretrained,
         sigmas=_csv(sigmas), radii=_csv(radii), denoiser=denoiser, samples=samples, denoise=denoise,
         mapping=mapping, attack=attack, steps=steps, step_size=step_size, limit=limit, seed=seed,
         batch_size=batch_size, device=device, progress=progress, discard_damaged=discard_damaged, protocol=protocol, noise=noise,
         variance=variance, image_resize=image_resize)


def _optional_float(text: str, option: str) -> float | None:
    from fvit.utils import parse_number

    return None if text.strip().lower() in ("none", "off", "exact") else parse_number(text, option)


@bench_app.command("explanation-attack")
def explanation_attack(
    ctx: typer.Context, data: str = DATA, out: str = OUT, model: str = MODEL, checkpoint: Optional[str] = CHECKPOINT,
    pretrained: bool = PRETRAINED,
    methods: str = typer.Option("raw_attention,rollout,gradcam,lrp,transformer_attribution,attribution_rollout",
                                "--methods"),
    dds: Optional[str] = DDS_MODE,
    denoiser: Optional[str] = DENOISER, sigma: str = SIGMA, samples: int = SAMPLES, denoise: str = DENOISE,
    mapping: str = MAPPING, fuse: str = FUSE,
    objectives: str = OBJECTIVES,
    radii: str = typer.Option("2/255,4/255,8/255", "--radii", help="attack radii (> 0)"),
    norm: str = typer.Option("linf", "--norm", help="linf | l2 (the explanation attacks' threat model)"),
    steps: Optional[int] = EXPL_STEPS, schedule: str = SCHEDULE, restarts: int = RESTARTS, suite: bool = SUITE,
    warm_start: bool = WARM_START,
    step_size: Optional[str] = typer.Option(None, "--step-size", help="explanation-attack step (default eps/4)"),
    k: int = typer.Option(10, "--k", help="top-k patches: attacked by topk and reported as the overlap"),
    keep_weight: float = typer.Option(1.0, "--keep-weight", help="weight of the keep-the-prediction margin penalty"),
    eot: int = typer.Option(1, "--eot", help="DDS draws per attack step (expectation over the DDS noise)"),
    attack_samples: Optional[int] = typer.Option(None, "--attack-samples",
                                                 help="DDS samples per draw inside the attack (default --samples)"),
    surrogate: str = typer.Option("10", "--surrogate", help="softplus sharpness replacing the maps' ReLU/clamp "
                                                            "during the attack, or 'none' (exact)"),
    target_map: str = typer.Option("roll", "--target-map", help="target of target-map: roll (clean map shifted "
                                                                "by half the grid) | other (next image's map)"),
    attack: str = typer.Option("pgd", "--compare", help="classifier attack reported alongside (the papers'): "
                                                       "pgd | pgd-l2 | fgsm | none"),
    limit: Optional[int] = LIMIT, seed: int = SEED, batch_size: int = BATCH, device: Optional[str] = DEVICE,
    progress: bool = PROGRESS, discard_damaged: bool = DISCARD,
) -> None:
    """Attacks on the explanation (top-k, target map; adaptive through DDS) vs the classifier PGD."""
    _run("explanation-attack", ctx, data=data, out=out, model=model, checkpoint=checkpoint,
         pretrained=pretrained, methods=_csv(methods), dds_mode=dds, denoiser=denoiser, sigma=sigma, samples=samples,
         denoise=denoise, mapping=mapping, fuse=fuse, objectives=_csv(objectives), radii=_csv(radii), norm=norm,
         steps=steps, schedule=schedule, restarts=restarts, suite=suite, warm_start=warm_start, step_size=step_size, k=k,
         keep_weight=keep_weight, eot=eot, attack_samples=attack_samples,
         surrogate=_optional_float(surrogate, "--surrogate"), target_map=target_map, attack=attack,
         limit=limit, seed=seed, batch_size=batch_size, device=device, progress=progress, discard_damaged=discard_damaged)


@bench_app.command("frontier")
def frontier(
    ctx: typer.Context, data: str = DATA, out: str = OUT, model: str = MODEL, checkpoint: Optional[str] = CHECKPOINT,
    pretrained: bool = PRETRAINED,
    methods: str = typer.Option("raw_attention,rollout,gradcam", "--methods", help="plain methods (every cell "
                                                                               "wraps them in its DDS)"),
    denoiser: Optional[str] = DENOISER,
    sigmas: str = typer.Option("8/255,1/16,1/8,1/4,1/2", "--sigmas", help="DDS noise stds (pixel units)"),
    fusions: str = typer.Option("max-drop10,mean", "--fusions", help="fusions of the m maps"),
    samples: str = typer.Option("2", "--samples", help="DDS samples per image: one count or a list (the grid's m)"),
    denoise: str = DENOISE, mapping: str = MAPPING,
    eps: str = typer.Option("8/255", "--eps", help="l_inf radius of both attacks"),
    objectives: str = OBJECTIVES, steps: Optional[int] = EXPL_STEPS, schedule: str = SCHEDULE,
    restarts: int = RESTARTS,
    step_size: Optional[str] = typer.Option(None, "--step-size", help="explanation-attack step (constant schedule)"),
    k: int = typer.Option(10, "--k", help="top-k patches (attacked, reported, certified)"),
    eot: int = typer.Option(1, "--eot", help="DDS draws per attack step"),
    attack_samples: Optional[int] = typer.Option(1, "--attack-samples", help="DDS samples per draw inside the attacks"),
    attack: str = typer.Option("pgd", "--attack", help="classifier attack run adaptively through DDS (none: skip)"),
    cert_samples: int = typer.Option(128, "--cert-samples", help="certificate estimation samples n (0: no certificates)"),
    cert_n0: int = typer.Option(16, "--cert-n0", help="certificate selection samples n0"),
    alpha: float = typer.Option(0.001, "--alpha", help="certificate failure probability"),
    cert_radii: str = typer.Option("0,0.05,0.1,0.25,0.5", "--cert-radii", help="l_2 radii (pixel units) of the "
                                                                              "certified accuracy"),
    limit: Optional[int] = LIMIT, seed: int = SEED, batch_size: int = BATCH, device: Optional[str] = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """The smoothing frontier: sigma x fusion x samples, per method: clean faithfulness, attacked overlap,
    smoothed accuracy (adaptive attack) and certificates, with a Pareto figure."""
    grid = [int(v) for v in _csv(samples)] if all(v.isdigit() for v in _csv(samples)) else None
    if not grid:
        from fvit.cli.common import exit_on_error, FvitError

        with exit_on_error():
            raise FvitError(f"--samples: expected positive integers, got {samples!r}")
    _run("frontier", ctx, data=data, out=out, model=model, checkpoint=checkpoint, pretrained=pretrained,
         methods=_csv(methods), dds_mode="off", denoiser=denoiser, sigma="8/255", samples=grid[0],
         samples_grid=grid, denoise=denoise, mapping=mapping, sigmas=_csv(sigmas), fusions=_csv(fusions), eps=eps,
         objectives=_csv(objectives), steps=steps, schedule=schedule, restarts=restarts, step_size=step_size,
         k=k, eot=eot, attack_samples=attack_samples, attack=attack, cert_samples=cert_samples, cert_n0=cert_n0,
         alpha=alpha, cert_radii=_csv(cert_radii), limit=limit, seed=seed, batch_size=batch_size,
         device=device, progress=progress)


def _register_certify() -> None:
    try:
        from fvit.cli import bench_certify
    except ModuleNotFoundError as e:  # written by another engineer; absent until integrated
        if e.name != "fvit.cli.bench_certify":
            raise
        return
    bench_certify.register_bench(bench_app)


_register_certify()


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
