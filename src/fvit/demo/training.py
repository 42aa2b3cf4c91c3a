"""Training loops for the demo world's classifier (the DDPM trainer lives in fvit.denoise).

Kept free of caching and model construction so that it can be tested on its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fvit.demo.settings import ClassifierRecipe
from fvit.models.wrapper import eval_mode


def augment(images: torch.Tensor, g: torch.Generator, noise_sigma: float,
            noise_prob: float) -> torch.Tensor:
    """One random 90-degree rotation per batch, random horizontal flips per image, and Gaussian
    noise (clipped to [0, 1]) on a random `noise_prob` share of the images."""
    b = images.shape[0]
    k = int(torch.randint(0, 4, (1,), generator=g))
    x = torch.rot90(images, k, dims=(2, 3))
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if noise_sigma > 0 and noise_prob > 0:
        noisy = torch.rand(b, generator=g) < noise_prob
        noise = torch.randn(x.shape, generator=g) * noise_sigma
        x = torch.where(noisy[:, None, None, None], (x + noise.to(x.device)).clamp(0, 1), x)
    return x


def lr_at(step: int, recipe: ClassifierRecipe) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    t = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     recipe: ClassifierRecipe, *, seed: int = 0, progress: bool = True) -> dict:
    """Train `model` ([0,1] images -> logits) in place; returns {'final_loss', 'steps'}."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    n = len(labels)
    order = torch.randperm(n, generator=g)
    cursor, ema = 0, None
    model.train()
    bar = tqdm(range(recipe.steps), desc="train ViT on the world", disable=not progress,
               unit="step", leave=False)
    for step in bar:
        if cursor + recipe.batch_size > n:
            order, cursor = torch.randperm(n, generator=g), 0
        idx = order[cursor:cursor + recipe.batch_size]
        cursor += recipe.batch_size
        x = augment(images[idx], g, recipe.noise_sigma, recipe.noise_prob).to(device)
        y = labels[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
    model.eval()
    return {"final_loss": ema, "steps": recipe.steps}


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on [0,1] images, batched."""
    device = next(model.parameters()).device
    correct = 0
    with eval_mode(model):
        for i in range(0, len(labels), batch_size):
            pred = model(images[i:i + batch_size].to(device)).argmax(1).cpu()
            correct += int((pred == labels[i:i + batch_size]).sum())
    return correct / max(1, len(labels))


__all__ = ["accuracy", "augment", "lr_at", "train_classifier"]
