"""The one small interface every denoiser backend implements.

A `Denoiser` is an eps-prediction diffusion model in *model units* ([-1, 1]): given x_t and a
0-based timestep t of its own `schedule`, `predict_eps(x_t, t)` returns the noise estimate eps_hat
with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. Everything else (t*, samplers, DDS) only uses
this interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fvit.denoise.schedule import NoiseSchedule
from fvit.errors import InputError


class Denoiser(nn.Module):
    """Base class. Subclasses set `schedule`, `image_size` and implement `_eps(x_t, t_long)`.

    image_size: the native resolution (int) or None when any size works.
    size_multiple: input H and W must be multiples of this for the network to run unchanged.
    flexible: True when the network also runs (well) at other sizes that are multiples of
        `size_multiple` (e.g. guided-diffusion's 256 model at 224, as Carlini et al. use it).
    learned_variance: True when the network also predicts its reverse-step variance as
        guided-diffusion's learn_sigma / diffusers' "learned_range" models do: a second output
        half v in [-1, 1] that interpolates the log-variance between the posterior variance and
        beta, frac = (v + 1) / 2 (`predict_eps_var`; used by the ancestral samplers).
    """

    schedule: NoiseSchedule
    image_size: int | None = None
    size_multiple: int = 1
    flexible: bool = True
    learned_variance: bool = False

    def __init__(self, schedule: NoiseSchedule, image_size: int | None = None,
                 size_multiple: int = 1, flexible: bool = True):
        super().__init__()
        self.schedule = schedule
        self.image_size = image_size
        self.size_multiple = int(size_multiple)
        self.flexible = flexible

    # -- to implement -------------------------------------------------------------------------
    def _eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _eps_var(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, v) with v the learned-variance output; backends with `learned_variance` override it."""
        return self._eps(x_t, t), None

    # -- public ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        if p is None:
            b = next(self.buffers(), None)
            return b.device if b is not None else torch.device("cpu")
        return p.device

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def predict_eps(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """eps_hat for x_t (B, 3, H, W) in model units at 0-based timestep(s) t (int or (B,))."""
        return self._eps(x_t, self._check(x_t, t))

    def _check(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The timesteps as a (B,) long tensor; InputError on a bad shape or timestep."""
        if x_t.ndim != 4:
            raise InputError(f"denoiser input must be (B, C, H, W), got shape {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=x_t.device).long()
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if int(t.min()) < 0 or int(t.max()) >= self.schedule.T:
            raise InputError(f"timestep out of range [0, {self.schedule.T - 1}]: {t.tolist()[:4]}")
        return t

    def predict_eps_var(self, x_t: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps_hat, v) for x_t at timestep(s) t, one network call; v (same shape as eps, in
        [-1, 1]) is the learned-variance output, None when the denoiser has none."""
        if not self.learned_variance:
            return self.predict_eps(x_t, t), None
        return self._eps_var(x_t, self._check(x_t, t))

    def forward(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.predict_eps(x_t, t)

    def working_size(self, h: int, w: int, resize: str = "auto") -> tuple[int, int]:
        """The (H, W) the network should see for an (h, w) input.

        resize="auto": pass the input through when the denoiser has no fixed size, or when it is
        flexible and h, w are multiples of `size_multiple` (Carlini: 224 straight into the 256
        model); otherwise resize to the native size. "always": native size whenever it differs
        (the FViT demo's 224 -> 256 -> 224). "never": pass through (error if the net can't run).
        """
        if resize not in ("auto", "always", "never"):
            raise InputError(f"resize must be auto|always|never, got {resize!r}")
        native = self.image_size
        if native is None or resize == "never":
            return h, w
        fits = h % self.size_multiple == 0 and w % self.size_multiple == 0
        if resize == "auto" and self.flexible and fits:
            return h, w
        return native, native


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialiasing (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class FunctionDenoiser(Denoiser):
    """Wrap a plain function eps_fn(x_t, t_long) -> eps as a Denoiser (tests, oracles, adapters)."""

    def __init__(self, eps_fn, schedule: NoiseSchedule, image_size: int | None = None):
        super().__init__(schedule, image_size)
        self.eps_fn = eps_fn

    def _eps(self, x_t, t):
        return self.eps_fn(x_t, t)


class OracleDenoiser(Denoiser):
    """A perfect denoiser for tests and sanity checks: it knows the clean images and returns the
    eps that makes x_t exactly consistent with them, eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t).
    Every sampler then returns x0 exactly. Calls must pass all N rows at once (no chunking)."""

    def __init__(self, clean01: torch.Tensor, schedule: NoiseSchedule):
        super().__init__(schedule, image_size=None)
        self.register_buffer("x0", clean01.float() * 2 - 1)
        self.register_buffer("abar", schedule.alphas_cumprod)

    def _eps(self, x_t, t):
        if x_t.shape[0] != self.x0.shape[0]:
            raise InputError(f"oracle knows {self.x0.shape[0]} images, got a batch of {x_t.shape[0]}")
        a = self.abar.to(x_t.device)[t][:, None, None, None]
        return ((x_t.double() - a.sqrt() * self.x0.double()) / (1 - a).sqrt()).to(x_t.dtype)
