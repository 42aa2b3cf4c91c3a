"""DDS (Denoised Diffusion Smoothing, Hu et al. 2024, Algorithm 1) as a batched sampler.

For an image x in [0, 1] and each of m samples (model units: u -> 2u - 1, pixel sigma -> 2 sigma):

    delta ~ N(0, sigma^2 I)                       (randomized smoothing, pixel space)
    x_noisy = 2 (x + delta) - 1
    x_t* = sqrt(abar_t*) x_noisy                  (Carlini et al.'s paper: matches q(x_t* | x))
    x_hat = denoise(x_t*; t*)                     (one-shot x0 / DDIM / ancestral / fvit-demo)
    sample = (clamp(x_hat, -1, 1) + 1) / 2

All B x m samples go through the denoiser together (chunked to `max_batch`). Noise is per image
(`fvit.seeding`): without an explicit generator, image i draws all its random numbers (the DDS
noise and any sampler noise) from its own generator seeded by `stable_seed(seed, key_i)`, where
`key_i` is a caller-given id (e.g. the data-set id) or the hash of the image's pixels; so an image's
samples do not depend on the batch size, its position, or the other images, and (seed, key)
reproduces them. An explicit `generator` (one stream for the whole batch, advanced across calls,
as certification uses) is still accepted. sigma = 0 returns the input unchanged (no denoiser), so DDS
with sigma = 0 reduces to the plain model / explanation method.

Noise construction (`noise`, see `NOISES`): "paper" (default) is the formula above, noise std
sqrt(abar_t*) 2 sigma in model units at t*; "q-sample" is Carlini et al.'s released code,
x_t* = q_sample(2x - 1, t*) = sqrt(abar_t*) (2x - 1) + sqrt(1 - abar_t*) eps, i.e. the same formula
with the pixel std sigma replaced by sqrt(1 - abar_t*) / (2 sqrt(abar_t*)) (t* is a whole step, so
the two differ: 1.6 % more variance for q-sample at 8/255).

Reverse-step variance of the stochastic samplers (`variance`): "auto" (default) uses the variance
the network predicts when the denoiser has one (`Denoiser.learned_variance`: guided-diffusion's
learn_sigma checkpoints, diffusers "learned_range" models), as guided-diffusion's p_sample does,
and the fixed-small posterior variance otherwise; "learned" / "fixed-small" force one.
`DDS.sampler_variance` says which is used.

Ablations (paper Table 2) are `variant`s:
    full        noise + denoiser (DDS)
    no-noise    denoiser only, at t*, on the clean/attacked input (Table 2 "-smoothing";
                ancestral samplers still inject their own per-step noise)
    no-denoise  noise only, clamped to [0, 1] (Table 2 "-denoising"; Cohen et al. smoothing)
    none        the input itself (Table 2 "-both")
"""

from __future__ import annotations

import contextlib
from typing import Callable, Protocol, runtime_checkable

import torch

from fvit.denoise.base import Denoiser, resize_images
from fvit.denoise.samplers import Sampler, parse_sampler, randn_like
from fvit.denoise.timestep import timestep_for_sigma
from fvit.dds.memo import DenoiseMemo
from fvit.errors import FvitError
from fvit.memory import (chunk_from_free_memory, cpu_chunk_from_activation, largest_activation_bytes,
                         measure_item_bytes)
from fvit.dds.config import DEFAULT_MAX_BATCH, VARIANTS, DDSConfig, Variant  # noqa: F401 (re-exported)
from fvit.seeding import PerImageGenerator, noise_keys, stable_seed
from fvit.utils import check_images01, module_device


AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCAST_NAMES = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_autocast(spec: str | None, device: torch.device | str) -> torch.dtype | None:
    """The denoiser's autocast dtype for ``spec`` on ``device``: an explicit name of `AUTOCAST`, or
    "auto" (DDS's default): bf16 on CUDA (fp16 where the GPU has no bf16), none elsewhere (on a CPU
    bf16 convolutions are slower than fp32 and the reference runs fp32 there)."""
    if spec != "auto":
        return AUTOCAST["none" if spec is None else spec]
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class DDS:
    """Denoised diffusion smoothing around a `Denoiser` (see module docstring), configured by one
    `DDSConfig` (every setting; recorded whole by `settings()`).

    ``DDS(denoiser, config)``, or ``DDS(denoiser, sigma=..., samples=...)`` (keywords are
    `DDSConfig` fields applied to ``config`` or the defaults). ``denoiser`` may be None when the
    configuration needs none (sigma = 0, variants 'no-denoise' / 'none').
    memo: an explicit `fvit.dds.memo.DenoiseMemo` (None: none): several methods explaining the same
        batch with the same generator state then share one denoising pass. Experiments that
        explain a batch with several methods create one.
    """

    def __init__(self, denoiser: Denoiser | None, config: DDSConfig | None = None, *,
                 memo: DenoiseMemo | None = None, **changes):
        config = config if config is not None else DDSConfig()
        if not isinstance(config, DDSConfig):
            raise FvitError(f"DDS: config must be a DDSConfig, got {type(config).__name__}")
        if memo is not None and not isinstance(memo, DenoiseMemo):
            raise FvitError(f"DDS: memo must be a DenoiseMemo or None, got {memo!r}", params=("memo",))
        self.config = config.replace(**changes) if changes else config
        self.denoiser = denoiser
        self.memo = memo
        self.sampler = parse_sampler(self.config.denoise)
        self._item_bytes: dict[tuple, float] = {}
        if self.needs_denoiser and denoiser is None:
            raise FvitError(f"DDS variant {self.variant_name!r} with sigma > 0 needs a denoiser",
                            params=("denoiser",))
        self.t_star = (timestep_for_sigma(self.sigma, denoiser.schedule, self.mapping)
                       if denoiser is not None else None)
        learned = bool(getattr(denoiser, "learned_variance", False))
        if self.variance == "learned" and denoiser is not None and not learned:
            raise FvitError("variance='learned' needs a denoiser that predicts its variance "
                            "(guided-diffusion learn_sigma, diffusers learned_range)", params=("variance",))
        self._use_learned = learned and self.variance != "fixed-small"

    def replace(self, **changes) -> "DDS":
        """A DDS on the same denoiser with ``config.replace(**changes)`` (a fresh memo of the same
        capacity when this one has a memo)."""
        memo = DenoiseMemo(self.memo.capacity, self.memo.max_bytes) if self.memo is not None else None
        return DDS(self.denoiser, self.config.replace(**changes), memo=memo)

    # -- the configuration, read-only ------------------------------------------------------
    sigma = property(lambda self: self.config.sigma)
    samples = property(lambda self: self.config.samples)
    seed = property(lambda self: self.config.seed)
    mapping = property(lambda self: self.config.mapping)
    noise = property(lambda self: self.config.noise)
    variance = property(lambda self: self.config.variance)
    resize = property(lambda self: self.config.resize)
    autocast_spec = property(lambda self: self.config.autocast)
    variant_name = property(lambda self: self.config.variant)
    variant = property(lambda self: self.config.variant_flags)
    auto_batch = property(lambda self: self.config.max_batch == "auto")

    @property
    def max_batch(self) -> int:
        """Inputs per classifier / explanation call (and per denoiser call unless 'auto' on CUDA)."""
        return DEFAULT_MAX_BATCH if self.auto_batch else int(self.config.max_batch)

    @property
    def autocast(self) -> torch.dtype | None:
        """The autocast dtype of the denoiser calls (None: the denoiser's own dtype), resolved for
        the denoiser's current device."""
        device = self.denoiser.device if self.denoiser is not None else torch.device("cpu")
        return resolve_autocast(self.autocast_spec, device)

    @property
    def sampler_variance(self) -> str:
        """The reverse-step variance actually used: 'learned', 'fixed-small', or 'none' when the
        sampler draws no reverse-step noise (one-shot, DDIM) or no denoiser runs."""
        if self.denoiser is None or not self.sampler.stochastic:
            return "none"
        return "learned" if self._use_learned else "fixed-small"

    @property
    def noise_std(self) -> float:
        """The pixel-space std of the smoothing noise: sigma ("paper"), or the std that makes
        sqrt(abar_t*) 2 (x + delta) - ... equal q_sample at t* ("q-sample")."""
        if self.noise == "q-sample" and self.variant.denoise and self.t_star is not None and self.sigma > 0:
            return float(self.denoiser.schedule.noise_to_signal[self.t_star]) / 2
        return self.sigma

    def settings(self) -> dict:
        """The whole config plus what it resolved to (t*, noise std, sampler variance, the
        autocast that runs), for results files."""
        return {**self.config.to_dict(), "t_star": self.t_star, "noise_std": self.noise_std,
                "sampler_variance": self.sampler_variance,
                "autocast_used": AUTOCAST_NAMES[self.autocast] if self.needs_denoiser else "none"}

    @property
    def needs_denoiser(self) -> bool:
        return self.config.needs_denoiser

    def __repr__(self) -> str:
        return (f"DDS(sigma={self.sigma:.5g}, t*={self.t_star} [{self.mapping}], "
                f"denoise={self.sampler.spec}, variance={self.sampler_variance}, noise={self.noise}, "
                f"samples={self.samples}, variant={self.variant_name})")

    # -- the denoiser, chunked -------------------------------------------------------------
    def chunk_size(self, x_t: torch.Tensor) -> int:
        """Denoiser inputs per call for inputs like ``x_t``: ``max_batch``, or with
        ``max_batch="auto"``: on CUDA as many as fit in 70 % of the free memory, on a CPU as many as
        keep the call's largest activation under `fvit.memory.CPU_DENOISER_CHUNK_BYTES` (measured
        once per input shape with forward hooks on one input)."""
        if not self.auto_batch:
            return self.max_batch
        key = (tuple(x_t.shape[1:]), x_t.dtype, x_t.device, self.autocast)
        if key not in self._item_bytes:
            eps = self._eps_fn(chunk=1)
            t = torch.full((2,), self.t_star or 0, device=x_t.device, dtype=torch.long)
            with torch.inference_mode():
                if x_t.device.type == "cuda":
                    self._item_bytes[key] = measure_item_bytes(
                        lambda k: eps(x_t[:1].expand(k, *x_t.shape[1:]), t[:k]), x_t.device)
                else:
                    self._item_bytes[key] = largest_activation_bytes(lambda: eps(x_t[:1], t[:1]), self.denoiser)
        if x_t.device.type == "cuda":
            return chunk_from_free_memory(self._item_bytes[key], x_t.device, fallback=self.max_batch)
        return cpu_chunk_from_activation(self._item_bytes[key])

    def _eps_fn(self, chunk: int | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        den, ac = self.denoiser, self.autocast
        learned = self._use_learned and self.sampler.stochastic

        def eps(x_t: torch.Tensor, t: torch.Tensor):
            mb = chunk or self.chunk_size(x_t)
            ctx = (torch.autocast(device_type=x_t.device.type, dtype=ac) if ac is not None
                   else contextlib.nullcontext())
            with ctx:
                if learned:  # (eps, v) pairs: the samplers use v as the reverse-step variance
                    parts = [den.predict_eps_var(x_t[i:i + mb], t[i:i + mb]) for i in range(0, x_t.shape[0], mb)]
                    return (torch.cat([p[0] for p in parts]).to(x_t.dtype),
                            torch.cat([p[1] for p in parts]).to(x_t.dtype))
                parts = [den.predict_eps(x_t[i:i + mb], t[i:i + mb]) for i in range(0, x_t.shape[0], mb)]
            return torch.cat(parts).to(x_t.dtype)

        return eps

    def _run(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        check_images01(images, tol=1e-4, floating=False)
        b, m = images.shape[0], self.samples
        x = images.unsqueeze(1).expand(b, m, *images.shape[1:]).reshape(b * m, *images.shape[1:])
        if self.sigma == 0 or not (self.variant.noise or self.variant.denoise):
            return x.clone().view(b, m, *images.shape[1:])
        x = x.float()
        if self.variant.noise:
            x = x + self.noise_std * randn_like(x, generator)
        if not self.variant.denoise:
            return x.clamp(0, 1).to(images.dtype).view(b, m, *images.shape[1:])
        den = self.denoiser
        x_noisy = (2 * x - 1).to(den.device)
        h, w = x_noisy.shape[-2:]
        size = den.working_size(h, w, self.resize)
        x0 = self.sampler(self._eps_fn(), den.schedule, resize_images(x_noisy, size), self.t_star, generator)
        x0 = resize_images(x0, (h, w))
        out = ((x0.clamp(-1, 1) + 1) / 2).clamp(0, 1)
        return out.to(device=images.device, dtype=images.dtype).view(b, m, *images.shape[1:])

    def noise_seeds(self, keys) -> list[int]:
        """The seed of each image's noise generator, `stable_seed(self.seed, key)`."""
        return [stable_seed(self.seed, str(k)) for k in keys]

    def _generator(self, images: torch.Tensor, generator, keys=None):
        if generator is not None:
            if keys is not None:
                raise FvitError("DDS: pass either a generator (one stream for the batch) or per-image keys")
            return generator
        return PerImageGenerator(self.noise_seeds(noise_keys(images, keys)), images.device)

    # -- public -------------------------------------------------------------------------------
    def denoise(self, images01: torch.Tensor, generator: torch.Generator | None = None,
                keys=None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, m, 3, H, W) denoised samples in [0, 1]. Without a
        generator, each image's noise comes from its own generator seeded by (seed, key): `keys`
        (one str per image, e.g. data-set ids) or the images' content hashes (same image -> same
        samples, whatever the batch)."""
        g = self._generator(images01, generator, keys)

        def compute() -> torch.Tensor:
            with torch.inference_mode():
                return self._run(images01, g)

        # the memo pays only for denoiser passes; noise alone is cheaper than comparing images
        if self.memo is not None and self.needs_denoiser:
            out = self.memo.get_or_compute(images01, g, self.denoiser, compute)
        else:
            out = compute()
        return out.clone()  # a normal tensor: callers may feed it to autograd (explanations)

    def denoise_differentiable(self, images01: torch.Tensor,
                               generator: torch.Generator | None = None, keys=None) -> torch.Tensor:
        """As `denoise`, with autograd through the denoiser (for adaptive attacks)."""
        g = self._generator(images01, generator, keys)
        with torch.enable_grad():
            return self._run(images01, g)

    def logits(self, model, samples: torch.Tensor) -> torch.Tensor:
        """(B, m, C) logits of `model` on samples (B, m, 3, H, W) (inference mode, chunked), on the
        model's device (the samples are moved there chunk by chunk)."""
        b, m = samples.shape[:2]
        device = module_device(model, samples.device)
        with torch.inference_mode():
            logits = torch.cat([model(part.to(device)) for part in samples.flatten(0, 1).split(self.max_batch)])
        return logits.view(b, m, -1).clone()

    def sample_logits(self, model, images01: torch.Tensor, generator=None, keys=None) -> torch.Tensor:
        """(B, m, C) logits of `model` on the denoised samples (inference mode, chunked)."""
        return self.logits(model, self.denoise(images01, generator, keys))

    def predict_counts(self, model, images01: torch.Tensor, generator=None, keys=None) -> torch.Tensor:
        """(B, C) long: how many of the m denoised samples `model` assigns to each class."""
        logits = self.sample_logits(model, images01, generator, keys)
        return votes(logits)

    def smoothed_predict(self, model, images01: torch.Tensor, generator=None, keys=None) -> torch.Tensor:
        """(B,) majority vote over the samples (ties -> the lowest class index)."""
        return self.predict_counts(model, images01, generator, keys).argmax(dim=1)


def class_counts(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, m) long per-sample classes -> (B, num_classes) long counts (one scatter, no class loop).
    The one vote count of fvit: the smoothed prediction and the certificates use it."""
    pred = pred.reshape(pred.shape[0], -1).long()
    return torch.zeros(pred.shape[0], int(num_classes), dtype=torch.long, device=pred.device).scatter_add_(
        1, pred, torch.ones_like(pred))


def votes(logits: torch.Tensor) -> torch.Tensor:
    """(B, m, C) logits -> (B, C) long class counts of the per-sample argmax."""
    return class_counts(logits.argmax(dim=-1), logits.shape[-1])


@runtime_checkable
class Smoother(Protocol):
    """What certification, attacks and explainers use of a smoother (`DDS` implements it; test
    doubles implement it too). ``denoise`` / ``denoise_differentiable``: (B, 3, H, W) in [0, 1]
    -> (B, m, 3, H, W) samples; without a generator each image draws from its own generator keyed
    by ``keys`` (or its content hash); with one, the batch shares that stream."""

    sigma: float
    samples: int
    max_batch: int

    def denoise(self, images01: torch.Tensor, generator: torch.Generator | None = None,
                keys=None) -> torch.Tensor: ...

    def denoise_differentiable(self, images01: torch.Tensor, generator: torch.Generator | None = None,
                               keys=None) -> torch.Tensor: ...

    def logits(self, model, samples: torch.Tensor) -> torch.Tensor: ...

    def smoothed_predict(self, model, images01: torch.Tensor, generator=None, keys=None) -> torch.Tensor: ...


def as_smoother(dds) -> Smoother:
    """``dds`` itself when it implements `Smoother`, else a one-line `FvitError`."""
    if not isinstance(dds, Smoother):
        missing = [n for n in ("sigma", "samples", "max_batch", "denoise", "denoise_differentiable", "logits",
                               "smoothed_predict") if not hasattr(dds, n)]
        raise FvitError(f"{type(dds).__name__} is not a smoother (fvit.dds.Smoother): missing {', '.join(missing)}")
    return dds
