"""Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021), the self-attention case.

Per block b, with ``A_b`` its post-softmax attention ``(B, heads, T, T)`` and ``y_c`` the target logit::

    Abar_b = mean_h ( (dy_c/dA_b * A_b)^+ )          R_0 = I,   R_b = R_{b-1} + Abar_b R_{b-1}

and ``map = R_L[CLS, p:]`` (p prefix tokens). One forward and one backward for the whole batch (the
gradients of ``sum_b y_{b, c_b}`` w.r.t. every block's map at once). Unlike Transformer Attribution
it needs no LRP pass and no row normalisation.
"""

from __future__ import annotations

import torch

from fvit.explain.attention import _grad_input
from fvit.explain.base import ExplanationMethod, class_score, cls_row_to_grid, rectify, register_method, resolve_target
from fvit.models.wrapper import ExplainableViT


def generic_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor],
                      surrogate: float | None = None) -> torch.Tensor:
    """``R_L`` from ``R_0 = I`` by ``R <- R + mean_h((g * A)^+) R`` over the blocks in order, ``(B, T, T)``;
    the positive part is `rectify` (softplus with ``surrogate``)."""
    t = attentions[0].shape[-1]
    r = torch.eye(t, device=attentions[0].device, dtype=attentions[0].dtype).expand(attentions[0].shape[0], t, t)
    for a, g in zip(attentions, gradients):
        r = r + rectify(g * a, surrogate).mean(dim=1) @ r
    return r


@register_method
class GenericAttention(ExplanationMethod):
    """Chefer et al. 2021b: ``R <- R + mean_h((dy_c/dA_b * A_b)^+) R`` from ``R = I`` over the blocks,
    ``map = R[CLS, p:]``."""

    name = "generic_attention"
    aliases = ("gae", "chefer2021b")
    description = "generic attention explainability (Chefer et al. ICCV 2021): R += mean_h((grad*A)^+) R"
    needs_grad = True

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        """With ``graph``: double backpropagation (``create_graph=True`` on every ``dy_c/dA_b``);
        the positive part is `rectify` (softplus with ``surrogate``)."""
        with torch.enable_grad(), model.record(grad=True) as rec:
            logits = model(images if graph else _grad_input(images))
            tgt = resolve_target(target, logits)
            grads = torch.autograd.grad(class_score(logits, tgt), rec.attentions, create_graph=graph)
        attns = list(rec.attentions) if graph else [a.detach() for a in rec.attentions]
        return cls_row_to_grid(generic_relevance(attns, list(grads), surrogate), model), logits, tgt
