"""Closed-form LRP relevance rules on batched tensors (Chefer et al. 2021's rules for ViTs).

Why by hand: no maintained library provides Chefer et al.'s transformer rules (z+ on Linear,
gradient x input split of the attention matmuls with halving, proportional residual split, z^B on
the patch-embedding conv) for timm's own ViT modules; zennit and captum offer LRP for convolutional /
linear layers but neither the matmul / residual rules of the reference nor hooks into timm's
Attention. Chefer's code evaluates each rule with one ``torch.autograd.grad`` call per layer; the
rules are linear in the relevance, so the gradients are written out below as plain matmuls, which
also batches them (every reduction that the reference takes over the whole tensor is taken per
sample here, so a batch of N equals N single calls).

Conservation: with ``sum(R_out) = r`` per sample, ``linear_zplus``, ``matmul_relevance`` (both
halves together), ``add_relevance`` and ``conv_zbox`` return relevances whose per-sample sum is ``r``
(up to the 1e-9 stabilisers and outputs whose positive pre-activation is exactly 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-9


def safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + eps)``, and 0 where ``b == 0`` (Chefer et al.'s ``safe_divide``).

    The reference writes the denominator as ``clamp(b, min=eps) + clamp(b, max=eps)`` (plus eps
    where that is 0) and multiplies by the mask ``b != 0``; since one clamp is ``b`` and the other
    ``eps`` for every ``b``, that is exactly ``b + eps`` in floating point. Written so, it takes 5
    passes over the tensor instead of 11 (no float masks), with bit-identical values."""
    den = b + EPS  # fresh tensors: filled in place (autograd-safe: add / div keep no outputs)
    den.masked_fill_(den == 0, EPS)
    return (a / den).masked_fill_(b == 0, 0.0)


def _sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=tuple(range(1, t.ndim)), keepdim=True)


def linear_zplus(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """z+ rule (alpha=1, beta=0) for ``y = x W^T (+ b)``; the bias takes no relevance.

    ``Z_j = sum_i x_i^+ W_ji^+ + x_i^- W_ji^-`` (the positive contributions),
    ``R_i = x_i^+ sum_j W_ji^+ R_j / Z_j + x_i^- sum_j W_ji^- R_j / Z_j``.
    ``x^+`` and ``x^-`` have disjoint supports, so the last sum is evaluated as
    ``x_i * (S W^+ if x_i > 0 else S W^-)_i`` (bit-identical, two fewer passes over the tensor).
    """
    weight = weight.to(x.dtype)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    z = x.clamp(min=0) @ wp.T
    z = z + x.clamp(max=0) @ wn.T
    s = safe_div(relevance, z)
    return x * torch.where(x > 0, s @ wp, s @ wn)


def linear_zplus_separate(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """z+ as Chefer et al.'s ``layers_lrp`` (``ViT_orig_LRP``, the published "LRP" baseline) writes
    it: the two positive parts are normalised by their OWN denominators,
    ``R_i = x_i^+ sum_j W_ji^+ R_j / Z+_j + x_i^- sum_j W_ji^- R_j / Z-_j`` with
    ``Z+ = x^+ W^+T``, ``Z- = x^- W^-T`` (not conservative: where both parts are non-zero the output
    relevance is counted twice).
    """
    weight = weight.to(x.dtype)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    return xp * (safe_div(relevance, xp @ wp.T) @ wp) + xn * (safe_div(relevance, xn @ wn.T) @ wn)


def matmul_relevance(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient x input split of ``Z = a @ b``, each operand's relevance halved.

    ``S = R / Z``; ``R_a = a * (S b^T) / 2``; ``R_b = b * (a^T S) / 2``. Each unhalved term sums to
    ``sum(R)``, so the halves together conserve it.
    """
    s = safe_div(relevance, a @ b)
    ra = a * (s @ b.transpose(-1, -2))
    rb = b * (a.transpose(-1, -2) @ s)
    return ra / 2, rb / 2


def add_relevance(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual / embedding add ``Z = a + b``: gradient x input, then each branch rescaled so that
    it receives the share ``|sum R_a| / (|sum R_a| + |sum R_b|)`` of the sample's total relevance
    (sums per sample; Chefer et al.'s ``Add.relprop`` took them over the batch-of-one tensor)."""
    s = safe_div(relevance, a + b)
    ra, rb = a * s, b * s
    sa, sb, total = _sample_sum(ra), _sample_sum(rb), _sample_sum(relevance)
    denom = sa.abs() + sb.abs()
    fa = safe_div(sa.abs(), denom) * total
    fb = safe_div(sb.abs(), denom) * total
    return ra * safe_div(fa, sa), rb * safe_div(fb, sb)


def add_relevance_plain(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Z = a + b`` by plain gradient x input, ``R_a = a R / Z``, ``R_b = b R / Z``, without the
    rescaling of `add_relevance` (``layers_lrp``'s ``Add``; conserved only where ``a`` and ``b``
    have one sign)."""
    s = safe_div(relevance, a + b)
    return a * s, b * s


def conv_zbox(
    x: torch.Tensor,
    weight: torch.Tensor,
    relevance: torch.Tensor,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """z^B (bounded) rule for the first conv, inputs bounded by each sample's min ``l`` / max ``h``:

    ``Z = conv(x, W) - conv(l, W^+) - conv(h, W^-) + eps``, ``S = R / Z``,
    ``R_x = x * conv^T(S, W) - l * conv^T(S, W^+) - h * conv^T(S, W^-)`` (bias ignored).
    """
    weight = weight.to(x.dtype)
    dims = tuple(range(1, x.ndim))
    low = x.amin(dim=dims, keepdim=True).expand_as(x)
    high = x.amax(dim=dims, keepdim=True).expand_as(x)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    z = F.conv2d(x, weight, **conv) - F.conv2d(low, wp, **conv) - F.conv2d(high, wn, **conv) + EPS
    s = relevance / z
    if groups == 1:  # one transposed conv for the three weights (stacked along the input channels)
        c = x.shape[1]
        g = torch.nn.grad.conv2d_input((x.shape[0], 3 * c, *x.shape[2:]), torch.cat([weight, wp, wn], dim=1),
                                       s, **conv)
        return x * g[:, :c] - low * g[:, c:2 * c] - high * g[:, 2 * c:]

    def back(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(x.shape, w, s, **conv)

    return x * back(weight) - low * back(wp) - high * back(wn)
