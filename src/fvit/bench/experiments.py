"""The papers' experiments as in-memory calls: ``run_segmentation(model, dataset, methods, ...)``
and friends, each a thin wrapper that builds the `BenchSettings` of one entry of the experiment
engine (`fvit.bench.engine`) and runs it on the given objects (no files; rows in ``store`` when
one is given). The computations, rows and summaries live in the entry files
(`fvit.bench.segmentation`, `.perturbation`, `.ablation`, `.sensitivity`, `.explanation_attack`,
`.certify`); the shared protocol choices are documented in `fvit.bench.ops`.

Method items: names ('ta', 'rollout+dds'), method instances (key: their spec, e.g.
'rollout:start_layer=1') or ``(instance, with_dds)`` pairs; when a DDS is given and no item asks
for DDS explicitly, every method runs both without and with DDS ([Re] Table 3).

`AttackSpec` / `ExplanationAttackSpec` live in `fvit.attacks.spec` (re-exported here).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch.utils.data import Dataset

from fvit.attacks.spec import AttackSpec, ExplanationAttackSpec, as_attack
from fvit.bench.ablation import ABLATION_VARIANTS, AblationParams, ablation_dds, summarise_ablation
from fvit.bench.distributed import DistContext
from fvit.bench.engine import make_context, method_settings, run_entry
from fvit.bench.explanation_attack import (
    CLASSIFIER_ATTACK,
    CLEAN_ATTACK,
    ExplanationAttackParams,
    summarise_explanation_attack,
)
from fvit.bench.perturbation import PerturbationParams, summarise_perturbation
from fvit.bench.segmentation import SegmentationParams, summarise_segmentation
from fvit.bench.sensitivity import SensitivityParams
from fvit.bench.settings import TARGET_MODES, BenchSettings, DataSpec, MethodsSpec, ModelSpec, RunSpec
from fvit.bench.store import ResultsStore
from fvit.errors import FvitError
from fvit.keys import CLEAN_SUFFIX, DDS_SUFFIX
from fvit.metrics.perturbation import DEFAULT_FRACTIONS

MethodItem = Any  # a name ('ta', 'ta+dds'), an ExplanationMethod, or (ExplanationMethod, with_dds)


def _settings(experiment: str, model, methods: Sequence[MethodItem], dds, attack, params, *, batch_size: int,
              limit: int | None, seed: int, progress: bool, target: str = "prediction",
              fuse: str = "max-drop10") -> BenchSettings:
    """The in-memory `BenchSettings` of a wrapper call (no output folder)."""
    from fvit.dds import DDSConfig

    config = getattr(dds, "config", None)
    return BenchSettings(
        experiment, out=None, model=ModelSpec(name=str(getattr(model, "name", None) or "in-memory")),
        data=DataSpec(spec="in-memory", limit=limit), run=RunSpec(seed=seed, batch_size=batch_size, progress=progress),
        methods=MethodsSpec(methods=tuple(methods), dds_mode="both" if dds is not None else "off", fuse=fuse,
                            target=target),
        dds=config if isinstance(config, DDSConfig) else None, attack=as_attack(attack), params=params)


def _run(settings: BenchSettings, model, dataset, dds, store, ctx, max_batches) -> dict:
    run_ctx = make_context(settings, model=model, dataset=dataset, dds=dds, dist=ctx)
    return run_entry(run_ctx, store=store, max_batches=max_batches)


def run_segmentation(model, dataset: Dataset, methods: Sequence[MethodItem], *, dds=None, attack=None,
                     store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None,
                     seed: int = 0, progress: bool = True, topk: int = 0, target: str = "prediction",
                     fuse: str = "max-drop10", ctx: DistContext | None = None,
                     max_batches: int | None = None, with_clean: bool = False) -> dict[str, dict]:
    """Entry 'segmentation' (`fvit.bench.segmentation`): {key: {pixel_acc, miou, map, n, clean_acc,
    robust_acc, agreement, seconds, [topk_overlap, k]}}, plus '<key>@clean' with ``with_clean``."""
    s = _settings("segmentation", model, methods, dds, attack, SegmentationParams(topk=topk, with_clean=with_clean),
                  batch_size=batch_size, limit=limit, seed=seed, progress=progress, target=target, fuse=fuse)
    return _run(s, model, dataset, dds, store, ctx, max_batches)


def run_perturbation(model, dataset: Dataset, methods: Sequence[MethodItem], *, dds=None,
                     radii: Sequence[float] = (0, 8 / 255), attack="pgd", positive: bool = True, negative: bool = True,
                     only_correct: bool = False, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None, seed: int = 0,
                     progress: bool = True, target: str = "prediction", fuse: str = "max-drop10",
                     ctx: DistContext | None = None, max_batches: int | None = None) -> dict[str, dict[str, dict]]:
    """Entry 'perturbation' (`fvit.bench.perturbation`): {key: {radius_label: {pos_auc, neg_auc, acc, n}}}."""
    params = PerturbationParams(radii=tuple(radii), positive=positive, negative=negative, only_correct=only_correct,
                                fractions=tuple(fractions))
    s = _settings("perturbation", model, methods, dds, attack, params, batch_size=batch_size, limit=limit, seed=seed,
                  progress=progress, target=target, fuse=fuse)
    return _run(s, model, dataset, dds, store, ctx, max_batches)


def run_ablation(model, dataset: Dataset, method: MethodItem = "transformer_attribution", *, dds, attack="pgd",
                 variants: Sequence[str] = ABLATION_VARIANTS, store: ResultsStore | None = None,
                 batch_size: int = 8, limit: int | None = None, seed: int = 0, progress: bool = True,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, fuse: str = "max-drop10",
                 ctx: DistContext | None = None, max_batches: int | None = None) -> dict[str, dict]:
    """Entry 'ablation' (`fvit.bench.ablation`): {variant: {robust_acc, reference, n, pos_auc, neg_auc,
    seconds, [pixel_acc, miou, map]}}."""
    if dds is None:
        raise FvitError("the ablation needs a DDS (a denoiser)")
    params = AblationParams(variants=tuple(variants), fractions=tuple(fractions))
    s = _settings("ablation", model, [method], None, attack, params, batch_size=batch_size, limit=limit, seed=seed,
                  progress=progress, fuse=fuse)
    s = s.replace(dds=getattr(dds, "config", None) if s.dds is None else s.dds)
    return _run(s, model, dataset, dds, store, ctx, max_batches)


def run_sensitivity(model, dataset: Dataset, *, dds=None, sigmas: Sequence[float] = (4 / 255, 8 / 255),
                    radii: Sequence[float] = (0, 2 / 255, 4 / 255, 8 / 255), attack="pgd",
                    store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None, seed: int = 0,
                    progress: bool = True, ctx: DistContext | None = None,
                    max_batches: int | None = None) -> dict[str, dict[str, float]]:
    """Entry 'sensitivity' (`fvit.bench.sensitivity`): {"baseline" | sigma_label: {radius_label: accuracy}}."""
    if dds is None:
        raise FvitError("the sensitivity analysis needs a DDS")
    s = _settings("sensitivity", model, ["transformer_attribution"], None, attack,
                  SensitivityParams(sigmas=tuple(sigmas), radii=tuple(radii)), batch_size=batch_size, limit=limit,
                  seed=seed, progress=progress)
    return _run(s, model, dataset, dds, store, ctx, max_batches)


def run_explanation_attack(model, dataset: Dataset, methods: Sequence[MethodItem], *, dds=None,
                           radii: Sequence[float] = (2 / 255, 4 / 255, 8 / 255),
                           spec: ExplanationAttackSpec | None = None, compare="pgd",
                           store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None,
                           seed: int = 0, progress: bool = True, fuse: str = "max-drop10",
                           ctx: DistContext | None = None, max_batches: int | None = None) -> dict[str, dict]:
    """Entry 'explanation-attack' (`fvit.bench.explanation_attack`): {"methods": {key: {attack:
    {radius_label: {...}}}}, "protocol": {...}}; ``compare``: the classifier attack (None: none)."""
    params = ExplanationAttackParams(radii=tuple(radii), spec=spec or ExplanationAttackSpec())
    s = _settings("explanation-attack", model, methods, dds, compare, params, batch_size=batch_size, limit=limit,
                  seed=seed, progress=progress, fuse=fuse)
    return _run(s, model, dataset, dds, store, ctx, max_batches)


def run_frontier(model, dataset: Dataset, methods: Sequence[MethodItem], *, dds, params=None, attack="pgd",
                 store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None, seed: int = 0,
                 progress: bool = True, ctx: DistContext | None = None, max_batches: int | None = None) -> dict:
    """Entry 'frontier' (`fvit.bench.frontier`): the smoothing frontier over sigma x fusion x m.
    ``methods``: plain method names (every cell wraps them in its own DDS); ``params``: a
    `fvit.bench.frontier.FrontierParams` (None: its defaults); ``attack``: the classifier attack
    run adaptively through each cell's DDS."""
    from fvit.bench.frontier import FrontierParams

    s = _settings("frontier", model, methods, dds, attack, params or FrontierParams(), batch_size=batch_size,
                  limit=limit, seed=seed, progress=progress)
    s = s.replace(methods=s.methods.replace(dds_mode="off"))
    return _run(s, model, dataset, dds, store, ctx, max_batches)


# ------------------------------------------------------------------------------------------------
# Method resolution (kept for callers that build explainers themselves, e.g. the demo's figure)
# ------------------------------------------------------------------------------------------------

def resolve_methods(methods: Sequence[MethodItem], dds: Any = None) -> dict[str, Any]:
    """Method key -> method instance (see module doc for the '+dds' twins)."""
    spec = MethodsSpec(methods=tuple(methods), dds_mode="both" if dds is not None else "off")
    resolved = spec.resolve()
    wanted = [k for k, (_, w) in resolved.items() if w]
    if wanted and dds is None:
        raise FvitError(f"methods {', '.join(wanted)} need a DDS (a denoiser); none was given")
    return {k: inst for k, (inst, _) in resolved.items()}


def method_keys(methods: Sequence[MethodItem], dds: Any = None) -> list[str]:
    """The result keys of `resolve_methods`."""
    return list(resolve_methods(methods, dds))


def build_explainers(keys: "Sequence[str] | Mapping[str, Any]", dds: Any = None, fuse: str = "max-drop10") -> dict:
    """Explainers per key: ``keys`` are keys ('rollout', 'ta+dds') or `resolve_methods`' mapping."""
    items = [(inst, k.endswith(DDS_SUFFIX)) for k, inst in keys.items()] if isinstance(keys, Mapping) else list(keys)
    spec = MethodsSpec(methods=tuple(items), fuse=fuse)
    from fvit.bench.engine import build_explainers as build

    return build(BenchSettings("segmentation", methods=spec), dds)[0]


__all__ = ["ABLATION_VARIANTS", "AttackSpec", "CLASSIFIER_ATTACK", "CLEAN_ATTACK", "CLEAN_SUFFIX",
           "ExplanationAttackSpec", "TARGET_MODES", "ablation_dds", "as_attack", "build_explainers",
           "method_keys", "method_settings", "resolve_methods", "run_ablation",
           "run_explanation_attack", "run_perturbation", "run_segmentation", "run_sensitivity",
           "summarise_ablation", "summarise_explanation_attack", "summarise_perturbation",
           "summarise_segmentation"]
