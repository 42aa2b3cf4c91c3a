"""`make_dds(config)`: a `DDS` from its `DDSConfig`, loading ``config.denoiser`` when needed."""

from __future__ import annotations

from fvit.dds.config import DDSConfig
from fvit.dds.core import DDS
from fvit.dds.memo import DenoiseMemo
from fvit.errors import FvitError


def make_dds(config: DDSConfig, *, device=None, denoiser=None, memo: DenoiseMemo | None = None) -> DDS:
    """The DDS of ``config``. The denoiser is ``denoiser`` (an object) or loaded from
    ``config.denoiser`` (`fvit.denoise.load_denoiser`) only when the configuration calls one
    (guided-diffusion is 2 GB: a denoiser that is not needed is not loaded)."""
    if not isinstance(config, DDSConfig):
        raise FvitError(f"make_dds: config must be a DDSConfig, got {type(config).__name__}")
    den = None
    if config.needs_denoiser:
        den = denoiser
        if den is None:
            if not config.denoiser or not config.denoiser.strip():
                raise FvitError("DDS needs a denoiser: pass a denoiser spec (e.g. guided-diffusion-256:PATH, "
                                "diffusers:PATH or a small-DDPM folder)", params=("denoiser",))
            from fvit.denoise import load_denoiser

            den = load_denoiser(config.denoiser, device)
    return DDS(den, config, memo=memo)
