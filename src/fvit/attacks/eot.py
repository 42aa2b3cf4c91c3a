"""Expectation over noise (EOT): the forward of a smoothed classifier, for adaptive attacks.

An adaptive attack through DDS is an ordinary attack on the forward

    F(x) = log( (1/m) * sum_j softmax(f(D(x + n_j))) )          n_j ~ N(0, sigma^2 I)

where ``D(x + n_j)`` are differentiable denoised samples. This is the log of the smoothed soft
prediction (the standard EOT choice for randomized smoothing, Salman et al. 2019): its argmax is the
soft-smoothed class and its cross-entropy ``-log mean_j p_j(y)`` is the loss of the smoothed
classifier. Averaging logits instead (``reduce='mean-logits'``) is offered for comparison; it is a
weaker surrogate when a few samples dominate. Fresh noise is drawn on every call (each attack step).

Example::

    forward = expectation_forward(lambda x: dds.denoise_differentiable(x, generator), model)
    adv = get_attack("pgd", 8 / 255)(forward, images01)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from fvit.errors import InputError
from fvit.registry import Registry

SampleFn = Callable[[Tensor], Tensor]
"""Maps images ``(B, 3, H, W)`` in [0, 1] to differentiable samples ``(B, m, 3, H, W)``."""

SAMPLES_NDIM = 5


def _log_mean_softmax(logits: Tensor) -> Tensor:
    """``log((1/m) sum_j softmax(l_j))`` over dim 1 of ``(B, m, C)``, computed with logsumexp."""
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=1) - math.log(logits.shape[1])


def _mean_logits(logits: Tensor) -> Tensor:
    return logits.mean(dim=1)


REDUCTIONS: Registry[Callable[[Tensor], Tensor]] = Registry("expectation reduction")
REDUCTIONS.register("log-mean-softmax", _log_mean_softmax, aliases=("eot", "softmax"))
REDUCTIONS.register("mean-logits", _mean_logits, aliases=("logits",))


class ExpectationForward(nn.Module):
    """``forward(x01) -> (B, C)``: `model` applied to ``sample_fn(x01)`` and reduced over samples.

    `model` is registered as a child so ``.eval()`` reaches it. ``max_batch`` bounds how many
    samples go through `model` in one call (gradients flow through the chunks).
    """

    def __init__(self, sample_fn: SampleFn, model: Callable[[Tensor], Tensor], m: int | None = None,
                 *, reduce: str = "log-mean-softmax", max_batch: int | None = None):
        super().__init__()
        self.sample_fn = sample_fn
        self.model = model
        self.m = m
        self.reduce_name = REDUCTIONS.resolve(reduce)
        self.max_batch = max_batch

    def forward(self, images01: Tensor) -> Tensor:
        samples = self.sample_fn(images01)
        self._check_samples(samples, images01)
        b, m = samples.shape[:2]
        flat = samples.flatten(0, 1)
        chunk = self.max_batch or flat.shape[0]
        logits = torch.cat([self.model(part) for part in flat.split(chunk)], dim=0)
        return REDUCTIONS.get(self.reduce_name)(logits.view(b, m, -1))

    def _check_samples(self, samples: Tensor, images01: Tensor) -> None:
        expected_m = self.m if self.m is not None else (samples.shape[1] if samples.ndim > 1 else -1)
        expected = (images01.shape[0], expected_m, *images01.shape[1:])
        if samples.ndim != SAMPLES_NDIM or tuple(samples.shape) != expected:
            raise InputError(
                f"expectation_forward: sample_fn must return (B, m, C, H, W) = {expected}, "
                f"got {tuple(samples.shape)}"
            )


def expectation_forward(sample_fn: SampleFn, model: Callable[[Tensor], Tensor], m: int | None = None,
                        *, reduce: str = "log-mean-softmax",
                        max_batch: int | None = None) -> ExpectationForward:
    """Build the EOT forward ``F(x) = reduce_j model(sample_fn(x)[:, j])`` for an adaptive attack.

    `sample_fn` must be differentiable (e.g. ``DDS.denoise_differentiable``); `m`, when given, is
    checked against the sample dimension. `reduce`: 'log-mean-softmax' (default) or 'mean-logits'.
    """
    return ExpectationForward(sample_fn, model, m, reduce=reduce, max_batch=max_batch)
