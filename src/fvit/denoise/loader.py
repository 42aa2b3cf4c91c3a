"""`load_denoiser(spec)`: one entry point for all denoiser backends (a registry of spec prefixes).

    guided-diffusion-256[:PATH]   OpenAI 256x256_diffusion_uncond.pt (PATH, $FVIT_GUIDED_DIFFUSION,
                                  ./256x256_diffusion_uncond.pt or ~/.cache/fvit/)
    diffusers:PATH                a diffusers UNet2DModel + scheduler config folder
    small:PATH | PATH             the project's small DDPM (model.safetensors + config.json)

A spec must name one thing: an unknown ``prefix:`` that is no existing path, a path that does not
exist, and a spec that is both a backend (``guided``, ``small:x``) and an existing file or folder
here are refused (`CheckpointError`), as timm's ``create_model`` refuses unknown names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fvit.denoise.base import Denoiser
from fvit.errors import CheckpointError
from fvit.registry import Registry
from fvit.utils import resolve_device

BACKENDS: Registry[Callable[[str | None, object], Denoiser]] = Registry("denoiser backend")


@BACKENDS.register("guided-diffusion-256", aliases=("guided-diffusion", "guided", "guided-256"))
def _guided(arg, device):
    from fvit.denoise.guided import load_guided_diffusion
    return load_guided_diffusion(arg or None, device)


@BACKENDS.register("diffusers")
def _diffusers(arg, device):
    from fvit.denoise.diffusers_backend import load_diffusers
    from fvit.errors import CheckpointError
    if not arg:
        raise CheckpointError("diffusers denoiser spec needs a folder: diffusers:PATH")
    return load_diffusers(arg, device)


@BACKENDS.register("small", aliases=("small-ddpm", "fvit"))
def _small(arg, device):
    from fvit.denoise.small_unet import load_small_ddpm
    from fvit.errors import CheckpointError
    if not arg:
        raise CheckpointError("small DDPM spec needs a path: small:PATH or PATH")
    return load_small_ddpm(arg, device)


def load_denoiser(spec: "str | Denoiser", device=None) -> Denoiser:
    """Load a denoiser from a spec string (see module docstring); a Denoiser passes through
    (moved to `device` when one is given). device None/'auto' -> cuda if available."""
    if isinstance(spec, Denoiser):
        return spec.to(device) if device is not None else spec
    dev = resolve_device(device)
    text = str(spec).strip()
    prefix, sep, rest = text.partition(":")
    if prefix in BACKENDS:
        if text and Path(text).exists():
            raise CheckpointError(f"denoiser {text!r} is ambiguous: both the backend {prefix!r} and a path here; "
                                  f"write ./{text} for the path, or move it")
        return BACKENDS.get(prefix)(rest if sep else None, dev)
    if sep and not Path(text).exists() and not _is_drive(prefix):
        raise CheckpointError(f"denoiser {text!r}: unknown backend {prefix!r} (backends: "
                              f"{', '.join(p.replace('_', '-') + ':' for p in BACKENDS.names())}; or a small-DDPM folder PATH)")
    if not Path(text).exists():
        raise CheckpointError(f"denoiser {text!r}: no such folder or file (expected a backend "
                              f"{', '.join(p.replace('_', '-') + ':' for p in BACKENDS.names())} or a small-DDPM folder PATH)")
    return BACKENDS.get("small")(text, dev)


def _is_drive(prefix: str) -> bool:  # C:\... on Windows
    return len(prefix) == 1 and prefix.isalpha()
