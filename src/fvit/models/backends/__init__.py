"""Model backends: the one seam between the model a user has and the `ExplainableViT` fvit runs.

    NAME                  timm model name (or a local name such as ``tiny``)   -> timm backend
    timm:NAME             the same, explicitly
    hf:ID_OR_FOLDER       Hugging Face transformers ViT / DeiT (a save_pretrained folder or a Hub id)
    tv:NAME[.WEIGHTS]     torchvision ViT (vit_b_16, ..., vit_h_14), pretrained or with checkpoint=PATH

`load_model` (`fvit.models.loading`) reads the ``prefix:`` and calls that backend's ``load``; an
in-memory model object goes to the first backend whose ``accepts(obj)`` is true (``convert``).
The hf and torchvision backends rebuild the source model as the equivalent timm
``VisionTransformer`` (`fvit.models.convert`), so every method, DDS, attack, certificate and
benchmark runs on it unchanged.

A new family is one file in this folder defining ``BACKEND = ModelBackend(...)`` plus its module
name in `BACKEND_MODULES` (imported on first use, so a family's library is imported only when a
model of it is loaded).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fvit.errors import UnknownNameError
from fvit.registry import Registry

#: The backend modules, in the order `backend_for_object` asks them (one line per family).
BACKEND_MODULES = (
    "fvit.models.backends.timm_vit",
    "fvit.models.backends.hf",
    "fvit.models.backends.torchvision_vit",
)


@dataclass(frozen=True)
class ModelRequest:
    """What `load_model` was asked besides the model: the same keywords for every backend (a
    backend refuses those it cannot honour, naming them)."""

    pretrained: bool = True
    checkpoint: Optional[Path] = None
    num_classes: Optional[int] = None
    img_size: Any = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    extra: dict = field(default_factory=dict)  # further keywords (timm's create_model kwargs)


@dataclass(frozen=True)
class ModelBackend:
    """``load(arg, request)``: the model ``prefix:arg`` names. ``accepts(obj)``: whether an in-memory
    object is this family's (must not import the family's library: check the type's module);
    ``convert(obj, request)``: that object as an `ExplainableViT`."""

    prefix: str
    description: str
    example: str
    load: Callable[[str, ModelRequest], Any]
    accepts: Callable[[object], bool]
    convert: Callable[[object, ModelRequest], Any]
    aliases: tuple[str, ...] = ()


BACKENDS: Registry[ModelBackend] = Registry("model backend")
_loaded = False


def _load_backends() -> None:
    global _loaded
    if _loaded:
        return
    for module in BACKEND_MODULES:
        backend = importlib.import_module(module).BACKEND
        if backend.prefix not in BACKENDS:
            BACKENDS.register(backend.prefix, backend, aliases=backend.aliases)
    _loaded = True


def backends() -> list[ModelBackend]:
    _load_backends()
    return [b for _, b in BACKENDS.items()]


def split_spec(spec: str) -> tuple[Optional[ModelBackend], str]:
    """``'hf:google/vit-base-patch16-224'`` -> (hf backend, ``'google/vit-base-patch16-224'``);
    a name without a prefix -> (None, name) (the timm backend's). An unknown prefix raises
    `UnknownNameError` listing the prefixes."""
    _load_backends()
    prefix, sep, rest = spec.partition(":")
    if not sep:
        return None, spec
    if prefix.strip() in BACKENDS:
        return BACKENDS.get(prefix.strip()), rest.strip()
    known = [b.prefix for b in backends()]
    close = difflib.get_close_matches(prefix.strip().lower(), known, n=1)
    hint = f" (did you mean {close[0]}:?)" if close else ""
    raise UnknownNameError(f"model {spec!r}: unknown model family {prefix!r}{hint}; families: "
                           f"{', '.join(b.example for b in backends())}")


def backend_for_object(obj: object) -> ModelBackend:
    """The backend that converts an in-memory model object (`UnknownNameError` when none does)."""
    for backend in backends():
        if backend.accepts(obj):
            return backend
    raise UnknownNameError(f"model object {type(obj).__module__}.{type(obj).__name__} is not one fvit converts "
                           f"(a timm VisionTransformer, a transformers ViT/DeiT image classifier or a torchvision "
                           f"VisionTransformer)")


def module_of(obj: object) -> str:
    """The top-level package of ``type(obj)`` (``'transformers'``, ``'torchvision'``, ``'timm'``)."""
    return type(obj).__module__.split(".", 1)[0]


__all__ = ["BACKENDS", "BACKEND_MODULES", "ModelBackend", "ModelRequest", "backend_for_object", "backends",
           "module_of", "split_spec"]
