"""Diffusion noise schedules (DDPM, Ho et al. 2020) in float64.

Index convention (used everywhere in fvit.denoise): timesteps are **0-based array indices**
t = 0 .. T-1, exactly as in OpenAI guided-diffusion and diffusers. `betas[t]` is the variance of
the step that produces x_t from x_{t-1} (x_{-1} = x_0 data), and

    alphas_cumprod[t] = abar_t = prod_{s=0..t} (1 - beta_s),
    q(x_t | x) = N(sqrt(abar_t) x, (1 - abar_t) I).

So even t = 0 carries a little noise (abar_0 = 1 - beta_0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fvit.errors import FvitError
from fvit.registry import Registry


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance schedule. `betas` is a float64 1-D tensor of length T.

    `timesteps` maps each index of this (possibly respaced) chain to the timestep the network was
    trained with (identity for an original schedule; see `respace`).
    """

    betas: torch.Tensor
    name: str = "custom"
    timesteps: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        b = torch.as_tensor(self.betas, dtype=torch.float64).flatten()
        if b.numel() == 0 or not bool(((b > 0) & (b < 1)).all()):
            raise FvitError("noise schedule: betas must be a non-empty vector in (0, 1)")
        object.__setattr__(self, "betas", b)
        ts = torch.arange(b.numel()) if self.timesteps is None else torch.as_tensor(self.timesteps)
        object.__setattr__(self, "timesteps", ts.long())

    @property
    def T(self) -> int:  # noqa: N802 - the usual symbol
        return int(self.betas.numel())

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s<=t} (1 - beta_s), float64."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def noise_to_signal(self) -> torch.Tensor:
        """sqrt(1 - abar_t) / sqrt(abar_t): the std of x_t / sqrt(abar_t) around x (model units)."""
        ab = self.alphas_cumprod
        return torch.sqrt(1.0 - ab) / torch.sqrt(ab)

    def respace(self, steps: int) -> "NoiseSchedule":
        """A `steps`-step chain on evenly spaced original timesteps, with betas
        1 - abar_{t_i} / abar_{t_{i-1}} so that the respaced abar equals the original one at t_i.

        The timesteps are exactly guided-diffusion's `space_timesteps(T, "steps")`: a float
        position starts at 0 and grows by (T-1)/(steps-1) per step (accumulated, not i * stride),
        each rounded with Python's round (half to even). Accumulation matters where i * stride is a
        half-integer: for T = 1000 the two rules differ for 278 of the step counts 1..1000 (e.g.
        steps = 45 takes 499 where round(22 * 999/44 = 499.5) gives 500); steps = 250 agrees."""
        steps = int(steps)
        if not 1 <= steps <= self.T:
            raise FvitError(f"respace: steps must be in [1, {self.T}], got {steps}")
        idx = sorted(set(spaced_timesteps(self.T, steps)))
        idx_t = torch.tensor(idx, dtype=torch.long)
        ab = self.alphas_cumprod[idx_t]
        prev = torch.cat([ab.new_ones(1), ab[:-1]])
        return NoiseSchedule(1.0 - ab / prev, name=f"{self.name}/respaced{steps}",
                             timesteps=self.timesteps[idx_t])


def spaced_timesteps(T: int, steps: int) -> list[int]:
    """The original timesteps a `steps`-step respaced chain keeps (see `NoiseSchedule.respace`)."""
    stride = 1.0 if steps <= 1 else (T - 1) / (steps - 1)
    pos, out = 0.0, []
    for _ in range(steps):
        out.append(round(pos))
        pos += stride
    return out


SCHEDULES: Registry = Registry("noise schedule")


@SCHEDULES.register("linear")
def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """DDPM linear schedule: beta = linspace(beta_start, beta_end, T) in float64.

    guided-diffusion scales the endpoints by 1000/T so that any T gives the same curve; for T = 1000
    (all released checkpoints) both agree."""
    scale = 1000.0 / T
    return NoiseSchedule(torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64),
                         name=f"linear{T}")


@SCHEDULES.register("cosine")
def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol & Dhariwal cosine schedule: abar(u) = cos^2((u + s)/(1 + s) * pi/2),
    beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return NoiseSchedule(torch.clamp(1 - f[1:] / f[:-1], max=max_beta), name=f"cosine{T}")


#: Longest schedule accepted (released DDPMs use 1000 steps; 4000 for some improved-DDPM models).
MAX_SCHEDULE_STEPS = 1_000_000


def check_schedule_length(T, what: str = "noise schedule") -> int:
    """T as an int in [1, MAX_SCHEDULE_STEPS]; FvitError naming `what` (params: T) otherwise."""
    if isinstance(T, bool) or not isinstance(T, (int, float)) or T != T or int(T) != T \
            or not 1 <= T <= MAX_SCHEDULE_STEPS:
        raise FvitError(f"{what}: T={T!r} must be an integer in [1, {MAX_SCHEDULE_STEPS}] (released DDPMs: 1000)",
                        params=("T",))
    return int(T)


def get_schedule(name: str = "linear", T: int = 1000) -> NoiseSchedule:
    return SCHEDULES.get(name)(check_schedule_length(T))
