"""The timm backend: timm model names (``vit_base_patch16_224``, ``arch.tag``), the local names
(``tiny``), and in-memory timm models (wrapped as they are)."""

from __future__ import annotations

from fvit.errors import FvitError
from fvit.models.backends import ModelBackend, ModelRequest, module_of


def _load(name: str, request: ModelRequest):
    from fvit.models.loading import load_timm

    return load_timm(name, request)


def _accepts(obj: object) -> bool:
    return module_of(obj) == "timm"


def _convert(obj, request: ModelRequest):
    from fvit.models.wrapper import ExplainableViT

    unused = [k for k in ("num_classes", "img_size") if getattr(request, k) is not None] + list(request.extra)
    if request.checkpoint is not None or unused:
        raise FvitError(f"an in-memory timm model is used as it is; {', '.join(unused) or 'checkpoint'} "
                        "would change it (load its weights first)")
    model = ExplainableViT(obj, name=type(obj).__name__, mean=request.mean, std=request.std)
    model.weights = "in-memory"
    return model


BACKEND = ModelBackend(
    prefix="timm", description="timm Vision Transformers (and the local test model 'tiny')",
    example="timm:NAME (or NAME)", load=_load, accepts=_accepts, convert=_convert,
)
