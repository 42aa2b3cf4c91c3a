"""Targets as callables (like pytorch-grad-cam's ``ClassifierOutputTarget``): ``target(logits (B, C))
-> (B,) long`` classes. Any callable works; these are the common ones.

    explain(model, x, "ta", target=RankTarget(1))     # explain the runner-up class
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fvit.errors import InputError


@dataclass(frozen=True)
class ClassTarget:
    """The same class ``index`` for every image."""

    index: int

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.full((logits.shape[0],), int(self.index), dtype=torch.long, device=logits.device)


@dataclass(frozen=True)
class RankTarget:
    """The ``rank``-th most likely class of each image (0 = the prediction, 1 = the runner-up)."""

    rank: int = 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if not 0 <= self.rank < logits.shape[1]:
            raise InputError(f"RankTarget: rank {self.rank} outside the model's {logits.shape[1]} classes")
        return logits.topk(self.rank + 1, dim=1).indices[:, self.rank]
