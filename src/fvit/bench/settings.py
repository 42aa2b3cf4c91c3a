"""`BenchSettings`: everything one experiment run needs, as frozen typed values.

A run is ``BenchSettings(experiment, out, model, data, run, methods, dds, attack, params,
protocol)``: `ModelSpec` (which weights), `DataSpec` (which images), `RunSpec` (seed, batching,
device), `MethodsSpec` (which explanation methods, with or without DDS, fused how, explaining which
class), a `fvit.dds.DDSConfig` (None: no DDS), a `fvit.attacks.spec.AttackSpec` (None: no attack)
and the experiment's own frozen ``Params`` (declared by its entry in `fvit.bench.engine`).

The command line (`fvit.cli.bench`) parses strings such as '8/255' and builds these; below it every
value is typed. `BenchSettings.to_dict()` is recorded whole in results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fvit.attacks.spec import AttackSpec
from fvit.errors import InputError
from fvit.keys import split_key
from fvit.registry import canonical
from fvit.settings import Settings, check_choice, check_int, check_number, set_field

DDS_MODES = ("off", "on", "both")
TARGET_MODES = ("prediction", "clean")


@dataclass(frozen=True)
class ModelSpec(Settings):
    """The classifier: what `fvit.models.load_model` reads (a timm name or 'tiny', ``hf:ID_OR_FOLDER``,
    ``tv:NAME[.WEIGHTS]``), an optional local checkpoint, hub weights or not.
    ``label``: the name tables print (default ``name``)."""

    name: str = "vit_base_patch16_224"
    checkpoint: str | None = None
    pretrained: bool = True
    label: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"ModelSpec: name must be a model name, got {self.name!r}", params=("model",))
        if self.checkpoint is not None:
            set_field(self, "checkpoint", str(self.checkpoint))


@dataclass(frozen=True)
class DataSpec(Settings):
    """The images: a data-set spec for `fvit.data.open_dataset` ('world:eval,6', 'imagenet-seg:PATH',
    ...), a seeded random subset of ``limit`` images (None: all), the image resizing (None: the
    set's default)."""

    spec: str = "world"
    limit: int | None = None
    image_resize: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec:
            raise InputError(f"DataSpec: spec must be a data-set spec, got {self.spec!r}", params=("data",))
        set_field(self, "limit", check_int("DataSpec", "limit", self.limit, lo=1, allow_none=True))


@dataclass(frozen=True)
class RunSpec(Settings):
    """How the rows are computed: the seed (subset, attacks, DDS noise), images per batch (not part
    of what determines a row where DDS noise and attack starts are drawn per image, see
    `fvit.bench.engine.Experiment.batch_seeded`), the device, a progress bar."""

    seed: int = 0
    batch_size: int = 8
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        set_field(self, "seed", check_int("RunSpec", "seed", self.seed))
        set_field(self, "batch_size", check_int("RunSpec", "batch_size", self.batch_size, lo=1))


@dataclass(frozen=True)
class MethodsSpec(Settings):
    """The explanation methods of a run.

    methods: method instances (`fvit.explain.get_method(name, **params)`) or registered names /
        specs; a name may carry '+dds' ('ta+dds') and an item may be ``(instance, with_dds)``:
        such explicit items are run exactly as given, whatever ``dds_mode``.
    dds_mode: for the other items: 'off' (plain only), 'on' (DDS only), 'both' (each plain, then
        with DDS: [Re] Table 3).
    fuse: fusion of the m DDS maps (`fvit.dds.DDSExplainer`): 'max-drop10' (paper) | 'mean'.
    target: 'prediction' (each explainer explains its own prediction: the plain model's, or the
        smoothed vote for DDS) | 'clean' (the plain model's clean prediction).
    """

    methods: tuple = ("transformer_attribution",)
    dds_mode: str = "off"
    fuse: str = "max-drop10"
    target: str = "prediction"

    def __post_init__(self) -> None:
        set_field(self, "methods", tuple(self.methods))
        if not self.methods:
            raise InputError("MethodsSpec: give at least one method", params=("methods",))
        check_choice("MethodsSpec", "dds_mode", self.dds_mode, DDS_MODES)
        check_choice("MethodsSpec", "target", self.target, TARGET_MODES)
        from fvit.dds.fusion import FUSIONS

        FUSIONS.resolve(self.fuse)

    def resolve(self) -> dict[str, tuple[Any, bool]]:
        """Result key -> (method instance, with DDS), in run order (see the class doc)."""
        from fvit.explain import ExplanationMethod, get_method
        from fvit.keys import method_key

        items, explicit = [], False
        for m in self.methods:
            if isinstance(m, tuple):
                inst, with_dds = m
                explicit = explicit or bool(with_dds)
            elif isinstance(m, ExplanationMethod):
                inst, with_dds = m, None
            else:
                base, dds_named = split_key(canonical(m))
                inst, with_dds = get_method(base), (True if dds_named else None)
                explicit = explicit or dds_named
            items.append((inst, with_dds))
        if explicit:
            flags = [(inst, bool(w)) for inst, w in items]
        else:
            modes = {"off": (False,), "on": (True,), "both": (False, True)}[self.dds_mode]
            flags = [(inst, w) for inst, _ in items for w in modes]
        return {method_key(inst.spec, w): (inst, w) for inst, w in flags}

    @property
    def uses_dds(self) -> bool:
        """Whether some resolved key runs with DDS."""
        return any(w for _, w in self.resolve().values())


@dataclass(frozen=True)
class CostSpec(Settings):
    """[Re] Table 8: one measured pass per method key (runtime, energy, CO2 via codecarbon)."""

    country: str = "NLD"
    carbon_intensity: float | None = None

    def __post_init__(self) -> None:
        set_field(self, "carbon_intensity", check_number("CostSpec", "carbon_intensity", self.carbon_intensity,
                                                         lo=0.0, allow_none=True))


@dataclass(frozen=True)
class BenchSettings(Settings):
    """One experiment run (see module doc). ``out``: the folder of the results store and reports
    (None: in memory, nothing written). ``params``: the experiment's own ``Params`` (None: its
    defaults). ``cost``: measured cost passes where the experiment supports them (None: off).
    ``given``: the setting paths the user set explicitly, which the ``protocol`` preset never
    overrides (`fvit.bench.protocols.preset_fields`): ``model.name``, ``data.image_resize``,
    ``methods.fuse``, ``dds.FIELD``, ``attack.FIELD``, and ``methods.I.PARAM`` for a parameter of
    method item I (the command line fills it from the options typed)."""

    experiment: str
    out: Path | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    run: RunSpec = field(default_factory=RunSpec)
    methods: MethodsSpec = field(default_factory=MethodsSpec)
    dds: Any = None  # fvit.dds.DDSConfig | None
    attack: AttackSpec | None = None
    params: Any = None
    protocol: str = "default"
    cost: CostSpec | None = None
    given: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from fvit.dds import DDSConfig

        if not isinstance(self.experiment, str) or not self.experiment:
            raise InputError(f"BenchSettings: experiment must be an experiment name, got {self.experiment!r}",
                             params=("experiment",))
        if self.out is not None:
            set_field(self, "out", Path(self.out))
        for name, kind in (("model", ModelSpec), ("data", DataSpec), ("run", RunSpec), ("methods", MethodsSpec)):
            if not isinstance(getattr(self, name), kind):
                raise InputError(f"BenchSettings: {name} must be a {kind.__name__}, got "
                                 f"{type(getattr(self, name)).__name__}", params=(name,))
        if self.dds is not None and not isinstance(self.dds, DDSConfig):
            raise InputError(f"BenchSettings: dds must be a DDSConfig or None, got {type(self.dds).__name__}",
                             params=("dds",))
        if self.attack is not None and not isinstance(self.attack, AttackSpec):
            raise InputError(f"BenchSettings: attack must be an AttackSpec or None, got "
                             f"{type(self.attack).__name__}", params=("attack",))
        if self.params is not None and not isinstance(self.params, Settings):
            raise InputError(f"BenchSettings: params must be an experiment's Params (Settings) or None, got "
                             f"{type(self.params).__name__}", params=("params",))
        if isinstance(self.given, str) or not all(isinstance(g, str) and "." in g for g in self.given):
            raise InputError(f"BenchSettings: given must be setting paths such as 'dds.samples', got {self.given!r}",
                             params=("given",))
        set_field(self, "given", tuple(sorted(set(self.given))))


__all__ = ["BenchSettings", "CostSpec", "DDS_MODES", "DataSpec", "MethodsSpec", "ModelSpec", "RunSpec",
           "TARGET_MODES"]
