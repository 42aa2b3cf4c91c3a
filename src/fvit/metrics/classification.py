"""Top-1 classification helpers for clean and attacked predictions.

    hits_i      = [argmax_c logits_ic == y_i]
    accuracy    = mean_i hits_i                     (fraction in [0, 1]; papers print x100)
    flip_rate   = mean_i [argmax clean_i != argmax adv_i]
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvit.errors import InputError


def _predictions(logits_or_predictions: Tensor) -> Tensor:
    t = torch.as_tensor(logits_or_predictions)
    if t.ndim == 2:
        return t.argmax(dim=-1)
    if t.ndim == 1 and not t.is_floating_point():
        return t
    raise InputError(f"expected logits (B, C) or integer predictions (B,), got shape {tuple(t.shape)} "
                     f"dtype {t.dtype}")


def top1_hits(logits: Tensor, labels: Tensor) -> Tensor:
    """``(B,)`` bool: top-1 prediction equals the label. Accepts logits (B, C) or predictions (B,)."""
    predictions = _predictions(logits)
    labels = torch.as_tensor(labels, device=predictions.device)
    if labels.shape != predictions.shape:
        raise InputError(f"labels must be {tuple(predictions.shape)}, got {tuple(labels.shape)}")
    return predictions == labels


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy as a fraction; clean or attacked, depending on which logits are passed."""
    hits = top1_hits(logits, labels)
    if hits.numel() == 0:
        raise InputError("accuracy: empty batch")
    return float(hits.to(torch.float64).mean())


def flip_rate(clean_logits: Tensor, adversarial_logits: Tensor) -> float:
    """Fraction of images whose top-1 prediction changed under attack (label-free attack success)."""
    clean, adv = _predictions(clean_logits), _predictions(adversarial_logits)
    if clean.shape != adv.shape or clean.numel() == 0:
        raise InputError(f"flip_rate: need equal, non-empty batches, got {tuple(clean.shape)} and "
                         f"{tuple(adv.shape)}")
    return float((clean != adv.to(clean.device)).to(torch.float64).mean())
