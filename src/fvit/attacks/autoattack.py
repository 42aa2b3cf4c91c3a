"""AutoAttack (Croce & Hein 2020) through torchattacks, an optional extra: ``pip install 'fvit[attacks]'``.

torchattacks pins an old ``requests``, so it is imported lazily, only when an AutoAttack runs.
torchattacks wants an ``nn.Module`` with at least one parameter (it reads the device from
``next(model.parameters())``) and toggles ``.eval()`` on it; ``ForwardModule`` adapts any
``forward_fn`` (a plain function, an expectation-over-noise forward, a model) to that.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor, nn

from fvit.attacks.base import Attack, ForwardFn, owning_module
from fvit.attacks.norms import project_to_threat_model
from fvit.errors import FvitError

TORCHATTACKS_MODULE = "torchattacks"
TORCHATTACKS_NORM_NAMES = {"linf": "Linf", "l2": "L2"}
AUTOATTACK_VERSIONS = ("standard", "plus", "rand")


def import_torchattacks() -> ModuleType:
    """Import torchattacks or raise FvitError telling the user how to install the extra."""
    try:
        return importlib.import_module(TORCHATTACKS_MODULE)
    except ImportError as e:
        raise FvitError(
            "attack 'autoattack' needs the optional torchattacks package: "
            "pip install 'fvit[attacks]'"
        ) from e


class ForwardModule(nn.Module):
    """``nn.Module`` around a ``forward_fn`` (logits of [0, 1] images), for libraries that want one.

    A module ``forward_fn`` (or the owner of a bound method) is registered as a child so that
    ``.eval()`` / ``.train()`` reach it. A zero-size, frozen parameter on the images' device and
    dtype answers ``next(module.parameters()).device`` (it is the first parameter).
    """

    def __init__(self, forward_fn: ForwardFn, like: Tensor):
        super().__init__()
        self.device_anchor = nn.Parameter(
            torch.empty(0, device=like.device, dtype=like.dtype), requires_grad=False
        )
        self.wrapped = owning_module(forward_fn)  # a child module (None for a plain function)
        self._forward_fn = (forward_fn,)  # in a tuple: not registered a second time

    def forward(self, images01: Tensor) -> Tensor:
        return self._forward_fn[0](images01)


@dataclass(frozen=True)
class AutoAttack(Attack):
    """torchattacks' ``AutoAttack(model, norm, eps, version, n_classes, seed)``.

    ``version``: 'standard' (APGD-CE, APGD-T, FAB-T, Square), 'plus' or 'rand' (APGD with EOT, for
    randomised defences). ``n_classes`` defaults to the width of ``forward_fn``'s logits. The output
    is re-projected onto the threat model as a guard.
    """

    version: str = "standard"
    seed: int = 0
    n_classes: int | None = None

    def perturb(self, forward_fn: ForwardFn, images01: Tensor, labels: Tensor) -> Tensor:
        torchattacks = import_torchattacks()
        n_classes = self.n_classes or self._count_classes(forward_fn, images01)
        adversary = torchattacks.AutoAttack(
            ForwardModule(forward_fn, images01),
            norm=TORCHATTACKS_NORM_NAMES[self.norm],
            eps=self.eps,
            version=self.version,
            n_classes=n_classes,
            seed=self.seed,
            verbose=False,
        )
        adv = adversary(images01, labels).to(device=images01.device, dtype=images01.dtype)
        return project_to_threat_model(images01, adv, self.eps, self.norm)

    @staticmethod
    @torch.no_grad()
    def _count_classes(forward_fn: ForwardFn, images01: Tensor) -> int:
        return int(forward_fn(images01[:1]).shape[-1])
