"""Reproduction presets: one name that sets every choice a published protocol made.

fvit's defaults are the principled choices (all blocks in rollout / Transformer Attribution,
conservative LRP rules, clamped Attribution Rollout, the DDS paper's noise formula, the usual
ImageNet eval crop). The papers' numbers came from reference code that chose otherwise; a preset
selects those choices at once:

``chefer2021`` (Chefer et al. 2021's evaluation scripts, which produced the published
segmentation / perturbation tables that [Re] Table 5 reproduces):
    rollout and transformer_attribution with ``start_layer=1`` (block 0 skipped);
    lrp with ``rules="orig"`` (``ViT_orig_LRP`` / ``layers_lrp``, the published LRP baseline);
    attribution_rollout with ``clamp_negative=False`` (the [Re] reference code);
    the papers' timm weights (``vit_base_patch16_224.orig_in21k_ft_in1k``,
    ``deit_base_patch16_224.fb_in1k``); ImageNet-val images resized to 224 x 224 without crop;
    DDS (when used) with Carlini et al.'s released noise construction (``noise="q-sample"``) and
    the denoiser's learned reverse-step variance where it has one (``variance="auto"``).
``re-fvit`` (the [Re] study's main experiments, which follow the FViT authors' demo notebook): the
    demo's method choices, i.e. [Re] Table 5's "Hu et al." column: LRP with ``rules="ours"`` (the
    "Hu" LRP numbers 66.50 / 64.21 / 40.65 come from these rules; the "Chefer" column 50.79 / 55.75 /
    32.73 from ``rules="orig"``) and rollout over all blocks (``start_layer=0``: inferred, the "Hu"
    rollout numbers differ from Chefer's and the start layer is the one rollout choice the two
    codes make differently); Transformer Attribution as Chefer's (``start_layer=1``, identical
    numbers in both columns); Attribution Rollout unclamped; the papers' weights; resize without
    crop; m = 2 samples under attack, mean fusion, the demo's t* mapping and 250-step chain
    (``fvit-demo``, which builds its own noisy start, so ``noise="paper"``) with the learned
    variance, PGD with step eps/5 and a random start.

A preset never overrules the user: it sets only the values that ``BenchSettings.given`` does not
name (the command line lists there every option the user typed, and for each method item the
parameters typed, even at their default value: ``--methods rollout:start_layer=0`` keeps block 0).
Without ``given`` (library calls) a method parameter at a non-default value other than the preset's
counts as given. `preset_fields(settings)` says which values the preset set (results.json:
``settings.preset_fields``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from fvit.models.loading import PAPER_WEIGHTS
from fvit.registry import Registry


@dataclass(frozen=True)
class Protocol:
    """What a preset sets (see module doc). ``method_params``: canonical method name -> params;
    ``weights``: model name -> exact timm name.tag; ``image_resize``: data-set image resizing;
    ``dds``: `fvit.dds.DDSConfig` field overrides (applied when the run has DDS settings);
    ``fuse``: the DDS explainers' fusion (None: unchanged); ``attack``: `AttackSpec` field
    overrides (applied when the run has an attack)."""

    name: str
    description: str
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    weights: Mapping[str, str] = field(default_factory=dict)
    image_resize: str | None = None
    dds: Mapping[str, Any] = field(default_factory=dict)
    fuse: str | None = None
    attack: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "method_params": {k: dict(v) for k, v in self.method_params.items()},
                "weights": dict(self.weights), "image_resize": self.image_resize, "dds": dict(self.dds),
                "fuse": self.fuse, "attack": dict(self.attack)}


PROTOCOLS: Registry[Protocol] = Registry("protocol")

_CHEFER_METHODS = {
    "rollout": {"start_layer": 1},
    "transformer_attribution": {"start_layer": 1},
    "lrp": {"rules": "orig"},
    "attribution_rollout": {"clamp_negative": False},
}

PROTOCOLS.register("default", Protocol("default", "fvit's principled defaults (no preset)"), aliases=("none",))
PROTOCOLS.register("chefer2021", Protocol(
    "chefer2021", "Chefer et al. 2021's evaluation scripts (the published segmentation / perturbation numbers)",
    method_params=_CHEFER_METHODS, weights=PAPER_WEIGHTS, image_resize="exact",
    dds={"noise": "q-sample", "variance": "auto"},
), aliases=("chefer",))
PROTOCOLS.register("re-fvit", Protocol(
    "re-fvit", "the [Re] FViT reproduction code's choices (on top of chefer2021)",
    method_params={"transformer_attribution": {"start_layer": 1}, "attribution_rollout": {"clamp_negative": False}},
    weights=PAPER_WEIGHTS, image_resize="exact",
    dds={"samples": 2, "mapping": "fvit-demo", "denoise": "fvit-demo:250", "noise": "paper", "variance": "auto"},
    fuse="mean",
    attack={"step_size": "reference"},
), aliases=("re",))


def _method_of(item):
    """The method instance of a `MethodsSpec` item (a name, an instance, 'name+dds', (method, with_dds))."""
    from fvit.explain import ExplanationMethod, get_method
    from fvit.keys import split_key
    from fvit.registry import canonical

    m = item[0] if isinstance(item, tuple) else item
    return m if isinstance(m, ExplanationMethod) else get_method(split_key(canonical(m))[0])


def _method_values(protocol: Protocol, inst, given=()) -> dict[str, Any]:
    """The preset's parameters for the method instance ``inst``, less the ``given`` parameter names
    and the parameters the instance sets to a value that is neither the default nor the preset's."""
    return {k: v for k, v in protocol.method_params.get(inst.name, {}).items()
            if k not in given and inst.params[k] in (inst.defaults[k], v)}


def protocol_method(protocol: Protocol, method, given=()):
    """``method`` (a name or an instance) with the preset's parameters for it, except the parameter
    names in ``given`` and those the instance sets to a non-default value."""
    inst = _method_of(method)
    preset = _method_values(protocol, inst, given)
    return _rebuilt(inst, preset) if preset else inst


def protocol_model(protocol: Protocol, model: str) -> str:
    """The exact timm name the preset uses for ``model`` (unchanged when it names none)."""
    return protocol.weights.get(model, model)


def preset_fields(settings) -> dict[str, Any]:
    """Setting path -> value of every value the preset of ``settings`` sets: ``methods.I.PARAM``
    (method item I), ``model.name``, ``data.image_resize``, ``methods.fuse``, ``dds.FIELD``,
    ``attack.FIELD``; never a path of ``settings.given``. Empty for the 'default' preset. The same
    before and after `apply_protocol` (it is idempotent)."""
    p = PROTOCOLS.get(settings.protocol)
    if p.name == "default":
        return {}
    given = set(settings.given)
    out: dict[str, Any] = {}
    for i, item in enumerate(settings.methods.methods):
        mine = {k.rsplit(".", 1)[1] for k in given if k.startswith(f"methods.{i}.")}
        out.update({f"methods.{i}.{k}": v for k, v in _method_values(p, _method_of(item), mine).items()})
    name = settings.model.name
    if settings.model.checkpoint is None and "model.name" not in given and (
            name in p.weights or name in p.weights.values()):
        out["model.name"] = protocol_model(p, name)
    if p.image_resize is not None and "data.image_resize" not in given:
        out["data.image_resize"] = p.image_resize
    if p.fuse and "methods.fuse" not in given:
        out["methods.fuse"] = p.fuse
    for part, values, present in (("dds", p.dds, settings.dds), ("attack", p.attack, settings.attack)):
        if present is not None:
            out.update({f"{part}.{k}": v for k, v in values.items() if f"{part}.{k}" not in given})
    return out


def _with_params(item, inst):
    """The `MethodsSpec` item ``item`` with its method replaced by ``inst``, keeping its form
    ('name+dds' and (method, with_dds) items become (inst, True) / (inst, with_dds))."""
    from fvit.keys import split_key
    from fvit.registry import canonical

    if isinstance(item, tuple):
        return (inst, item[1])
    if isinstance(item, str):
        return (inst, True) if split_key(canonical(item))[1] else inst
    return inst


def apply_protocol(settings):
    """``settings`` (a `fvit.bench.settings.BenchSettings`) with the values its preset sets
    (`preset_fields`: method parameters, weights, image resizing, DDS, fusion, attack step; never
    a value named in ``settings.given``), via ``replace``; the 'default' preset changes nothing.
    Idempotent."""
    p = PROTOCOLS.get(settings.protocol)
    if p.name == "default":
        return settings if settings.protocol == p.name else settings.replace(protocol=p.name)
    fields = preset_fields(settings)
    part = {s: {k.split(".", 1)[1]: v for k, v in fields.items() if k.startswith(s + ".") and k.count(".") == 1}
            for s in ("model", "data", "methods", "dds", "attack")}
    items = []
    for i, item in enumerate(settings.methods.methods):
        params = {k.rsplit(".", 1)[1]: v for k, v in fields.items() if k.startswith(f"methods.{i}.")}
        inst = _method_of(item)
        items.append(_with_params(item, _rebuilt(inst, params) if params else inst))
    changes = {"protocol": p.name, "methods": settings.methods.replace(methods=tuple(items), **part["methods"])}
    for s in ("model", "data", "dds", "attack"):
        if part[s]:
            changes[s] = getattr(settings, s).replace(**part[s])
    return settings.replace(**changes)


def _rebuilt(inst, params: Mapping[str, Any]):
    """A new instance of ``inst``'s method with ``params`` over its own."""
    from fvit.explain import get_method

    return get_method(inst.name, **{**inst.params, **params})


__all__ = ["PROTOCOLS", "Protocol", "apply_protocol", "preset_fields", "protocol_method", "protocol_model"]
