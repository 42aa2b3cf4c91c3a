"""Building `ExplainableViT`s: `load_model` (every model family, through `fvit.models.backends`),
timm models by name, local checkpoints, the project's tiny test ViT.

Pretrained weights come from the Hugging Face hub through timm (``pretrained=True``). When the hub
cannot be reached, `load_model` raises `CheckpointError` suggesting a local ``checkpoint`` (a local
``.safetensors`` / ``.pth`` timm state dict) or ``pretrained=False`` (random weights).

Names are refused, as timm's ``create_model`` refuses them, unless they name exactly one model: an
unknown name (with close timm names as a hint), a pattern (``vit_*``), an unknown pretrained tag
(``arch.tag``), or a local name that timm also knows, all raise `UnknownNameError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fvit.errors import CheckpointError, FvitError, UnknownNameError
from fvit.registry import Registry
from fvit.utils import load_torch_weights, resolve_device
from fvit.models.wrapper import ExplainableViT, check_normalization

#: Project-local model names (everything else is a timm model name). ``tiny`` is the small random
#: ViT used by tests, the CLI's quick runs and the benchmark world.
LOCAL_MODELS: Registry[Callable[..., ExplainableViT]] = Registry("local model")

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_PREFIXES = ("module.", "timm_model.")


_TINY_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@LOCAL_MODELS.register("tiny")
def tiny_vit(
    num_classes: int = 10,
    img_size: int = 32,
    patch_size: int = 4,
    embed_dim: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    seed: int = 0,
    **timm_kwargs: Any,
) -> ExplainableViT:
    """A small random-weight timm ``VisionTransformer`` (CLS pooling, mean = std = 0.5)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        timm_model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                       num_heads=num_heads, num_classes=num_classes, global_pool="token",
                                       **timm_kwargs)
    mean, std = _TINY_MEAN_STD
    return ExplainableViT(timm_model, name="tiny", mean=mean, std=std)


# ---------------------------------------------------------------------------------- checkpoints
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local ``.safetensors`` or ``.pth``/``.pt``/``.bin`` state dict (CPU tensors).

    Dicts wrapped under ``model`` / ``state_dict`` are unwrapped; ``module.`` / ``timm_model.``
    key prefixes are stripped. Raises CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.suffix != ".safetensors":
        return _unwrap_state(load_torch_weights(path), path)  # one-line errors, pickles refused
    try:
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    except Exception as e:  # corrupt file, not a checkpoint at all
        raise CheckpointError(f"checkpoint {path}: cannot read it ({type(e).__name__}: {e})") from e
    return _unwrap_state(state, path)


def _unwrap_state(state: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, Mapping):
        inner = next((state[k] for k in _WRAPPER_KEYS if k in state and isinstance(state[k], Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: not a state dict of tensors")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return problems


def load_checkpoint(model: nn.Module, path: str | Path, *, show: int = 5) -> None:
    """Load a local timm state dict into ``model`` strictly; CheckpointError names the file and the
    first ``show`` mismatched keys / shapes."""
    state = read_state_dict(path)
    problems = _mismatches(model, state)
    if problems:
        more = f" (+{len(problems) - show} more)" if len(problems) > show else ""
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: {'; '.join(problems[:show])}{more}"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------- load_model
def check_timm_name(name: str) -> None:
    """Raise `UnknownNameError` unless ``name`` (``arch`` or ``arch.tag``) is exactly one timm model
    with, when a tag is given, that pretrained tag (timm's ``create_model`` would refuse it too)."""
    import difflib

    import timm
    from timm.models import split_model_name_tag

    local = ", ".join(LOCAL_MODELS.names())
    if any(c in name for c in "*?["):
        found = timm.list_models(name)
        some = f": {', '.join(found[:8])}{', ...' if len(found) > 8 else ''}" if found else ""
        raise UnknownNameError(f"model name {name!r} is a pattern ({len(found)} timm models match{some}); "
                               f"give one model name")
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch.strip().lower(), timm.list_models(), n=5, cutoff=0.75)
        hint = f"; similar timm names: {', '.join(close)}" if close else ""
        raise UnknownNameError(f"unknown model {name!r} (local: {local}; or any timm model name){hint}")
    if tag:
        from timm.models import get_pretrained_cfg

        try:
            get_pretrained_cfg(name)  # timm's own rule: RuntimeError on a tag it does not know
        except RuntimeError:
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
            raise UnknownNameError(f"model {name!r}: timm has no pretrained tag {tag!r} for {arch} "
                                   f"(tags: {', '.join(tags) or 'none'})") from None


def _create_timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    check_timm_name(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ConnectionError, ValueError) as e:
        if not pretrained:
            raise
        raise CheckpointError(
            f"cannot fetch pretrained weights for {name!r} from the hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); pass checkpoint=PATH (a local .safetensors/.pth "
            "timm state dict) or pretrained=False for random weights", params=("checkpoint", "pretrained"),
        ) from e


def load_model(
    source: Any,
    *,
    pretrained: bool = True,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **timm_kwargs: Any,
) -> ExplainableViT:
    """Build an `ExplainableViT` from what the user has (`fvit.models.backends`):

    - a timm model name (``vit_base_patch16_224``, ``arch.tag``) or a local name (``tiny``);
    - ``hf:ID_OR_FOLDER``: a Hugging Face transformers ViT / DeiT classifier (a ``save_pretrained``
      folder or a Hub id, from the local cache or the network);
    - ``tv:NAME[.WEIGHTS]``: a torchvision ViT (``tv:vit_b_16``), its pretrained weights or
      ``checkpoint=PATH`` (a torchvision state dict);
    - an in-memory model object: a timm ``VisionTransformer``, a transformers ViT / DeiT image
      classifier, a torchvision ``VisionTransformer`` (or an `ExplainableViT`, returned as it is).

    ``checkpoint`` (a local ``.safetensors`` / ``.pth`` state dict of the family) takes precedence
    over ``pretrained`` (no hub access is attempted when a checkpoint is given). ``num_classes`` /
    ``img_size`` / ``timm_kwargs`` go to ``timm.create_model`` (other families refuse what they
    cannot honour). ``mean`` / ``std`` override the normalisation read from the source. The model
    is returned in eval mode on ``device`` (None/'auto' = cuda if available).
    """
    from fvit.models.backends import ModelRequest, backend_for_object, split_spec

    if num_classes is not None and int(num_classes) < 1:
        raise FvitError(f"num_classes must be >= 1 (got {num_classes}): a model without a classifier head "
                        "predicts no class to explain")
    check_normalization(mean, std)
    request = ModelRequest(pretrained=bool(pretrained), checkpoint=None if checkpoint is None else Path(checkpoint),
                           num_classes=None if num_classes is None else int(num_classes), img_size=img_size,
                           mean=None if mean is None else tuple(float(m) for m in mean),
                           std=None if std is None else tuple(float(s) for s in std), extra=dict(timm_kwargs))
    if isinstance(source, ExplainableViT):
        model = source
        if request.mean is not None or request.std is not None:
            model.set_normalization(request.mean, request.std)
    elif isinstance(source, str):
        backend, arg = split_spec(source)
        model = load_timm(arg, request) if backend is None else backend.load(arg, request)
    elif isinstance(source, nn.Module):
        model = backend_for_object(source).convert(source, request)
    else:
        raise FvitError(f"model must be a model name / 'hf:...' / 'tv:...' spec or a model object, got "
                        f"{type(source).__name__}")
    return model.to(resolve_device(device)).eval()


def load_timm(name: str, request) -> ExplainableViT:
    """The timm backend: a timm model name (``arch`` or ``arch.tag``) or a local name."""
    kwargs = dict(request.extra)
    if request.num_classes is not None:
        kwargs["num_classes"] = request.num_classes
    if request.img_size is not None:
        kwargs["img_size"] = request.img_size
    checkpoint = request.checkpoint
    use_hub = request.pretrained and checkpoint is None
    if name in LOCAL_MODELS:
        import timm

        if timm.is_model(name):
            raise UnknownNameError(f"model name {name!r} is ambiguous: a local model and a timm model")
        if use_hub:
            raise CheckpointError(
                f"model {name!r} has no pretrained weights; pass checkpoint=PATH or pretrained=False",
                params=("checkpoint", "pretrained"),
            )
        model = LOCAL_MODELS.get(name)(**kwargs)
        model.name = LOCAL_MODELS.resolve(name)  # the canonical name ('Tiny' -> 'tiny')
    else:
        model = ExplainableViT(_create_timm(name, use_hub, kwargs), name=name)
        if use_hub:
            model.class_names = timm_class_names(model.timm_model)
    if checkpoint is not None:
        load_checkpoint(model.timm_model, checkpoint)
    if request.mean is not None or request.std is not None:
        model.set_normalization(request.mean, request.std)
    model.weights = weights_tag(model, use_hub, checkpoint)
    return model


def timm_class_names(timm_model: nn.Module) -> tuple[str, ...] | None:
    """Class names of timm pretrained weights trained on an ImageNet subset timm knows (its bundled
    metadata, no download), None otherwise."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(timm_model)
        if not subset:
            return None
        info = ImageNetInfo(subset)
        if info.num_classes() != int(getattr(timm_model, "num_classes", -1)):
            return None
        return tuple(info.index_to_description(i) for i in range(info.num_classes()))
    except Exception:  # metadata missing in this timm version: names are optional
        return None


#: The exact timm weights the papers used (Chefer et al. 2021, both FViT papers): timm's bare
#: ``vit_base_patch16_224`` now resolves to the augreg2 weights, not the original JAX ones.
PAPER_WEIGHTS = {
    "vit_base_patch16_224": "vit_base_patch16_224.orig_in21k_ft_in1k",  # jx_vit_base_p16_224-80ecf9dd
    "deit_base_patch16_224": "deit_base_patch16_224.fb_in1k",
}


def weights_tag(model: ExplainableViT, pretrained: bool, checkpoint: str | Path | None) -> str:
    """What the weights are: ``arch.tag`` of the resolved timm pretrained weights (e.g.
    ``vit_base_patch16_224.augreg2_in21k_ft_in1k``), ``checkpoint:PATH``, or ``random``."""
    if checkpoint is not None:
        return f"checkpoint:{checkpoint}"
    if not pretrained:
        return "random"
    cfg = getattr(model.timm_model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture") or model.name.split(".")[0], cfg.get("tag")
    return f"{arch}.{tag}" if tag else str(arch)
