"""The relevance rules' faster layout equals the reference formulas, and the chunked relevance
pass equals one pass over the batch.

`fvit.explain.rules` evaluates Chefer et al.'s formulas with fewer passes over memory (safe_divide
as ``b + eps`` with in-place masks, the z+ backward as ``x * where(x > 0, S W+, S W-)``, the three
transposed convolutions of z^B as one); the straightforward formulas are written out below and
must agree bit for bit (safe_div, z+) or to float64 rounding (the fused convolution)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fvit.explain.lrp import record_tape, relevance_pass
from fvit.explain.rules import EPS, conv_zbox, linear_zplus, safe_div
from fvit.models import tiny_vit


def reference_safe_divide(a, b):  # Chefer et al.'s safe_divide, verbatim in formula
    den = b.clamp(min=EPS) + b.clamp(max=EPS)
    den = den + den.eq(0).to(den.dtype) * EPS
    return a / den * b.ne(0).to(b.dtype)


def reference_zplus(x, w, r):
    wp, wn, xp, xn = w.clamp(min=0), w.clamp(max=0), x.clamp(min=0), x.clamp(max=0)
    s = reference_safe_divide(r, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def reference_zbox(x, w, r, **conv):
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    s = r / (F.conv2d(x, w, **conv) - F.conv2d(low, wp, **conv) - F.conv2d(high, wn, **conv) + EPS)

    def back(v):
        return torch.nn.grad.conv2d_input(x.shape, v, s, **conv)

    return x * back(w) - low * back(wp) - high * back(wn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_div_is_bit_identical_to_the_reference(dtype):
    g = torch.Generator().manual_seed(0)
    b = torch.randn(1000, generator=g, dtype=torch.float64).to(dtype) * 1e-8  # many |b| around eps
    b[:4] = torch.tensor([0.0, -EPS, EPS, -2 * EPS], dtype=dtype)  # the special cases
    a = torch.randn(1000, generator=g, dtype=torch.float64).to(dtype)
    assert torch.equal(safe_div(a, b), reference_safe_divide(a, b))
    assert safe_div(a, b)[0] == 0 and torch.isfinite(safe_div(a, b)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_zplus_is_bit_identical_to_the_reference(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 24, generator=g).to(dtype)
    x[0, 0, :5] = 0  # exact zeros take no relevance in either form
    w, r = torch.randn(10, 24, generator=g).to(dtype), torch.randn(3, 7, 10, generator=g).to(dtype)
    assert torch.equal(linear_zplus(x, w, r), reference_zplus(x, w, r))


@pytest.mark.parametrize("conv", [dict(stride=4), dict(stride=2, padding=1), dict(stride=1, dilation=2)])
def test_conv_zbox_fused_equals_three_transposed_convolutions(conv):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    r = torch.rand(2, 5, *F.conv2d(x, w, **conv).shape[-2:], generator=g, dtype=torch.float64)
    ours, ref = conv_zbox(x, w, r, **conv), reference_zbox(x, w, r, **conv)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12) and ref.abs().max() > 1e-3


@pytest.mark.parametrize("rules", ["ours", "orig"])
def test_chunked_relevance_pass_equals_one_pass(rules):
    model = tiny_vit(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, seed=3)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad(), record_tape(model) as tape:
        model(images)
    whole = relevance_pass(model, tape, target, rules=rules, dtype=torch.float64, chunk=5)
    parts = relevance_pass(model, tape, target, rules=rules, dtype=torch.float64, chunk=2)  # 2 + 2 + 1
    assert parts.pixel.shape == whole.pixel.shape == (5, 32, 32)
    for a, b in [(parts.pixel, whole.pixel), (parts.stack_input, whole.stack_input),
                 (parts.head_tokens, whole.head_tokens), *zip(parts.attn_relevance, whole.attn_relevance)]:
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(parts.pixel[0], parts.pixel[1])  # the chunks are not mixed up
