"""Built-in gradient attacks: PGD (l_inf and l_2) and FGSM. No torchattacks needed.

PGD (Madry et al. 2018), untargeted cross-entropy ``L``, in [0, 1] pixel space::

    x_0     = Proj(x + delta_0)          delta_0 random in the ball (or 0 without random start)
    x_{t+1} = Proj(x_t + alpha * d(grad_x L(f(x_t), y)))      t = 0 .. steps-1

with ``d = sign`` for l_inf and ``d = g / ||g||_2`` for l_2, and ``Proj`` the projection onto the
eps-ball around ``x`` followed by clamping into [0, 1]. FGSM (Goodfellow et al. 2015) is the single
step ``Proj(x + eps * d(grad))`` from the clean image (no random start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from fvit.attacks.base import Attack, ForwardFn, cross_entropy_gradient
from fvit.attacks.norms import get_norm, project_to_threat_model
from fvit.seeding import PerImageGenerator, stable_seed
from fvit.utils import seeded_generator


@dataclass(frozen=True)
class GradientAttack(Attack):
    """Iterated projected gradient ascent on the cross-entropy (PGD; FGSM when steps=1, no start).

    Fields: ``steps`` iterations of size ``step_size`` (absolute, in [0, 1] pixel units for l_inf,
    in l_2 units for l_2); ``random_start`` draws the initial perturbation from a
    ``torch.Generator`` seeded with ``seed`` on the input's device, so runs are reproducible;
    given ``keys`` (one per image), each image's start comes from its own generator seeded with
    ``stable_seed(seed, 'attack-start|<key>')``, independent of the batch.
    """

    steps: int = 10
    step_size: float = 2 / 255
    random_start: bool = True
    seed: int = 0

    per_image: ClassVar[bool] = True

    def perturb(self, forward_fn: ForwardFn, images01: Tensor, labels: Tensor, keys=None) -> Tensor:
        ball = get_norm(self.norm)
        adv = images01
        if self.random_start:
            if keys is not None:  # each image's start from its own stream (fvit.seeding.ATTACK_START_RULE)
                generator = PerImageGenerator([stable_seed(self.seed, f"attack-start|{k}") for k in keys],
                                              images01.device)
            else:
                generator = seeded_generator(self.seed, images01.device)
            start = ball.random_start(images01, self.eps, generator)
            adv = project_to_threat_model(images01, images01 + start, self.eps, self.norm)
        for _ in range(self.steps):
            grad = cross_entropy_gradient(forward_fn, adv, labels)
            adv = adv + self.step_size * ball.ascent_direction(grad).to(adv.dtype)
            adv = project_to_threat_model(images01, adv, self.eps, self.norm)
        return adv
