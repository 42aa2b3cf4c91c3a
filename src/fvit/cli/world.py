"""`--model world` / `--denoiser world`: the demo world's trained ViT and DDPM from every command.

``world`` (the `fvit demo` preset, ``full``) or ``world:PRESET`` (``world:quick``: `fvit demo
--quick`'s models) names the demo's cached models for the command's ``--seed``
(`fvit.demo.world_models.get_world_models`: loaded from the cache, trained on first use exactly as
`fvit demo` trains them). A local denoiser folder called ``world`` is ``./world``.

The command line is the only layer that may import `fvit.demo`, so the names are resolved here:
the classifier is loaded (or trained) and handed to the library as an object, recorded as
``ModelSpec(name="world", checkpoint=<its cached safetensors>)``; the denoiser becomes the path
of its cached small-DDPM folder, which `fvit.denoise.load_denoiser` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from fvit.errors import FvitError


def world_preset(spec: Optional[str]) -> Optional[str]:
    """'world' -> 'full', 'world:quick' -> 'quick', anything else -> None."""
    if spec is None:
        return None
    name, _, preset = str(spec).strip().partition(":")
    return (preset.strip().lower() or "full") if name.lower() == "world" else None


def is_world(spec: Optional[str]) -> bool:
    return world_preset(spec) is not None


def demo_settings(spec: str, seed: int):
    """The `fvit.demo.settings.DemoSettings` that ``spec`` names for ``seed`` (unknown preset:
    `UnknownNameError` listing the presets)."""
    from fvit.demo.settings import get_settings

    return get_settings(world_preset(spec), seed)


def world_classifier_path(spec: str, seed: int) -> str:
    """The cached classifier weights of ``spec`` (present once trained)."""
    from fvit.demo.world_models import cache_dir

    return str(cache_dir(demo_settings(spec, seed)) / "classifier.safetensors")


def world_denoiser_path(spec: str, seed: int) -> str:
    """The cached small-DDPM folder of ``spec`` (present once trained)."""
    from fvit.demo.world_models import cache_dir

    return str(cache_dir(demo_settings(spec, seed)) / "denoiser")


def check_world_options(model: Optional[str], checkpoint, seed: int, denoiser: Optional[str] = None) -> None:
    """Refuse what does not go with a world model (before anything is loaded): a checkpoint, an
    unknown preset, a negative seed."""
    for spec in (model, denoiser):
        if is_world(spec):
            demo_settings(spec, seed)
    if is_world(model) and checkpoint is not None:
        raise FvitError(f"--model {model} is the demo's cached classifier; drop --checkpoint {checkpoint}")


def denoiser_spec(spec: Optional[str], seed: int) -> Optional[str]:
    """``spec`` with a world name replaced by the path of the cached denoiser (others unchanged)."""
    return world_denoiser_path(spec, seed) if is_world(spec) else spec


def load_world(spec: str, seed: int, *, device=None, progress: bool = True,
               log: Optional[Callable[[str], None]] = None):
    """The demo's `WorldModels` of ``spec`` and ``seed`` on ``device``: loaded from the cache, or
    trained first (``log`` says so; training takes minutes for ``world``, ~1 min for
    ``world:quick`` on a laptop CPU)."""
    from fvit.demo.world_models import cache_dir, get_world_models

    settings = demo_settings(spec, seed)
    directory = cache_dir(settings)
    if log is not None and not (Path(world_classifier_path(spec, seed)).exists()
                                and (directory / "denoiser.json").exists()):
        log(f"fvit: training the demo world's models on first use (preset {settings.name}, seed {seed}; "
            f"cache {directory}) ...")
    models = get_world_models(settings, device=device, progress=progress)
    models.classifier.weights = f"fvit demo world {settings.cache_key()} (classifier)"
    return models


def prepare(model: Optional[str], denoiser: Optional[str], seed: int, *, device=None, progress: bool = True,
            log: Optional[Callable[[str], None]] = None):
    """Train whatever world models ``model`` / ``denoiser`` name and are not cached yet; returns
    the world classifier when ``model`` names one (else None)."""
    net = None
    if is_world(model):
        net = load_world(model, seed, device=device, progress=progress, log=log).classifier
    if is_world(denoiser) and world_preset(denoiser) != world_preset(model):
        load_world(denoiser, seed, device=device, progress=progress, log=log)
    return net


__all__ = ["check_world_options", "demo_settings", "denoiser_spec", "is_world", "load_world", "prepare",
           "world_classifier_path", "world_denoiser_path", "world_preset"]
