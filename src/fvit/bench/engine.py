"""The experiment engine: every benchmark (and the demo's parts) is an `Experiment` entry in one
registry, run by one loop with one results store, one timer, one JSON sanitiser and one report
writer.

An entry (one file in `fvit.bench`, one import line in `fvit/bench/__init__.py`) declares

- ``name`` (the `fvit bench NAME` command and ``BenchSettings.experiment``), ``Params`` (its own
  frozen `fvit.settings.Settings` dataclass; ``Params.unkeyed`` names the fields that do not
  change a row: row keys such as radii, or report-only choices), ``needs_dds``;

and implements

- ``settings(ctx) -> list[str]``: the row settings of the run (a row is keyed by (image id,
  setting); `fvit.keys` names them);
- ``compute(batch, bctx, ctx) -> list[dict]``: the rows of one batch (every setting, every image);
- ``summarise(out: RunOutput, ctx) -> dict``: the results, from the rows only;
- ``tables(results, ctx) -> [(stem, Table)]`` and ``figures(results, ctx, out_dir) -> [Path]``.

`run_experiment(settings)` loads what it is not given (model, data set, DDS), opens the results
store in ``settings.out``, runs the rows through `fvit.bench.runner.run_rows` (resume, torchrun
sharding), summarises, and on rank 0 writes results.json (``settings.to_dict()`` whole, the resolved
DDS settings and method parameters), report.md, the tables and figures. `run_entry(entry, ctx)` is
the in-memory core (no files): it returns the results dict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fvit.bench.distributed import DistContext, init_distributed
from fvit.bench.runner import BatchContext, RunOutput, run_rows
from fvit.bench.settings import BenchSettings
from fvit.bench.store import ResultsStore
from fvit.errors import FvitError, InputError, UnknownNameError
from fvit.keys import DDS_SUFFIX
from fvit.registry import Registry
from fvit.settings import Settings, json_ready
from fvit.seeding import NOISE_RULE
from fvit.utils import check_output_file, module_device, write_text_atomic

#: The entries, in registration order: `fvit/bench/__init__.py` imports each entry's module (which
#: registers it with `register_experiment`), so every import of the engine sees them all.
EXPERIMENTS: Registry[type] = Registry("experiment")


@dataclass(frozen=True)
class NoParams(Settings):
    """An experiment without parameters of its own."""

    unkeyed: ClassVar[tuple[str, ...]] = ()


class Experiment:
    """Base class of the entries (see module doc). Entries are stateless: what a run builds once
    (explainers of DDS variants, sigma smoothers) goes into ``ctx.state`` in `prepare`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    needs_dds: ClassVar[bool] = False
    #: whether the run explains with ``settings.methods`` (``ctx.explainers``)
    uses_methods: ClassVar[bool] = True
    #: the attack used when ``settings.attack`` is None (None: no attack)
    default_attack: ClassVar[Any] = None
    #: whether ``settings.cost`` runs one measured pass per method key
    supports_cost: ClassVar[bool] = False
    #: whether a row depends on the batch it was computed in (randomness seeded per batch); False
    #: when every random draw is per image (DDS noise and the classifier attack's start keyed by
    #: the data-set id): the batch size then leaves the store's identity
    batch_seeded: ClassVar[bool] = True
    #: capacity of the DDS's `DenoiseMemo` (several methods explain one batch: one denoising pass);
    #: None: no memo
    memo: ClassVar[int | None] = 2

    def prepare(self, ctx: "RunContext") -> None:
        """Build what the run needs once (default: nothing)."""

    def settings(self, ctx: "RunContext") -> list[str]:
        raise NotImplementedError

    def compute(self, batch: dict, bctx: BatchContext, ctx: "RunContext") -> list[dict]:
        raise NotImplementedError

    def summarise(self, out: RunOutput, ctx: "RunContext") -> dict:
        raise NotImplementedError

    def tables(self, results: dict, ctx: "RunContext") -> list[tuple[str, Any]]:
        return []

    def figures(self, results: dict, ctx: "RunContext", out_dir: Path) -> list[Path]:
        return []

    def timings(self, results: dict, ctx: "RunContext") -> dict[str, float | None]:
        """Seconds per method key from the run's timers, for the cost table (default: none)."""
        return {}

    def resolved(self, ctx: "RunContext") -> dict:
        """Entry-specific resolved choices for results.json (default: none)."""
        return {}

    def files(self, results: dict, ctx: "RunContext", out_dir: Path) -> list[Path]:
        """Further files of the report (default: none)."""
        return []

    def check(self, results: dict, ctx: "RunContext") -> None:
        """Called after the outputs are written; may raise (certify: soundness violations)."""

    def store_config(self, settings: BenchSettings) -> dict:
        """What determines a row (a different value: a different experiment, refused by the store).
        Row keys (method lists, radii) are left out so that a run can be extended in the same
        folder; so are choices that only change the report. The image subset (``--limit``) is in."""
        settings = resolve_settings(settings)
        params = {k: v for k, v in settings.params.to_dict().items() if k not in type(settings.params).unkeyed}
        dds = None
        if needs_dds(settings) and settings.dds is not None:
            dds = {**settings.dds.to_dict(), "fuse": settings.methods.fuse,
                   "noise_rule": NOISE_RULE.replace("key", "data-set id")}
        attack = self.attack_of(settings)
        # batch_size: part of the identity only where a row depends on its batch (an entry with
        # per-batch seeds, or an attack that cannot draw per image: AutoAttack); with per-image DDS
        # noise and attack starts an image's row is the same in any batch, shard or world size.
        # limit: the id set (a --limit 12 run never reuses rows of a --limit 24 folder).
        batched = self.batch_seeded or (attack is not None and not attack.build(0, attack.eps or 1 / 255).per_image)
        return {"experiment": self.name, "model": settings.model.name, "checkpoint": settings.model.checkpoint,
                "pretrained": settings.model.pretrained if settings.model.checkpoint is None else None,
                "data": settings.data.spec, "limit": settings.data.limit,
                "image_resize": settings.data.image_resize, "seed": settings.run.seed,
                "batch_size": settings.run.batch_size if batched else None, "target": settings.methods.target, "dds": dds,
                "attack": attack.as_config() if attack is not None else None, "params": params}

    def attack_of(self, settings: BenchSettings):
        return settings.attack if settings.attack is not None else self.default_attack


def register_experiment(cls: type) -> type:
    """Class decorator: add an `Experiment` subclass to `EXPERIMENTS` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Experiment)) or not cls.name:
        raise FvitError(f"register_experiment: {cls!r} is not an Experiment subclass with a name")
    if not (dataclasses.is_dataclass(cls.Params) and issubclass(cls.Params, Settings)):
        raise FvitError(f"experiment {cls.name!r}: Params must be a frozen Settings dataclass")
    EXPERIMENTS.register(cls.name, cls)
    return cls


def get_experiment(name: str) -> type:
    """The entry class registered as ``name``; an unknown name lists the available ones."""
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise UnknownNameError(f"unknown experiment {name!r}; available: {', '.join(experiment_names())}",
                               params=("experiment",))
    return EXPERIMENTS.get(name)


def experiment_names() -> list[str]:
    """The registered entries' names, in registration order (fvit's own first)."""
    return [cls.name for _, cls in EXPERIMENTS.items()]


def resolve_settings(settings: BenchSettings) -> BenchSettings:
    """``settings`` checked against its entry: the experiment's registered name (an unknown one
    lists the available ones) and its ``Params`` (None: the entry's defaults; another entry's
    Params is an `InputError`). The settings themselves are plain values; the engine resolves."""
    entry = get_experiment(settings.experiment)
    params = entry.Params() if settings.params is None else settings.params
    if not isinstance(params, entry.Params):
        raise InputError(f"BenchSettings: params of {entry.name!r} must be {entry.Params.__name__}, got "
                         f"{type(params).__name__}", params=("params",))
    if entry.name == settings.experiment and params is settings.params:
        return settings
    return settings.replace(experiment=entry.name, params=params)


def needs_dds(settings: BenchSettings) -> bool:
    """Whether the run builds a DDS: its entry needs one, or a method key runs with DDS."""
    return get_experiment(settings.experiment).needs_dds or settings.methods.uses_dds


def require_dds(settings: BenchSettings, available: bool) -> None:
    """The one check that a run which needs a DDS (`needs_dds`) has one (``available``: a DDS or
    its settings), naming the method keys that need it."""
    if available or not needs_dds(settings):
        return
    wanted = [k for k, (_, w) in settings.methods.resolve().items() if w]
    what = f"methods {', '.join(wanted)} need" if wanted else f"the {settings.experiment} run needs"
    raise FvitError(f"{what} a DDS (a denoiser); none was given", params=("denoiser",))


# ------------------------------------------------------------------------------------------------
# The run context
# ------------------------------------------------------------------------------------------------

@dataclass
class RunContext:
    """What an entry's methods get: the settings, the loaded model / data set / DDS, the explainers
    built once from ``settings.methods`` (key -> explainer; ``methods``: key -> method instance),
    the attack, the distributed context, and ``state`` for the entry's own per-run objects."""

    settings: BenchSettings
    model: Any
    dataset: Any
    dds: Any = None
    explainers: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)
    attack: Any = None
    dist: DistContext = field(default_factory=DistContext)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self):
        return self.settings.params

    @property
    def keys(self) -> list[str]:
        """The method keys of the run, in order."""
        return list(self.explainers)

    @property
    def device(self) -> torch.device:
        """The model's device (cpu for a model without parameters)."""
        return module_device(self.model)

    def only(self, keys) -> "RunContext":
        """This context restricted to the method ``keys`` (a measured cost pass per key)."""
        keys = set(keys)
        return dataclasses.replace(self, explainers={k: e for k, e in self.explainers.items() if k in keys},
                                   methods={k: m for k, m in self.methods.items() if k in keys})


def build_explainers(settings: BenchSettings, dds) -> tuple[dict, dict]:
    """(key -> explainer, key -> method instance) from ``settings.methods``: the one place where a
    DDS explanation is built (`fvit.dds.DDSExplainer` with the methods' fusion)."""
    resolved = settings.methods.resolve()
    require_dds(settings, dds is not None)
    explainers = {}
    for key, (inst, with_dds) in resolved.items():
        if with_dds:
            from fvit.dds import DDSExplainer

            explainers[key] = DDSExplainer(inst, dds, fuse=settings.methods.fuse)
        else:
            explainers[key] = inst
    return explainers, {k: inst for k, (inst, _) in resolved.items()}


def make_context(settings: BenchSettings, *, model, dataset, dds=None, dist: DistContext | None = None) -> RunContext:
    """The `RunContext` of ``settings`` on a loaded model / data set (the data set is cut to
    ``settings.data.limit`` images, seeded); ``dds`` is required when the run uses one."""
    settings = resolve_settings(settings)
    entry = get_experiment(settings.experiment)
    require_dds(settings, dds is not None)
    explainers, methods = build_explainers(settings, dds) if entry.uses_methods else ({}, {})
    if settings.data.limit is not None:
        from fvit.data import subsample

        dataset = subsample(dataset, settings.data.limit, settings.run.seed)
    return RunContext(settings, model, dataset, dds, explainers, methods, entry().attack_of(settings),
                      dist or DistContext())


def run_entry(ctx: RunContext, *, store: ResultsStore | None = None, max_batches: int | None = None) -> dict:
    """Run the entry of ``ctx.settings.experiment`` over ``ctx.dataset`` and return its results
    (nothing written besides the rows of ``store``)."""
    entry = get_experiment(ctx.settings.experiment)()
    return _run(entry, ctx, store, max_batches)


def _run(entry: Experiment, ctx: RunContext, store, max_batches) -> dict:
    entry.prepare(ctx)
    run = ctx.settings.run
    cuts: dict = {}  # file -> the line it was cut at (a damage found again at or after it: not the store's)
    while True:
        out = run_rows(ctx.dataset, entry.settings(ctx), lambda batch, bctx: entry.compute(batch, bctx, ctx),
                       store=store, batch_size=run.batch_size, seed=run.seed, progress=run.progress, ctx=ctx.dist,
                       desc=entry.name, max_batches=max_batches)
        try:
            return entry.summarise(out, ctx)
        except (KeyError, TypeError, InputError) as e:
            # a stored row without a field the summary reads: a damaged store, named by file and line
            damage = None
            if store is not None:
                field = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else None
                damage = store.missing_field(out.rows, field) or (field and store.missing_field(out.rows))
            if not damage:
                raise
            if not (store.discard_damaged and ctx.dist.world_size == 1) or damage.line >= cuts.get(damage.path, 1 << 62):
                raise damage from None
            cuts[damage.path] = damage.line
            store.discard_from(damage.path, damage.line)  # then recompute the rows cut off


def open_store(directory, config: dict, dist: DistContext, discard_damaged: bool = False) -> ResultsStore:
    """The results store of this rank; a lock, config or damage error on any rank is raised on
    every rank (the same one line), before anything is computed."""
    store, error = None, None
    try:
        store = ResultsStore(directory, config, rank=dist.rank, world_size=dist.world_size,
                             discard_damaged=discard_damaged)
    except FvitError as e:
        error = e
    errors = [m for m in dist.gather_objects(None if error is None else str(error)) if m is not None]
    if errors:
        if store is not None:
            store.close()
        if error is not None:
            raise error
        raise FvitError(errors[0])
    return store


# ------------------------------------------------------------------------------------------------
# One run end to end
# ------------------------------------------------------------------------------------------------

def run_experiment(settings: BenchSettings, *, model=None, dataset=None, dds=None, store: ResultsStore | None = None,
                   write: bool = True, max_batches: int | None = None, dist: DistContext | None = None,
                   discard_damaged: bool = False) -> dict[str, Any]:
    """Run ``settings`` end to end (see module doc). Objects given (model, data set, DDS, store)
    are used as they are; the rest is loaded. With ``settings.out`` None (or ``write=False``) no
    file is written besides the rows of a given ``store``. ``dist``: the distributed context (default:
    torchrun's when the model is loaded here, else a single process). ``discard_damaged``: cut a
    damaged store file's bad tail (`fvit.bench.store.StoreDamagedError`) and recompute it. Returns {config, settings,
    results, cost, n_images, world_size, bench_settings[, files]}."""
    from fvit.bench.protocols import apply_protocol

    settings = apply_protocol(resolve_settings(settings))
    entry = get_experiment(settings.experiment)()
    own_dist = dist is None and model is None
    own_store = None
    dist = init_distributed() if own_dist else (dist or DistContext())
    try:
        model, dataset, dds = _load(settings, dist, model, dataset, dds)
        ctx = make_context(settings, model=model, dataset=dataset, dds=dds, dist=dist)
        _check_dds_memory(settings, ctx)
        config = entry.store_config(settings)
        if write and settings.out is not None:  # a folder named like an output: refused before work
            for name in ("results.json", "report.md"):
                check_output_file(Path(settings.out) / name, "out")
        if store is None and settings.out is not None:
            store = own_store = open_store(settings.out, config, dist, discard_damaged)
        results, costs = _run_with_cost(entry, ctx, store, max_batches)
        record = {"config": config, "settings": resolved_settings(entry, ctx), "results": results, "cost": costs,
                  "n_images": len(ctx.dataset), "world_size": dist.world_size,
                  "bench_settings": settings.to_dict()}
        if write and settings.out is not None and dist.is_main:
            try:
                record["files"] = write_outputs(entry, ctx, record)
            except OSError as e:  # disk full while writing a figure or table (results.json: one line already)
                raise FvitError(f"{settings.out}: cannot write the report ({e.strerror or type(e).__name__}); the "
                                "rows are kept in its results store: free some space and rerun (nothing is "
                                "recomputed)", params=("out",)) from None
        entry.check(results, ctx)
        return record
    finally:
        if own_store is not None:
            own_store.close()
        if own_dist:
            dist.close()


def _check_dds_memory(settings: BenchSettings, ctx: RunContext) -> None:
    """DDS samples x batch size so large that one batch cannot be held: FvitError before work."""
    samples, hw = getattr(ctx.dds, "samples", None), getattr(ctx.model, "input_size", None)
    if not isinstance(samples, int) or hw is None:
        return
    from fvit.utils import check_memory, dds_batch_bytes

    size = getattr(getattr(ctx.dds, "denoiser", None), "image_size", None)
    batch = min(settings.run.batch_size, max(len(ctx.dataset), 1))
    check_memory(dds_batch_bytes(batch, samples, tuple(hw), size if isinstance(size, int) else None),
                 f"DDS samples={samples} x batch_size={batch}", ctx.device, params=("samples", "batch_size"))


def _load(settings: BenchSettings, dist: DistContext, model, dataset, dds):
    if model is None:
        from fvit.models import load_model

        m = settings.model
        model = load_model(m.name, pretrained=m.pretrained, checkpoint=m.checkpoint,
                           device=dist.device(settings.run.device))
    if dataset is None:
        from fvit.data import open_dataset

        d = settings.data
        dataset = open_dataset(d.spec, tuple(model.input_size), limit=d.limit, seed=settings.run.seed,
                               image_resize=d.image_resize)
    if dds is None and needs_dds(settings):
        require_dds(settings, settings.dds is not None)
        from fvit.dds import DenoiseMemo, make_dds

        capacity = get_experiment(settings.experiment).memo
        dds = make_dds(settings.dds, device=RunContext(settings, model, None).device,
                       memo=DenoiseMemo(capacity) if capacity else None)
    return model, dataset, dds


def _run_with_cost(entry: Experiment, ctx: RunContext, store, max_batches) -> tuple[dict, dict]:
    """The results, and the cost per method key: measured passes ([Re] Table 8: one per key, the
    attack included, as theirs) when ``settings.cost`` is set, else this run's timers."""
    cost = ctx.settings.cost if entry.supports_cost else None
    costs: dict[str, dict] = {}
    if cost is not None:
        from fvit.bench.cost import measure

        for key in ctx.keys:
            with measure(key, country_iso_code=cost.country, carbon_intensity_g_per_kwh=cost.carbon_intensity,
                         images=len(ctx.dataset)) as c:
                _run(entry, ctx.only([key]), store, max_batches)
            costs[key] = c.as_dict()
    results = _run(entry, ctx, store, max_batches)
    if cost is None:
        n = max(len(ctx.dataset), 1)
        costs = {k: {"seconds": s, "seconds_per_image": (s or 0) / n, "energy_j": None, "co2_g": None,
                     "note": "runtime from this run's timers (explanation + metric time per method; the "
                             "shared attack is not included); use --cost for energy / CO2"}
                 for k, s in entry.timings(results, ctx).items()}
    return results, costs


def method_settings(methods: dict[str, Any]) -> dict[str, dict]:
    """{key: {name, params}}: every resolved method parameter, for results files."""
    return {k: {"name": m.name, "params": dict(m.params)} for k, m in methods.items()}


def resolved_settings(entry: Experiment, ctx: RunContext) -> dict:
    """Every resolved choice of the run, for results.json: protocol and the values its preset set
    (``preset_fields``: setting path -> value), methods with their parameters,
    the model and its exact weights, image resizing, DDS (`DDS.settings()`: noise construction,
    sampler variance, t*, ...) and the attack."""
    from fvit.bench.protocols import preset_fields
    from fvit.dds import DDS

    s = ctx.settings
    return {"protocol": s.protocol, "preset_fields": preset_fields(s), "methods": method_settings(ctx.methods), "model": s.model.name,
            "weights": getattr(ctx.model, "weights", None), "image_resize": s.data.image_resize or "dataset default",
            "fuse": s.methods.fuse if ctx.dds is not None else None,
            "dds": ctx.dds.settings() if isinstance(ctx.dds, DDS) else None,
            "attack": ctx.attack.as_config() if ctx.attack is not None else None, **entry.resolved(ctx)}


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------

def write_json(path: Path, obj: Any) -> Path:
    write_text_atomic(path, json.dumps(json_ready(obj), indent=2, allow_nan=False))
    return path


def write_outputs(entry: Experiment, ctx: RunContext, record: dict) -> list[str]:
    """results.json, report.md, one CSV / JSON per table, the figures; returns the paths."""
    from fvit.viz import tables as T
    from fvit.viz.report import write_report

    s = ctx.settings
    s.out.mkdir(parents=True, exist_ok=True)
    tables = list(entry.tables(record["results"], ctx))
    figures = list(entry.figures(record["results"], ctx, s.out))
    extra = list(entry.files(record["results"], ctx, s.out))
    if record.get("cost"):
        tables.append(("cost", T.cost_table(record["cost"])))
    files = [write_json(s.out / "results.json", record)]
    resolved = record["settings"]
    preamble = (f"Model `{s.model.name}` (weights `{resolved['weights']}`), protocol `{s.protocol}`, "
                f"data `{s.data.spec}` ({record['n_images']} images), seed {s.run.seed}, "
                f"attack {json.dumps(json_ready(record['config']['attack']))}, "
                f"DDS {json.dumps(json_ready(resolved['dds']))}.")
    files.append(write_report(s.out, tables, title=f"fvit bench {entry.name}", preamble=preamble, figures=figures))
    files += [s.out / f"{stem}.csv" for stem, _ in tables] + figures + extra
    return [str(f) for f in files]


def uses_dds_keys(keys) -> bool:
    return any(str(k).endswith(DDS_SUFFIX) for k in keys)


__all__ = ["EXPERIMENTS", "Experiment", "NoParams", "RunContext", "build_explainers",
           "experiment_names", "get_experiment", "json_ready", "make_context", "method_settings", "needs_dds",
           "register_experiment", "require_dds", "resolve_settings", "resolved_settings", "run_entry",
           "run_experiment", "write_json", "write_outputs"]
