"""Denoising from t* to 0: one-shot x0 prediction, DDIM, ancestral (DDPM) and the FViT demo chain.

All samplers share one signature

    sampler(eps_fn, schedule, x_noisy, t, generator) -> x0_hat in model units, clamped to [-1, 1]

`x_noisy` = 2 (x + delta) - 1 is the smoothed input in model units *before* diffusion scaling
(delta ~ N(0, sigma^2) in pixels, or delta = 0 for the "no-noise" ablation); `t` is the 0-based t*
on `schedule`; `eps_fn(x_t, t_long)` is the (chunked) network, returning eps or, for a denoiser
with a learned variance (`Denoiser.learned_variance`), the pair (eps, v); `generator` supplies any
extra noise. Noise is always drawn for the whole batch at once, so results do not depend on how the
caller chunks the network.

Formulas (abar = alphas_cumprod, model units):
    Carlini start:   x_t* = sqrt(abar_t*) * x_noisy          (variance matches q(x_t*|x))
    x0 prediction:   x0 = clamp((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), -1, 1)
    DDIM (eta = 0):  x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps(x0)      for s < t
    ancestral:       x_s ~ N(c0 x0 + ct x_t, var) with a = abar_t / abar_s, b = 1 - a,
                     c0 = sqrt(abar_s) b / (1 - abar_t), ct = sqrt(a) (1 - abar_s) / (1 - abar_t),
                     var = b (1 - abar_s) / (1 - abar_t)  (posterior "fixed small" variance) when
                     eps_fn returns eps alone; when it returns (eps, v), the learned variance of
                     guided-diffusion's p_sample: log var = f log b + (1 - f) log(posterior var),
                     f = (v + 1) / 2, with b the step's beta on the chain being sampled.
The step timesteps for N steps are round(linspace(t*, 0, N)) (unique, descending); the last step
goes to abar = 1, where both DDIM and ancestral return the x0 prediction, so "ddim:1",
"ancestral:1" and "one-shot" are the same computation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch

from fvit.denoise.schedule import NoiseSchedule
from fvit.errors import FvitError
from fvit.registry import Registry
from fvit.seeding import PerImageGenerator

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def randn_like(x: torch.Tensor, generator: "torch.Generator | PerImageGenerator | None") -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device, moved to x's. A
    `fvit.seeding.PerImageGenerator` draws each image's rows from that image's own stream."""
    if isinstance(generator, PerImageGenerator):
        return generator.randn(x.shape, x.dtype, x.device)
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def _tvec(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)


def predict_x0(eps_fn: EpsFn, x_t: torch.Tensor, t: int, abar: float, model_t: int | None = None):
    """(x0_hat clamped to [-1, 1], eps_hat) at abar_t; the network is called with `model_t`."""
    x0, eps, _ = _predict(eps_fn, x_t, t, abar, model_t)
    return x0, eps


def _predict(eps_fn: EpsFn, x_t: torch.Tensor, t: int, abar: float, model_t: int | None = None):
    """(x0_hat clamped, eps_hat, v or None) (see the module docstring for v)."""
    out = eps_fn(x_t, _tvec(x_t, t if model_t is None else model_t))
    eps, v = out if isinstance(out, tuple) else (out, None)
    eps = eps.to(x_t.dtype)
    x0 = (x_t - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
    return x0.clamp(-1.0, 1.0), eps, v


def step_timesteps(t: int, steps: int) -> list[int]:
    """`steps` descending 0-based timesteps from t to 0 (fewer when t + 1 < steps)."""
    steps = max(1, min(int(steps), int(t) + 1))
    if steps == 1:
        return [int(t)]
    vals = [int(round(t - i * t / (steps - 1))) for i in range(steps)]
    return sorted(set(vals), reverse=True)


def carlini_start(x_noisy: torch.Tensor, schedule: NoiseSchedule, t: int) -> torch.Tensor:
    return math.sqrt(float(schedule.alphas_cumprod[t])) * x_noisy


def _posterior(a_t: float, a_s: float) -> tuple[float, float, float]:
    """q(x_s | x_t, x0) = N(c0 x0 + ct x_t, std^2) between cumulative alphas a_t (at t) and a_s
    (at s < t): returns (c0, ct, std) (Ho et al. eq. 7)."""
    a = a_t / a_s
    return (math.sqrt(a_s) * (1 - a) / (1 - a_t), math.sqrt(a) * (1 - a_s) / (1 - a_t),
            math.sqrt((1 - a) * (1 - a_s) / (1 - a_t)))


def step_std(a_t: float, a_s: float, v: torch.Tensor | None):
    """The reverse-step std from abar a_t to a_s: fixed small (posterior) when v is None, else
    guided-diffusion's learned range exp(0.5 (f log beta + (1 - f) log posterior_var)), f = (v+1)/2."""
    std = _posterior(a_t, a_s)[2]
    if v is None:
        return std
    beta = 1.0 - a_t / a_s
    frac = (v.to(torch.float64) + 1) / 2
    log_var = frac * math.log(beta) + (1 - frac) * math.log(std * std)
    return torch.exp(0.5 * log_var).to(v.dtype)


def _iterate(eps_fn, schedule, x_noisy, t, steps, generator, stochastic: bool):
    abar = schedule.alphas_cumprod
    x = carlini_start(x_noisy, schedule, t)
    ts = step_timesteps(t, steps)
    for i, ti in enumerate(ts):
        a_t = float(abar[ti])
        x0, _, v = _predict(eps_fn, x, ti, a_t)
        if i == len(ts) - 1:
            break  # next abar is 1: both samplers return x0
        a_s = float(abar[ts[i + 1]])
        if stochastic:
            c0, ct, _ = _posterior(a_t, a_s)
            x = c0 * x0 + ct * x + step_std(a_t, a_s, v) * randn_like(x, generator)
        else:
            eps0 = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)  # eps consistent with clamped x0
            x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps0
    return x0


@dataclass(frozen=True)
class Sampler:
    """A parsed denoising spec; call it with (eps_fn, schedule, x_noisy, t, generator)."""

    kind: str
    steps: int = 1

    def __call__(self, eps_fn: EpsFn, schedule: NoiseSchedule, x_noisy: torch.Tensor, t: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return SAMPLERS.get(self.kind)(self, eps_fn, schedule, x_noisy, t, generator)

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws reverse-step noise (so its variance choice matters)."""
        return self.kind in STOCHASTIC

    @property
    def spec(self) -> str:
        if self.kind == "one_shot":
            return "one-shot"
        return f"{self.kind.replace('_', '-')}:{self.steps}"


SAMPLERS: Registry[Callable] = Registry("denoising sampler")


@SAMPLERS.register("one-shot", aliases=("oneshot", "carlini"))
def _one_shot(s, eps_fn, schedule, x_noisy, t, generator):
    """Carlini et al.: a single x0 prediction at t*."""
    x_t = carlini_start(x_noisy, schedule, t)
    return predict_x0(eps_fn, x_t, t, float(schedule.alphas_cumprod[t]))[0]


@SAMPLERS.register("ddim")
def _ddim(s, eps_fn, schedule, x_noisy, t, generator):
    return _iterate(eps_fn, schedule, x_noisy, t, s.steps, generator, stochastic=False)


@SAMPLERS.register("ancestral", aliases=("ddpm", "steps"))
def _ancestral(s, eps_fn, schedule, x_noisy, t, generator):
    return _iterate(eps_fn, schedule, x_noisy, t, s.steps, generator, stochastic=True)


@SAMPLERS.register("fvit-demo")
def _fvit_demo(s, eps_fn, schedule, x_noisy, t, generator):
    """The FViT authors' demo (Carlini's `multistep` code path on a respaced chain), faithfully:

    1. the chain is `schedule.respace(K)` (K = 250 by default; index i -> timestep round(i*999/249));
    2. noise is added a second time: x = q_sample(x_noisy, r) = sqrt(abar'_r) x_noisy +
       sqrt(1 - abar'_r) eps with r = t* (the demo uses t* directly as a respaced index,
       clipped to [0, K-1]) — on top of the smoothing noise already in x_noisy;
    3. ancestral steps at respaced indices r-1, ..., 0 (`for i in range(t)[::-1]`: t* network
       calls, the first one labelled one index below the one x was sampled at), each predicting
       x0 (clipped), sampling the posterior (fixed-small variance, or the learned variance when
       eps_fn returns it, as the demo's p_sample on the learn_sigma checkpoint does) and adding no
       noise at index 0. The final sample is returned (clamped to [-1, 1]).
    """
    chain = schedule.respace(s.steps)
    abar = chain.alphas_cumprod
    r = max(0, min(int(t), chain.T - 1))
    a_r = float(abar[r])
    x = math.sqrt(a_r) * x_noisy + math.sqrt(1 - a_r) * randn_like(x_noisy, generator)
    for i in range(r - 1, -1, -1):
        a_t = float(abar[i])
        a_s = float(abar[i - 1]) if i > 0 else 1.0
        x0, _, v = _predict(eps_fn, x, i, a_t, model_t=int(chain.timesteps[i]))
        c0, ct, _ = _posterior(a_t, a_s)
        x = c0 * x0 + ct * x
        if i > 0:
            x = x + step_std(a_t, a_s, v) * randn_like(x, generator)
    return x.clamp(-1.0, 1.0)


STOCHASTIC = ("ancestral", "fvit_demo")
_DEFAULT_STEPS = {"one_shot": 1, "ddim": 10, "ancestral": 10, "fvit_demo": 250}


def parse_sampler(spec: "str | Sampler") -> Sampler:
    """'one-shot' | 'ddim:N' | 'ancestral:N' | 'N-steps' (= ancestral:N) | 'fvit-demo[:K]'."""
    if isinstance(spec, Sampler):
        return spec
    text = str(spec).strip().lower()
    m = re.fullmatch(r"(\d+)[-_ ]?steps?", text)
    if m:
        name, arg = "ancestral", m.group(1)
    else:
        name, _, arg = text.partition(":")
    kind = SAMPLERS.resolve(name)
    try:
        steps = int(arg) if arg else _DEFAULT_STEPS[kind]
    except ValueError:
        raise FvitError(f"denoise spec {spec!r}: steps must be an integer (e.g. ddim:10)") from None
    from fvit.denoise.schedule import MAX_SCHEDULE_STEPS

    if not 1 <= steps <= MAX_SCHEDULE_STEPS:
        raise FvitError(f"denoise spec {spec!r}: steps must be in [1, {MAX_SCHEDULE_STEPS}] (at most the schedule's T "
                        "are used)", params=("denoise",))
    return Sampler(kind, 1 if kind == "one_shot" else steps)
