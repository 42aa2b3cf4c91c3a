"""Threat models: the l_inf and l_2 balls around an image, intersected with the [0, 1] box.

Each ball knows three things, all batched over the leading dimension:
- ``ascent_direction(grad)``: the steepest-ascent unit step for that norm
  (l_inf: ``sign(g)``; l_2: ``g / ||g||_2`` per image);
- ``project(delta, eps)``: the Euclidean projection of a perturbation onto the ball
  (l_inf: clamp to ``[-eps, eps]``; l_2: rescale to norm ``eps`` when longer);
- ``random_start(like, eps, generator)``: a seeded random initial perturbation inside the ball.

``project_to_threat_model(x, adv, eps)`` projects onto the ball and then clamps into [0, 1]. Because
``x`` is inside the box, the box clamp only shrinks each ``|delta_i|``, so the result stays inside the
ball as well (up to one float rounding of ``x + delta``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fvit.attacks.base import PIXEL_MAX, PIXEL_MIN
from fvit.registry import Registry

L2_NORM_FLOOR = 1e-12
"""Added to ``||g||_2`` so that a zero gradient gives a zero step instead of NaN."""


def _draw(kind: str, generator, shape, like: Tensor) -> Tensor:
    """``torch.rand`` / ``torch.randn`` of `shape` from `generator`: a ``torch.Generator``, or a
    `fvit.seeding.PerImageGenerator` (each image's rows from its own stream)."""
    if hasattr(generator, "generators"):  # PerImageGenerator
        return getattr(generator, kind)(shape, dtype=like.dtype, device=like.device)
    fn = torch.rand if kind == "rand" else torch.randn
    return fn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _per_image_l2(t: Tensor) -> Tensor:
    """``||t_i||_2`` per image, shaped ``(B, 1, 1, 1)`` (any trailing rank) for broadcasting."""
    norms = t.flatten(1).norm(p=2, dim=1)
    return norms.view(-1, *([1] * (t.ndim - 1)))


@dataclass(frozen=True)
class LinfBall:
    name: str = "linf"

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)

    def random_start(self, like: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        """Uniform in the cube: ``delta ~ U[-eps, eps]^d`` (Madry et al.; torchattacks' PGD)."""
        u = _draw("rand", generator, like.shape, like)
        return (2 * u - 1) * eps


@dataclass(frozen=True)
class L2Ball:
    name: str = "l2"

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return grad / (_per_image_l2(grad) + L2_NORM_FLOOR)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        norms = _per_image_l2(delta)
        factor = torch.where(norms > eps, eps / norms.clamp_min(L2_NORM_FLOOR), torch.ones_like(norms))
        return delta * factor

    def random_start(self, like: Tensor, eps: float, generator: torch.Generator) -> Tensor:
        """``delta = eps * r * z / ||z||_2`` with ``z ~ N(0, I)``, ``r ~ U[0, 1]`` per image.

        The same convention as torchattacks' PGDL2 (not uniform in the ball's volume, which in high
        dimension would put every start on the sphere).
        """
        z = _draw("randn", generator, like.shape, like)
        r = _draw("rand", generator, (like.shape[0],) + (1,) * (like.ndim - 1), like)
        return eps * r * z / (_per_image_l2(z) + L2_NORM_FLOOR)


NORMS: Registry[LinfBall | L2Ball] = Registry("attack norm")
NORMS.register("linf", LinfBall(), aliases=("l_inf", "inf"))
NORMS.register("l2", L2Ball(), aliases=("l_2", "2"))


def get_norm(name: str) -> LinfBall | L2Ball:
    """The threat model for 'linf' or 'l2' (aliases: 'inf', 'l_inf', '2', 'l_2')."""
    return NORMS.get(name)


def project_to_threat_model(images01: Tensor, adv: Tensor, eps: float, norm: str) -> Tensor:
    """Project `adv` onto ``{x' : ||x' - x|| <= eps} ∩ [0, 1]^d`` (ball first, then box)."""
    ball = get_norm(norm)
    delta = ball.project(adv - images01, eps)
    return (images01 + delta).clamp(PIXEL_MIN, PIXEL_MAX)
