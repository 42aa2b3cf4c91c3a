"""Attention-based methods: raw attention, rollout, GradCAM (ViT form), attribution rollout.

Notation: ``A_b`` is block b's post-softmax attention ``(B, heads, T, T)``, ``p`` the number of
prefix tokens (CLS first), ``y_c`` the logit of the target class. Maps are CLS rows without the
prefix columns, reshaped to the patch grid.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from fvit.explain.base import (ExplanationMethod, class_score, cls_row_to_grid, graph_mode, rectify,
                               register_method, resolve_target)
from fvit.errors import InputError
from fvit.models.wrapper import ExplainableViT


def rollout_matrices(layers: list[torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """``C = M_L ... M_1`` with ``M_b = X_b + I`` (row-normalised when ``normalize``); ``X_b (B, T, T)``."""
    eye = torch.eye(layers[0].shape[-1], device=layers[0].device, dtype=layers[0].dtype)
    joint = None
    for x in layers:
        m = x + eye
        if normalize:
            m = m / m.sum(dim=-1, keepdim=True)
        joint = m if joint is None else m @ joint
    return joint


def check_start_layer(model: ExplainableViT, start_layer: int, method: str) -> int:
    """``start_layer`` if the model has that block (0-based), else InputError."""
    if not 0 <= start_layer < model.depth:
        raise InputError(f"method {method!r}: start_layer={start_layer} is outside the model's "
                         f"{model.depth} blocks (0..{model.depth - 1})")
    return start_layer


def _grad_input(images: torch.Tensor) -> torch.Tensor:
    """A leaf copy of the images that requires grad, so the attention maps carry a graph even if
    the model's parameters are frozen (no parameter ``.grad`` is ever written: we use
    ``torch.autograd.grad`` on the maps only)."""
    return images.detach().requires_grad_(True)


@register_method
class RawAttention(ExplanationMethod):
    """``map = mean_h A_L[h, CLS, p:]`` (last block; class-agnostic: the target is only recorded)."""

    name = "raw_attention"
    distribution = True  # a softmax row without its prefix columns
    aliases = ("attention", "raw")
    description = "last block's attention, mean over heads, CLS row"
    needs_grad = False

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        with graph_mode(graph), model.record(grad=graph) as rec:  # smooth in the input: no surrogate
            logits = model(images)
            tgt = resolve_target(target, logits)
            grid = cls_row_to_grid(rec.attentions[-1].mean(dim=1), model)
        return (grid, logits, tgt) if graph else (grid.clone(), logits.clone(), tgt.clone())


@register_method
class Rollout(ExplanationMethod):
    """Abnar & Zuidema: ``M_b = rownorm(mean_h A_b + I)``, ``C = M_L ... M_{s+1}``,
    ``map = C[CLS, p:]`` (class-agnostic), with ``s = start_layer`` the first block multiplied
    (0-based). ``start_layer=0`` (default: every block, the generators' default and the method as
    published); Chefer et al.'s evaluation scripts, which produced the published segmentation and
    perturbation numbers, use ``start_layer=1`` (block 0 skipped)."""

    name = "rollout"
    distribution = True  # a row of a product of row-stochastic matrices, without its prefix columns
    description = "attention rollout (Abnar & Zuidema 2020), mean heads + identity, row-normalised"
    needs_grad = False
    defaults = {"start_layer": 0}

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        with graph_mode(graph), model.record(grad=graph) as rec:  # smooth in the input: no surrogate
            logits = model(images)
            tgt = resolve_target(target, logits)
            start = check_start_layer(model, self.params["start_layer"], self.name)
            joint = rollout_matrices([a.mean(dim=1) for a in rec.attentions[start:]], normalize=True)
            grid = cls_row_to_grid(joint, model)
        return (grid, logits, tgt) if graph else (grid.clone(), logits.clone(), tgt.clone())


@register_method
class GradCAM(ExplanationMethod):
    """Chefer et al.'s ViT GradCAM on the last block:
    ``w_h = mean_j dy_c/dA_L[h, CLS, j]`` (j over patch tokens),
    ``map = relu(mean_h w_h * A_L[h, CLS, p:])``."""

    name = "gradcam"
    description = "GradCAM on the last block's CLS attention (Chefer et al.'s ViT form)"
    needs_grad = True

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        """With ``graph``: double backpropagation (``w_h`` keeps its graph, ``create_graph=True``);
        the final ReLU is `rectify` (softplus with ``surrogate``)."""
        p = model.num_prefix_tokens
        with torch.enable_grad(), model.record(grad=True) as rec:
            logits = model(images if graph else _grad_input(images))
            tgt = resolve_target(target, logits)
            attn = rec.attentions[-1]
            grad = torch.autograd.grad(class_score(logits, tgt), attn, create_graph=graph)[0]
        attn = attn if graph else attn.detach()
        weights = grad[:, :, 0, p:].mean(dim=-1, keepdim=True)
        row = rectify((weights * attn[:, :, 0, p:]).mean(dim=1), surrogate)
        return row.reshape(-1, *model.grid_size), logits, tgt


@contextmanager
def block_outputs(model: ExplainableViT) -> Iterator[list[torch.Tensor]]:
    """Collect every block's output (kept on the autograd graph) during the forwards inside."""
    outs: list[torch.Tensor] = []
    blocks = model.blocks
    handles = [blk.register_forward_hook(lambda _m, _i, o: outs.append(o)) for blk in blocks]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


@register_method
class AttributionRollout(ExplanationMethod):
    """Attribution rollout (Xu et al. 2022), as the [Re] study runs it:

    per block k the logits ``F_k = head(norm(x_k))`` of that block's output ``x_k`` (the model's own
    ``forward_head``, i.e. its CLS pooling); ``g_k = dF_k[c] / dA_k``; head attribution
    ``A_k * g_k * 1/2`` (the reference's integrated gradient along ``alpha A_k``, alpha in [0, 1],
    reduces to ``g / 2`` because ``F_k`` is taken linear in ``A_k`` there); heads fused by max;
    negatives clamped to 0 when ``clamp_negative`` (default True, our choice: keeps every
    ``attr + I`` row sum >= 1 so the row normalisation is well defined; the reference code does not
    clamp: ``clamp_negative=False`` reproduces it); ``M_k = rownorm(attr_k + I)``;
    ``map = (M_L ... M_1)[CLS, p:]``.
    """

    name = "attribution_rollout"
    aliases = ("ar",)
    description = "attribution rollout (Xu et al. 2022): per-block logits, A*grad/2, max over heads, rollout"
    needs_grad = True
    defaults = {"clamp_negative": True}

    @property
    def distribution(self) -> bool:
        """With the clamp every ``attr + I`` is non-negative, so the rollout is row-stochastic and the
        map a sub-probability vector; without it entries can be negative."""
        return bool(self.params["clamp_negative"])

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        """With ``graph``: double backpropagation through every ``g_k``; the negative clamp is
        `rectify` (softplus with ``surrogate``); the max over heads is kept (differentiable almost
        everywhere: the gradient goes to the maximal head)."""
        tm = model.timm_model
        with torch.enable_grad(), model.record(grad=True) as rec, block_outputs(model) as outs:
            logits = model(images if graph else _grad_input(images))
            tgt = resolve_target(target, logits)
            attributions = []
            for k, (attn, x_k) in enumerate(zip(rec.attentions, outs)):
                block_logits = tm.forward_head(tm.norm(x_k))
                g = torch.autograd.grad(class_score(block_logits, tgt), attn, create_graph=graph,
                                        retain_graph=graph or k < len(outs) - 1)[0]
                attr = ((attn if graph else attn.detach()) * g).amax(dim=1) * 0.5  # max over heads commutes with * 1/2
                attributions.append(rectify(attr, surrogate) if self.params["clamp_negative"] else attr)
        joint = rollout_matrices(attributions, normalize=True)
        return cls_row_to_grid(joint, model), logits, tgt
