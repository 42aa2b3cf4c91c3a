"""`make_dds`: build a DDS from plain strings (what the CLI passes through)."""

from __future__ import annotations

from fvit.dds.core import DDS, needs_denoiser
from fvit.dds.explainer import DDSExplainer
from fvit.dds.fusion import FUSIONS
from fvit.errors import FvitError
from fvit.utils import parse_number


def _int(v, what: str) -> int:
    x = parse_number(v, what)
    if x != int(x):
        raise FvitError(f"{what} must be an integer, got {v!r}")
    return int(x)


def make_dds(denoiser_spec=None, sigma="8/255", mapping: str = "carlini", denoise: str = "one-shot",
             samples="1", seed="0", device=None, fuse: str = "max-drop10", variant: str = "full",
             max_batch="32", resize: str = "auto", autocast: str | None = "auto", noise: str = "paper",
             variance: str = "auto") -> DDS:
    """All arguments may be strings ('8/255', '10', 'auto', ...). `denoiser_spec` goes to
    `fvit.denoise.load_denoiser` (or is a Denoiser); it may be None only when no denoiser is
    needed (sigma = 0, or variant 'no-denoise' / 'none')."""
    s = parse_number(sigma, "sigma")
    FUSIONS.resolve(fuse)  # fail early on a bad name
    den = None
    if needs_denoiser(variant, s):  # a denoiser that is not needed is not loaded (guided-diffusion is 2 GB)
        if denoiser_spec is None or str(denoiser_spec).strip() == "":
            raise FvitError("DDS needs a denoiser: pass a denoiser spec (e.g. guided-diffusion-256:PATH, "
                            "diffusers:PATH or a small-DDPM folder)", params=("denoiser",))
        from fvit.denoise import load_denoiser

        den = load_denoiser(denoiser_spec, device)
    return DDS(den, sigma=s, mapping=mapping, denoise=denoise, samples=_int(samples, "samples"),
               seed=_int(seed, "seed"),
               max_batch="auto" if str(max_batch).strip().lower() == "auto" else _int(max_batch, "max_batch"), variant=variant,
               resize=resize, autocast=autocast, fuse=fuse, noise=noise, variance=variance)


def make_dds_explainer(method, denoiser_spec=None, fuse: str = "max-drop10", **dds_kwargs) -> DDSExplainer:
    """`DDSExplainer(method, make_dds(...))`; `method` is a name (fvit.explain) or a callable."""
    return DDSExplainer(method, make_dds(denoiser_spec, fuse=fuse, **dds_kwargs), fuse=fuse)
