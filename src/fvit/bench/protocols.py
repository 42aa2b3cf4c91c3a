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

A preset overrides the options it names (method parameters given explicitly, e.g.
``rollout:start_layer=2``, win over the preset's).
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


def protocol_method(protocol: Protocol, method):
    """``method`` (a name or an instance) with the preset's parameters for it, under any parameter
    the instance sets to a non-default value."""
    from fvit.explain import ExplanationMethod, get_method

    inst = method if isinstance(method, ExplanationMethod) else get_method(method)
    explicit = {k: v for k, v in inst.params.items() if v != inst.defaults[k]}
    preset = dict(protocol.method_params.get(inst.name, {}))
    return get_method(inst.name, **{**preset, **explicit}) if preset else inst


def protocol_model(protocol: Protocol, model: str) -> str:
    """The exact timm name the preset uses for ``model`` (unchanged when it names none)."""
    return protocol.weights.get(model, model)


def _protocol_item(protocol: Protocol, item):
    """A `MethodsSpec` item with the preset's parameters: names, instances, 'name+dds' strings and
    (instance, with_dds) pairs keep their form (a name becomes an instance)."""
    from fvit.keys import split_key
    from fvit.registry import canonical

    if isinstance(item, tuple):
        return (protocol_method(protocol, item[0]), item[1])
    if isinstance(item, str):
        base, with_dds = split_key(canonical(item))
        return (protocol_method(protocol, base), True) if with_dds else protocol_method(protocol, base)
    return protocol_method(protocol, item)


def apply_protocol(settings):
    """``settings`` (a `fvit.bench.settings.BenchSettings`) with everything its protocol preset sets
    (method parameters, weights, image resizing, DDS, fusion, attack step), via ``replace``; the
    'default' preset changes nothing. Idempotent."""
    p = PROTOCOLS.get(settings.protocol)
    if p.name == "default":
        return settings if settings.protocol == p.name else settings.replace(protocol=p.name)
    methods = settings.methods.replace(methods=tuple(_protocol_item(p, m) for m in settings.methods.methods),
                                       **({"fuse": p.fuse} if p.fuse else {}))
    model = settings.model
    if model.checkpoint is None:
        model = model.replace(name=protocol_model(p, model.name))
    data = settings.data.replace(image_resize=p.image_resize) if p.image_resize is not None else settings.data
    dds = settings.dds.replace(**p.dds) if settings.dds is not None and p.dds else settings.dds
    attack = settings.attack.replace(**p.attack) if settings.attack is not None and p.attack else settings.attack
    return settings.replace(protocol=p.name, methods=methods, model=model, data=data, dds=dds, attack=attack)


__all__ = ["PROTOCOLS", "Protocol", "apply_protocol", "protocol_method", "protocol_model"]
