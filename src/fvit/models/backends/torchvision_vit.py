"""The torchvision backend: ``tv:NAME[.WEIGHTS]`` and in-memory torchvision ``VisionTransformer``s.

``NAME`` is any model torchvision's ``get_model`` builds that is a plain ``VisionTransformer``
(``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``, or one registered with
torchvision's model registry); ``WEIGHTS`` a tag of its weights enum (``IMAGENET1K_V1``,
``IMAGENET1K_SWAG_E2E_V1``, ...; default ``DEFAULT``). The weights come from torchvision's
download cache (``pretrained``) or from ``checkpoint=PATH`` (a torchvision state dict; the image
size and class count are read from it when not given). Normalisation from the weights'
transforms (ImageNet mean / std for every torchvision ViT), class names from the weights' meta
(ImageNet's 1000 for a 1000-class model without weights).

Each model is rebuilt as the equivalent timm ViT (`fvit.models.convert`): ``in_proj_weight`` is
already timm's fused ``qkv`` (rows q, k, v), ``ln_1`` / ``ln_2`` eps 1e-6, exact GELU. Refused
before any weight is read (the architecture is probed on the meta device): models that are not a
ViT (``tv:resnet50``), Swin, MaxViT, ViTs with a convolutional stem or a representation layer,
and checkpoints whose shapes do not fit.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from fvit.errors import CheckpointError, FvitError, UnknownNameError, UnsupportedModelError
from fvit.models.backends import ModelBackend, ModelRequest, module_of
from fvit.models.convert import PlainViT, describe, shape_problems, timm_vit

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: torchvision classes refused with their reason (any other non-ViT: "is not a VisionTransformer")
REFUSED = {
    "SwinTransformer": "Swin uses shifted-window attention without a class token; fvit's methods read the class "
                       "token's attention",
    "MaxVit": "MaxViT is a hybrid (convolution blocks + windowed / grid attention), no class token",
}
_PREFIX = "encoder.layers.encoder_layer_{i}."
_OLD_MLP = {"mlp.linear_1.": "mlp.0.", "mlp.linear_2.": "mlp.3."}  # torchvision < 0.13 key names


def _tvm():
    import torchvision.models as tvm

    return tvm


def vit_names() -> list[str]:
    """torchvision model names whose builder makes a ``VisionTransformer`` (by name: ``vit_*``)."""
    return [n for n in _tvm().list_models() if n.startswith("vit_")]


def check_model(model: nn.Module, spec: str) -> None:
    """`UnsupportedModelError` unless ``model`` is a plain torchvision ViT with a Linear head."""
    from torchvision.models.vision_transformer import VisionTransformer

    kind = type(model).__name__
    if not isinstance(model, VisionTransformer):
        why = REFUSED.get(kind, f"{kind} is not a VisionTransformer")
        raise UnsupportedModelError(f"{spec}: {why}; fvit serves torchvision's plain ViTs ({', '.join(vit_names())})")
    if not isinstance(model.conv_proj, nn.Conv2d):
        raise UnsupportedModelError(f"{spec}: a convolutional stem (conv_stem_configs) instead of a patch "
                                    "embedding (hybrid CNN stem); fvit serves plain ViTs")
    if hasattr(model.heads, "pre_logits") or not isinstance(getattr(model.heads, "head", None), nn.Linear):
        raise UnsupportedModelError(f"{spec}: the classifier has a representation layer (representation_size); "
                                    "fvit serves a Linear head on the class token")


def architecture(model: nn.Module, spec: str) -> PlainViT:
    """The `PlainViT` of a torchvision ``VisionTransformer`` (read from its modules)."""
    check_model(model, spec)
    layers = list(model.encoder.layers)
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.LayerNorm)]
    eps = {float(m.eps) for m in norms}
    if len(eps) != 1:
        raise UnsupportedModelError(f"{spec}: LayerNorms with different eps {sorted(eps)}")
    acts = {(type(m).__name__, getattr(m, "approximate", "none")) for blk in layers for m in blk.mlp
            if not isinstance(m, (nn.Linear, nn.Dropout))}
    act = {("GELU", "none"): "gelu", ("GELU", "tanh"): "gelu_tanh", ("ReLU", "none"): "relu"}.get(
        next(iter(acts)) if len(acts) == 1 else None)
    if act is None:
        raise UnsupportedModelError(f"{spec}: MLP activation {sorted(acts)} is not one fvit converts")
    return PlainViT(source=spec, img_size=(int(model.image_size),) * 2, patch_size=(int(model.patch_size),) * 2,
                    embed_dim=int(model.hidden_dim), depth=len(layers), num_heads=int(layers[0].num_heads),
                    mlp_dim=int(model.mlp_dim), num_classes=int(model.num_classes), eps=eps.pop(), act=act)


def normalise_keys(state: dict) -> dict:
    """Old torchvision key names (``mlp.linear_1``) -> current ones (``mlp.0``)."""
    out = {}
    for k, v in state.items():
        for old, new in _OLD_MLP.items():
            k = k.replace(old, new)
        out[k] = v
    return out


def timm_state(state: dict, arch: PlainViT) -> dict:
    """torchvision ViT weights renamed to timm's keys (``in_proj_weight`` is timm's ``qkv``)."""
    src = normalise_keys(state)

    def take(key: str):
        if key not in src:
            raise CheckpointError(f"{arch.source}: weight {key} is missing")
        return src.pop(key)

    out = {"cls_token": take("class_token"), "pos_embed": take("encoder.pos_embedding"),
           "patch_embed.proj.weight": take("conv_proj.weight"), "patch_embed.proj.bias": take("conv_proj.bias")}
    for i in range(arch.depth):
        p, b = _PREFIX.format(i=i), f"blocks.{i}."
        out[f"{b}attn.qkv.weight"] = take(f"{p}self_attention.in_proj_weight")
        out[f"{b}attn.qkv.bias"] = take(f"{p}self_attention.in_proj_bias")
        for t in ("weight", "bias"):
            out[f"{b}norm1.{t}"] = take(f"{p}ln_1.{t}")
            out[f"{b}norm2.{t}"] = take(f"{p}ln_2.{t}")
            out[f"{b}attn.proj.{t}"] = take(f"{p}self_attention.out_proj.{t}")
            out[f"{b}mlp.fc1.{t}"] = take(f"{p}mlp.0.{t}")
            out[f"{b}mlp.fc2.{t}"] = take(f"{p}mlp.3.{t}")
    for t in ("weight", "bias"):
        out[f"norm.{t}"] = take(f"encoder.ln.{t}")
        out[f"head.{t}"] = take(f"heads.head.{t}")
    if src:
        raise CheckpointError(f"{arch.source}: weights the conversion does not cover: {', '.join(list(src)[:4])}")
    return out


def _weights_enum(name: str):
    try:
        return _tvm().get_model_weights(name)
    except (ValueError, KeyError, AttributeError, TypeError):  # a builder without weights
        return None


def _stats(weights) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        t = weights.transforms()
        return tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std)
    except Exception:  # no weights / transforms without mean and std: torchvision's ImageNet statistics
        return IMAGENET_MEAN, IMAGENET_STD


def _class_names(weights, num_classes: int) -> Optional[tuple[str, ...]]:
    for w in (weights, getattr(_tvm(), "ViT_B_16_Weights").DEFAULT):
        cats = (getattr(w, "meta", None) or {}).get("categories") if w is not None else None
        if cats and len(cats) == num_classes:
            return tuple(cats)
    return None


def _probe(spec: str, name: str, kwargs: dict) -> nn.Module:
    """The model of ``name`` on the meta device (no memory, no download): what it is, what fits."""
    try:
        with torch.device("meta"):
            model = _tvm().get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as e:
        raise FvitError(f"{spec}: torchvision cannot build it with {kwargs} ({e})") from None
    check_model(model, spec)
    return model


def _build_kwargs(spec: str, request: ModelRequest) -> dict:
    if request.extra:
        raise FvitError(f"{spec}: {', '.join(request.extra)} are timm create_model options; a torchvision ViT "
                        "takes num_classes and img_size")
    kwargs = {}
    if request.num_classes is not None:
        kwargs["num_classes"] = int(request.num_classes)
    if request.img_size is not None:
        size = request.img_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h != w:
            raise FvitError(f"{spec}: torchvision ViTs take square images (img_size={size})")
        kwargs["image_size"] = int(h)
    return kwargs


def _from_state(spec: str, name: str, state: dict, kwargs: dict, what: str):
    """The timm ViT of torchvision ``name`` holding ``state`` (checked against the architecture
    built on the meta device; image size and class count read from the state unless given)."""
    state = normalise_keys(state)
    pos, conv, head = state.get("encoder.pos_embedding"), state.get("conv_proj.weight"), state.get("heads.head.weight")
    if "image_size" not in kwargs and pos is not None and conv is not None and pos.ndim == 3 and conv.ndim == 4:
        grid = math.isqrt(max(int(pos.shape[1]) - 1, 0))
        if grid * grid == int(pos.shape[1]) - 1 and grid > 0:
            kwargs = {**kwargs, "image_size": grid * int(conv.shape[-1])}
    if "num_classes" not in kwargs and head is not None and head.ndim == 2:
        kwargs = {**kwargs, "num_classes": int(head.shape[0])}
    probe = _probe(spec, name, kwargs)
    problems = shape_problems(probe.state_dict(), state)
    if problems:
        raise CheckpointError(f"{what} does not fit torchvision {name}: {describe(problems)}", params=("checkpoint",))
    arch = architecture(probe, spec)
    return timm_vit(arch, timm_state(state, arch)), arch


def _pretrained_state(spec: str, name: str, weights) -> dict:
    """torchvision's state dict of ``weights`` (its download cache, else the network)."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # no network, no cached file, corrupt download
        raise CheckpointError(f"{spec}: cannot fetch torchvision's {weights} weights ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); pass checkpoint=PATH "
                              "(a torchvision state dict) or pretrained=False",
                              params=("checkpoint", "pretrained")) from e


def _load(arg: str, request: ModelRequest):
    from fvit.models.loading import read_state_dict
    from fvit.models.wrapper import ExplainableViT

    spec = f"tv:{arg}"
    name, _, tag = arg.partition(".")
    names = _tvm().list_models()
    if name not in names:
        close = difflib.get_close_matches(name.lower(), names, n=4, cutoff=0.6)
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UnknownNameError(f"model {spec!r}: torchvision has no model {name!r} (its ViTs: "
                               f"{', '.join(vit_names())}){hint}")
    kwargs = _build_kwargs(spec, request)
    _probe(spec, name, kwargs)  # what cannot be served is refused before any file is read
    enum = _weights_enum(name)
    weights = None
    if request.checkpoint is not None:
        if tag:
            raise FvitError(f"{spec}: give a weights tag or checkpoint=PATH, not both", params=("checkpoint",))
        path = request.checkpoint
        tm, arch = _from_state(spec, name, read_state_dict(path), kwargs, f"checkpoint {path}")
        tag_text = f"checkpoint:{path}"
    elif request.pretrained:
        if enum is None:
            raise CheckpointError(f"{spec}: torchvision has no pretrained weights for {name}; pass checkpoint=PATH "
                                  "or pretrained=False", params=("checkpoint", "pretrained"))
        try:
            weights = enum[tag] if tag and tag != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise UnknownNameError(f"model {spec!r}: {name} has no weights {tag!r} (weights: "
                                   f"{', '.join(w.name for w in enum)})") from None
        if kwargs:
            raise FvitError(f"{spec}: the pretrained weights fix {', '.join(kwargs)}; pass checkpoint=PATH "
                            "or pretrained=False to change them", params=("checkpoint", "pretrained"))
        # the sizes torchvision's builder sets for these weights: their classes and input size
        fixed = {"num_classes": len(weights.meta["categories"]), "image_size": int(weights.meta["min_size"][0])}
        _probe(spec, name, fixed)
        tm, arch = _from_state(spec, name, _pretrained_state(spec, name, weights), fixed, f"{spec} weights")
        tag_text = f"tv:{name}.{weights.name}"
    else:
        tv_model = _tvm().get_model(name, weights=None, **kwargs)
        arch = architecture(tv_model, spec)
        tm = timm_vit(arch, timm_state(tv_model.state_dict(), arch))
        tag_text = "random"
    mean, std = _stats(weights or (enum.DEFAULT if enum is not None else None))
    model = ExplainableViT(tm, name=spec, mean=request.mean or mean, std=request.std or std,
                           class_names=_class_names(weights, arch.num_classes))
    model.weights = tag_text
    return model


def _accepts(obj: object) -> bool:
    return module_of(obj) == "torchvision"


def _convert(obj, request: ModelRequest):
    from fvit.models.wrapper import ExplainableViT

    name = f"tv:{type(obj).__name__}"
    given = [k for k in ("num_classes", "img_size") if getattr(request, k) is not None] + list(request.extra)
    if request.checkpoint is not None or given:
        raise FvitError(f"{name}: an in-memory torchvision model is used as it is; "
                        f"{', '.join(given) or 'checkpoint'} would change it (load its weights first)")
    arch = architecture(obj, name)
    tm = timm_vit(arch, timm_state(obj.state_dict(), arch))
    model = ExplainableViT(tm, name=name, mean=request.mean or IMAGENET_MEAN, std=request.std or IMAGENET_STD,
                           class_names=_class_names(None, arch.num_classes))
    model.weights = "in-memory"
    return model


BACKEND = ModelBackend(
    prefix="tv", description="torchvision Vision Transformers (vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14)",
    example="tv:NAME[.WEIGHTS]", load=_load, accepts=_accepts, convert=_convert, aliases=("torchvision",),
)
