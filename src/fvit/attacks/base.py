"""What every attack shares: the call contract, input checks, labels, and the input gradient.

Contract (docs/ARCHITECTURE.md): ``attack(forward_fn, images01, labels=None) -> adv01`` where
``forward_fn`` maps ``(B, 3, H, W)`` images in [0, 1] to logits ``(B, C)`` (any normalisation lives
inside it). Attacks are untargeted: they maximise the cross-entropy of ``labels``, which default to
the model's own prediction on the clean input (``predicted_labels``), as in the papers.

Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so no parameter
``.grad`` is ever written; the caller's tensors are never modified (their ``requires_grad`` flag
included). A ``forward_fn`` that is an ``nn.Module`` (or a bound method of one) is put in eval mode
for the attack and restored afterwards.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvit.errors import InputError
from fvit.models.wrapper import eval_mode as models_eval_mode
from fvit.utils import check_images01

ForwardFn = Callable[[Tensor], Tensor]
"""Maps images in [0, 1], ``(B, 3, H, W)``, to logits ``(B, C)``."""

PIXEL_MIN = 0.0
PIXEL_MAX = 1.0



def check_labels(labels: Tensor, batch: int, device: torch.device) -> Tensor:
    """Return `labels` as a long ``(B,)`` tensor on `device`; InputError on a shape mismatch."""
    labels = torch.as_tensor(labels)
    if labels.shape != (batch,):
        raise InputError(f"labels: expected shape ({batch},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    return labels.to(device=device, dtype=torch.long)


def owning_module(forward_fn: ForwardFn) -> nn.Module | None:
    """The ``nn.Module`` that is `forward_fn` or owns it as a bound method; None otherwise."""
    if isinstance(forward_fn, nn.Module):
        return forward_fn
    owner = getattr(forward_fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def eval_mode(forward_fn: ForwardFn) -> contextlib.AbstractContextManager:
    """Put the module behind `forward_fn` (if any) in eval mode; restore each submodule's flag."""
    module = owning_module(forward_fn)
    return contextlib.nullcontext() if module is None else models_eval_mode(module)


@torch.no_grad()
def predicted_labels(forward_fn: ForwardFn, images01: Tensor) -> Tensor:
    """The model's own top-1 prediction ``argmax_c forward_fn(x)_c`` on clean images, ``(B,)`` long."""
    check_images01(images01)
    with eval_mode(forward_fn):
        return forward_fn(images01).argmax(dim=-1)


def cross_entropy_gradient(forward_fn: ForwardFn, images01: Tensor, labels: Tensor) -> Tensor:
    """``d/dx sum_i CE(forward_fn(x)_i, y_i)`` at ``x = images01``, w.r.t. the input only.

    The loss is summed (not averaged) over the batch so that each image's gradient does not depend
    on the batch size. Works under a caller's ``no_grad`` / ``inference_mode``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images01.detach().clone().requires_grad_(True)
        logits = forward_fn(x)
        loss = F.cross_entropy(logits.float(), labels.clone(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


@dataclass(frozen=True)
class Attack(ABC):
    """An untargeted evasion attack in [0, 1] pixel space with budget `eps` in norm `norm`.

    ``attack(forward_fn, images01, labels=None, keys=None) -> adv01``: `labels` default to
    ``predicted_labels(forward_fn, images01)``. ``eps == 0`` returns a copy of the input.
    The result is detached, on the input's device and dtype, inside [0, 1] and inside the ball.
    ``keys`` (one string per image, e.g. data-set ids): an attack whose ``per_image`` is True then
    draws each image's randomness from its own stream (``seed``, key), so an image's adversarial
    example does not depend on its batch; other attacks ignore them.
    """

    name: str
    eps: float
    norm: str

    #: whether the attack's randomness can be drawn per image (``keys``); AutoAttack's cannot
    per_image: ClassVar[bool] = False

    def __call__(self, forward_fn: ForwardFn, images01: Tensor, labels: Tensor | None = None,
                 keys: Sequence[str] | None = None) -> Tensor:
        images = check_images01(images01).detach()
        if labels is None:
            labels = predicted_labels(forward_fn, images)
        labels = check_labels(labels, images.shape[0], images.device)
        if keys is not None and len(keys) != images.shape[0]:
            raise InputError(f"keys: expected one per image ({images.shape[0]}), got {len(keys)}")
        if self.eps == 0 or images.shape[0] == 0:
            return images.clone()
        with eval_mode(forward_fn):
            if keys is not None and self.per_image:
                adv = self.perturb(forward_fn, images, labels, keys=list(keys))
            else:
                adv = self.perturb(forward_fn, images, labels)
        return adv.detach()

    @abstractmethod
    def perturb(self, forward_fn: ForwardFn, images01: Tensor, labels: Tensor) -> Tensor:
        """Return adversarial images for checked, detached inputs and long labels."""
