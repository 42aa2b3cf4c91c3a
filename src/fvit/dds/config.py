"""`DDSConfig`: every setting of denoised diffusion smoothing, as one frozen value.

A `DDS` is built from a config and a denoiser (`DDS(denoiser, config)`, or `make_dds(config)`
which loads ``config.denoiser``); `DDS.replace(...)` / `DDSConfig.replace(...)` give variants (a
sigma sweep, an ablation, fewer samples inside an attack). Fusion of the per-sample maps is not a
DDS setting: it belongs to the explainer (`DDSExplainer(method, dds, fuse=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fvit.denoise.samplers import parse_sampler
from fvit.denoise.timestep import MAPPINGS
from fvit.errors import InputError
from fvit.registry import Registry
from fvit.settings import Settings, check_choice, check_int, check_number, set_field


@dataclass(frozen=True)
class Variant:
    noise: bool
    denoise: bool


#: Ablations (paper Table 2) as DDS variants.
VARIANTS: Registry[Variant] = Registry("DDS variant")
VARIANTS.register("full", Variant(True, True), aliases=("dds",))
VARIANTS.register("no-noise", Variant(False, True), aliases=("denoise-only", "-smoothing", "no-smoothing"))
VARIANTS.register("no-denoise", Variant(True, False), aliases=("smoothing-only", "noise-only", "-denoising", "no-denoising"))
VARIANTS.register("none", Variant(False, False), aliases=("-both", "no-both", "identity", "plain"))

NOISES = ("paper", "q-sample")
VARIANCES = ("auto", "learned", "fixed-small")
AUTOCASTS = ("auto", "none", "bf16", "fp16")
RESIZES = ("auto", "always", "never")
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class DDSConfig(Settings):
    """Denoised diffusion smoothing (see `fvit.dds.core` for the algorithm).

    denoiser: spec for `fvit.denoise.load_denoiser` (``guided-diffusion-256[:PATH]``,
        ``diffusers:PATH``, a small-DDPM folder); None when the denoiser is given as an object or
        not needed. Recorded, never parsed here.
    sigma: noise std in [0, 1] pixel units (a number; 0 = no smoothing).
    samples: m, denoised samples per image and call.
    denoise: sampler spec 'one-shot' | 'ddim:N' | 'ancestral:N' | 'N-steps' | 'fvit-demo[:K]'
        (normalised to its canonical spec).
    mapping: sigma -> t* mapping ('carlini', 'fvit-demo').
    noise: 'paper' | 'q-sample' (Carlini et al.'s released code).
    variance: reverse-step variance of stochastic samplers: 'auto' | 'learned' | 'fixed-small'.
    variant: ablation variant: 'full' | 'no-noise' | 'no-denoise' | 'none' (canonical name kept).
    resize: 'auto' | 'always' | 'never' (input resolution vs the denoiser's).
    autocast: 'auto' (bf16 on CUDA, none elsewhere) | 'none' | 'bf16' | 'fp16'.
    max_batch: denoiser / classifier / explanation inputs per call, or 'auto' (from free CUDA memory
        for the denoiser).
    seed: seed of the per-image noise generators (`fvit.seeding`).
    """

    denoiser: str | None = None
    sigma: float = 8 / 255
    samples: int = 1
    denoise: str = "one-shot"
    mapping: str = "carlini"
    noise: str = "paper"
    variance: str = "auto"
    variant: str = "full"
    resize: str = "auto"
    autocast: str = "auto"
    max_batch: int | str = DEFAULT_MAX_BATCH
    seed: int = 0

    def __post_init__(self) -> None:
        own = "DDSConfig"
        if self.denoiser is not None and not isinstance(self.denoiser, str):
            raise InputError(f"{own}: denoiser must be a spec string or None (pass a Denoiser object to DDS "
                             f"itself), got {type(self.denoiser).__name__}", params=("denoiser",))
        set_field(self, "sigma", check_number(own, "sigma", self.sigma, lo=0.0))
        set_field(self, "samples", check_int(own, "samples", self.samples, lo=1))
        set_field(self, "denoise", parse_sampler(self.denoise).spec)
        MAPPINGS.resolve(self.mapping)
        check_choice(own, "noise", self.noise, NOISES)
        check_choice(own, "variance", self.variance, VARIANCES)
        set_field(self, "variant", VARIANTS.resolve(self.variant).replace("_", "-"))
        check_choice(own, "resize", self.resize, RESIZES)
        autocast = "none" if self.autocast is None else self.autocast
        set_field(self, "autocast", check_choice(own, "autocast", autocast, AUTOCASTS))
        if self.max_batch != "auto":
            set_field(self, "max_batch", check_int(own, "max_batch", self.max_batch, lo=1))
        set_field(self, "seed", check_int(own, "seed", self.seed))
        if self.noise == "q-sample" and parse_sampler(self.denoise).kind == "fvit_demo":
            raise InputError("DDSConfig: noise='q-sample' is a start at t* on the full schedule; the fvit-demo "
                             "chain builds its own noisy start (use noise='paper')", params=("noise",))

    @property
    def variant_flags(self) -> Variant:
        return VARIANTS.get(self.variant)

    @property
    def needs_denoiser(self) -> bool:
        """Whether this configuration calls a denoiser (a variant that denoises, sigma > 0)."""
        return self.variant_flags.denoise and self.sigma > 0
