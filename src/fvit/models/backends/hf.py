"""The Hugging Face transformers backend: ``hf:ID_OR_FOLDER`` and in-memory transformers models.

Served: ``ViTForImageClassification``, ``DeiTForImageClassification`` (class + distillation
token, the head on the class token) and ``DeiTForImageClassificationWithTeacher`` (two heads, the
logits their mean, as transformers computes them). Each is rebuilt as the equivalent timm ViT
(`fvit.models.convert`): q / k / v fused into ``qkv``, LayerNorm eps and the MLP activation from
the config (``gelu`` exact, ``gelu_new`` / ``gelu_pytorch_tanh`` tanh). Weights of transformers
4 (``encoder.layer.N.attention.attention.query``) and 5 (``layers.N.attention.q_proj``) map alike.

``ID_OR_FOLDER``: a folder written by ``save_pretrained`` (config.json + weights), or a Hub id
read from the local Hugging Face cache, else fetched (unless the hub is offline, HF_HUB_OFFLINE).
Normalisation comes from the folder's / repo's ``preprocessor_config.json`` (``image_mean``,
``image_std``, ``rescale_factor``, ``do_normalize``), else transformers' default for the model
type (ViT: 0.5 / 0.5, DeiT: ImageNet's); class names from ``config.id2label``. The model takes
``config.image_size`` inputs (fvit resizes every image to it, no crop).

Refused with the reason, from the config alone (before any weight is read): Swin (windowed
attention, no class token), BEiT / data2vec-vision (relative position bias, mean pooling),
hybrid CNN stems, DINOv2 (class token + patch mean), models without a classifier head.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from fvit.errors import CheckpointError, FvitError, UnsupportedModelError
from fvit.models.backends import ModelBackend, ModelRequest, module_of
from fvit.models.convert import PlainViT, fuse_qkv, pair, timm_vit

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: transformers class -> the encoder's attribute and the head layout
SUPPORTED = {
    "ViTForImageClassification": ("vit", "cls"),
    "DeiTForImageClassification": ("deit", "cls+dist"),
    "DeiTForImageClassificationWithTeacher": ("deit", "two-heads"),
}
#: model type -> (class when config.architectures is empty, default mean, default std)
MODEL_TYPES = {
    "vit": ("ViTForImageClassification", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "deit": ("DeiTForImageClassification", IMAGENET_MEAN, IMAGENET_STD),
}
_WINDOWS = "shifted-window attention without a class token; fvit's methods read the class token's attention"
_REL_BIAS = ("a relative position bias inside every attention layer (and mean pooling), which a plain ViT "
             "has no place for")
_HYBRID = "a hybrid CNN stem (convolutional backbone features are the tokens), not a patch embedding"
#: model types refused with their reason
REFUSED = {
    "swin": f"Swin uses {_WINDOWS}", "swinv2": f"Swin V2 uses {_WINDOWS}", "donut-swin": f"Swin uses {_WINDOWS}",
    "maskformer-swin": f"Swin uses {_WINDOWS}",
    "beit": f"BEiT adds {_REL_BIAS}", "data2vec-vision": f"data2vec-vision (BEiT) adds {_REL_BIAS}",
    "vit-hybrid": f"ViT-hybrid has {_HYBRID}", "vit_hybrid": f"ViT-hybrid has {_HYBRID}",
    "dpt": f"DPT-hybrid has {_HYBRID}", "levit": f"LeViT has {_HYBRID} and pools by averaging",
    "mobilevit": f"MobileViT has {_HYBRID}", "mobilevitv2": f"MobileViT has {_HYBRID}",
    "dinov2": "DINOv2's classifier reads the class token and the mean of the patch tokens (and layer scale)",
    "dinov2_with_registers": "DINOv2's classifier reads the class token and the mean of the patch tokens",
    "deit_hybrid": f"{_HYBRID}",
}
#: transformers hidden_act -> fvit's activation name (`fvit.models.convert.ACTIVATIONS`)
ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
              "quick_gelu": "quick_gelu", "relu": "relu"}
#: block weights (timm name -> the transformers name) of transformers 5 and transformers 4
_LAYOUTS = (
    ("layers.{i}.", {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                     "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}),
    ("encoder.layer.{i}.", {"q": "attention.attention.query", "k": "attention.attention.key",
                            "v": "attention.attention.value", "attn.proj": "attention.output.dense",
                            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}),
)
_IGNORED = ("embeddings.mask_token", "pooler.")  # not used by the classifier


def _transformers():
    try:
        import transformers
    except ImportError:
        raise FvitError("hf: models need the transformers package (pip install 'fvit[hf]')") from None
    return transformers


def hub_offline() -> bool:
    """Whether the Hugging Face Hub may not be contacted (HF_HUB_OFFLINE)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


# ---------------------------------------------------------------------------------- config checks
def check_config(config, spec: str, class_name: Optional[str] = None) -> str:
    """The transformers class to build for ``config`` (or ``class_name``, an in-memory model's);
    `UnsupportedModelError` naming the model and the reason when fvit cannot serve it."""
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type in REFUSED:
        raise UnsupportedModelError(f"{spec}: {REFUSED[model_type]}; fvit serves plain ViT / DeiT classifiers")
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(f"{spec}: transformers model type {model_type!r} is not one fvit converts "
                                    f"(served: {', '.join(SUPPORTED)})")
    if class_name is None:
        archs = list(getattr(config, "architectures", None) or [MODEL_TYPES[model_type][0]])
        class_name = next((a for a in archs if a in SUPPORTED), archs[0])
    if class_name not in SUPPORTED:
        why = "it has no classifier head" if class_name.endswith(("Model", "ForMaskedImageModeling")) else "not served"
        raise UnsupportedModelError(f"{spec}: {class_name}: {why}; fvit serves {', '.join(SUPPORTED)}")
    return class_name


def architecture(config, class_name: str, spec: str) -> PlainViT:
    """The `PlainViT` of a ViT / DeiT config (refusing what a plain timm ViT cannot express)."""
    if int(getattr(config, "num_channels", 3)) != 3:
        raise UnsupportedModelError(f"{spec}: {config.num_channels} input channels; fvit explains RGB images")
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and int(head_dim) * heads != hidden:
        raise UnsupportedModelError(f"{spec}: head_dim {head_dim} x {heads} heads != hidden size {hidden}")
    act = config.hidden_act
    if not isinstance(act, str) or act not in ACTIVATION:
        raise UnsupportedModelError(f"{spec}: hidden_act {act!r} is not one fvit converts ({', '.join(ACTIVATION)})")
    layout = SUPPORTED[class_name][1]
    return PlainViT(
        source=spec, img_size=pair(config.image_size), patch_size=pair(config.patch_size), embed_dim=hidden,
        depth=int(config.num_hidden_layers), num_heads=heads, mlp_dim=int(config.intermediate_size),
        num_classes=int(config.num_labels), eps=float(config.layer_norm_eps), act=ACTIVATION[act],
        qkv_bias=bool(getattr(config, "qkv_bias", True)), dist_token=layout != "cls",
        dist_head=layout == "two-heads",
    )


# ---------------------------------------------------------------------------------- weights
def timm_state(state: dict, base: str, arch: PlainViT, class_name: str) -> dict:
    """transformers weights (``state_dict()`` of the classifier) renamed / fused to timm's keys."""
    src = dict(state)

    def take(key: str):
        if key not in src:
            raise CheckpointError(f"{arch.source}: weight {key} is missing")
        return src.pop(key)

    e = f"{base}.embeddings."
    out = {"cls_token": take(e + "cls_token"), "pos_embed": take(e + "position_embeddings"),
           "patch_embed.proj.weight": take(e + "patch_embeddings.projection.weight"),
           "patch_embed.proj.bias": take(e + "patch_embeddings.projection.bias")}
    if arch.dist_token:
        out["dist_token" if arch.dist_head else "reg_token"] = take(e + "distillation_token")
    prefix, names = next(((p, n) for p, n in _LAYOUTS if f"{base}.{p.format(i=0)}{n['q']}.weight" in src),
                         _LAYOUTS[0])
    params = ("weight", "bias") if arch.qkv_bias else ("weight",)
    for i in range(arch.depth):
        p, b = f"{base}.{prefix.format(i=i)}", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[f"{b}norm1.{t}"] = take(f"{p}layernorm_before.{t}")
            out[f"{b}norm2.{t}"] = take(f"{p}layernorm_after.{t}")
            for timm_name in ("attn.proj", "mlp.fc1", "mlp.fc2"):
                out[f"{b}{timm_name}.{t}"] = take(f"{p}{names[timm_name]}.{t}")
        for t in params:
            out[f"{b}attn.qkv.{t}"] = fuse_qkv(*(take(f"{p}{names[x]}.{t}") for x in "qkv"))
    for t in ("weight", "bias"):
        out[f"norm.{t}"] = take(f"{base}.layernorm.{t}")
        if SUPPORTED[class_name][1] == "two-heads":
            out[f"head.{t}"], out[f"head_dist.{t}"] = take(f"cls_classifier.{t}"), take(f"distillation_classifier.{t}")
        else:
            out[f"head.{t}"] = take(f"classifier.{t}")
    left = [k for k in src if not any(k.startswith(f"{base}.{ig}") for ig in _IGNORED)]
    if left:
        raise CheckpointError(f"{arch.source}: weights the conversion does not cover: {', '.join(left[:4])}"
                              f"{' ...' if len(left) > 4 else ''}")
    return out


# ---------------------------------------------------------------------------------- preprocessing
def normalization(processor: Optional[dict], model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean / std on [0, 1] images equivalent to an image processor config: transformers computes
    ``(x255 * rescale_factor - image_mean) / image_std`` (``do_rescale``, ``do_normalize``)."""
    _, mean, std = MODEL_TYPES[model_type]
    p = processor or {}
    if p.get("do_normalize", True):
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    else:
        mean, std = (0.0,) * 3, (1.0,) * 3
    mean = tuple(mean) * 3 if isinstance(mean, (int, float)) else tuple(mean)
    std = tuple(std) * 3 if isinstance(std, (int, float)) else tuple(std)
    scale = 255.0 * float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 255.0
    return tuple(float(m) / scale for m in mean), tuple(float(s) / scale for s in std)


def class_names(config) -> Optional[tuple[str, ...]]:
    """``config.id2label`` in class order, None when it only holds transformers' LABEL_i defaults."""
    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n = int(config.num_labels)
    if sorted(labels) != list(range(n)) or all(labels[i] == f"LABEL_{i}" for i in range(n)):
        return None
    return tuple(labels[i] for i in range(n))


def _file(source: str, local_dir: bool, local_only: bool, filename: str) -> Optional[Path]:
    """A file of the folder, or of the Hub repo (its cached snapshot), None when it has none."""
    if local_dir:
        path = Path(source) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, local_files_only=local_only))
    except Exception:  # huggingface_hub's not-found / offline errors
        return None


def _read_json(source: str, local_dir: bool, local_only: bool, filename: str) -> Optional[dict]:
    try:
        path = _file(source, local_dir, local_only, filename)
        return None if path is None else json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if local_dir:
            raise CheckpointError(f"{source}/{filename}: cannot read it ({type(e).__name__}: {e})") from e
        return None  # not in this repo / cache: the model type's default
    except Exception:  # huggingface_hub's not-found / offline errors
        return None


# ---------------------------------------------------------------------------------- the backend
def _refuse_keywords(spec: str, request: ModelRequest, in_memory: bool = False) -> None:
    given = [k for k in ("num_classes", "img_size") if getattr(request, k) is not None] + list(request.extra)
    if request.checkpoint is not None:
        raise CheckpointError(f"{spec}: a transformers model reads its weights from its folder or the hub; "
                              "checkpoint=PATH is for timm and torchvision models (save_pretrained a folder instead)",
                              params=("checkpoint",))
    if given:
        raise FvitError(f"{spec}: {', '.join(given)} cannot be changed on a transformers model "
                        f"({'the object is used as it is' if in_memory else 'its config fixes them'})")


def _locate(spec: str, arg: str) -> tuple[str, bool, bool]:
    """(source, is a local folder, only the local cache may be read)."""
    if not arg:
        raise CheckpointError(f"{spec}: give a folder written by save_pretrained or a Hub id (hf:ID_OR_FOLDER)")
    path = Path(arg).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{spec}: folder {path} has no config.json (not a save_pretrained folder)")
        return str(path), True, True
    if path.exists():
        raise CheckpointError(f"{spec}: {path} is a file; expected a save_pretrained folder or a Hub id")
    pathlike = arg.startswith((".", "/", "~")) or "\\" in arg or arg.count("/") > 1
    if pathlike:
        raise CheckpointError(f"{spec}: no such folder {path}")
    transformers = _transformers()
    try:
        transformers.AutoConfig.from_pretrained(arg, local_files_only=True)
        return arg, False, True  # in the local Hugging Face cache
    except Exception:
        pass
    if hub_offline():
        raise CheckpointError(f"{spec}: no folder {arg!r} here and no Hub model {arg!r} in the local Hugging Face "
                              "cache (the hub is offline: HF_HUB_OFFLINE)")
    return arg, False, False


def _load(arg: str, request: ModelRequest):
    spec = f"hf:{arg}"
    _refuse_keywords(spec, request)
    source, local_dir, local_only = _locate(spec, arg)
    if not local_dir and _file(source, False, local_only, "config.json") is None:  # one try at the hub
        raise CheckpointError(f"{spec}: no folder {arg!r} here and no config.json of a Hub model {arg!r} could be "
                              "read (no such repo, or no network; a warm cache or a save_pretrained folder works)")
    raw = _read_json(source, local_dir, local_only, "config.json")
    if raw is not None:  # refuse from the file itself: a model type this transformers lacks still names its reason
        check_config(SimpleNamespace(model_type=raw.get("model_type"), architectures=raw.get("architectures")), spec)
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local_only)
    except Exception as e:  # unknown repo, no network, unreadable config
        where = "" if local_dir else f"no folder {arg!r} here and the Hub model could not be read: "
        raise CheckpointError(f"{spec}: {where}cannot read its config ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    class_name = check_config(config, spec)
    arch = architecture(config, class_name, spec)
    cls = getattr(transformers, class_name)
    if request.pretrained:
        try:
            hf_model = cls.from_pretrained(source, local_files_only=local_only)
        except Exception as e:
            raise CheckpointError(f"{spec}: cannot load its weights ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''})",
                                  params=("pretrained",)) from e
    else:
        hf_model = cls(config)
    processor = _read_json(source, local_dir, local_only, "preprocessor_config.json")
    mean, std = normalization(processor, config.model_type)
    weights = "random" if not request.pretrained else spec if local_dir else f"{spec}@{_commit(source, config)}"
    return _wrap(hf_model, arch, class_name, spec, request.mean or mean, request.std or std, weights)


def _commit(source: str, config) -> str:
    """The Hub commit the weights came from (the cached snapshot's folder name)."""
    commit = getattr(config, "_commit_hash", None)
    if not commit:
        path = _file(source, False, True, "config.json")
        commit = path.parent.name if path is not None else "unknown"
    return str(commit)


def _wrap(hf_model, arch: PlainViT, class_name: str, name: str, mean, std, weights: str):
    from fvit.models.wrapper import ExplainableViT

    base = SUPPORTED[class_name][0]
    tm = timm_vit(arch, timm_state(hf_model.state_dict(), base, arch, class_name))
    model = ExplainableViT(tm, name=name, mean=mean, std=std, class_names=class_names(hf_model.config))
    model.weights = weights
    return model


def _accepts(obj: object) -> bool:
    return module_of(obj) == "transformers"


def _convert(obj, request: ModelRequest):
    class_name = type(obj).__name__
    name = f"hf:{getattr(obj, 'name_or_path', '') or class_name}"
    _refuse_keywords(name, request, in_memory=True)
    config = getattr(obj, "config", None)
    if config is None:
        raise UnsupportedModelError(f"{name}: a transformers object without a config is not a model fvit converts")
    check_config(config, name, class_name)
    arch = architecture(config, class_name, name)
    _, mean, std = MODEL_TYPES[config.model_type]
    return _wrap(obj, arch, class_name, name, request.mean or mean, request.std or std, "in-memory")


BACKEND = ModelBackend(
    prefix="hf", description="Hugging Face transformers ViT / DeiT image classifiers",
    example="hf:ID_OR_FOLDER", load=_load, accepts=_accepts, convert=_convert, aliases=("huggingface",),
)
