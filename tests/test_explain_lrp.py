"""LRP conservation and the closed-form rules.

What the rules conserve (start: one-hot of the target at the logits, i.e. 1 per sample):
- the head's z+ puts exactly 1 on the CLS token (any biases);
- every block (z+ Linears, halved gradient x input matmuls, rescaled residual adds) conserves it,
  so the relevance entering the first block sums to 1 per sample;
- the pixel map sums to the patch branch's share at the position-embedding add; with a zero
  position embedding (and zero biases) that share is everything at the patch rows, so the pixel
  sum plus the relevance left on the prefix tokens is 1.
(Exceptions: outputs whose positive pre-activation / product is exactly 0 drop their relevance,
e.g. a zero class token makes q_cls = k_cls = 0 in the first block and its rows of q k^T lose it.)
"""

from __future__ import annotations

import pytest
import torch

from fvit.explain import explain
from fvit.explain.lrp import record_tape, relevance_pass, _positional_part
from fvit.explain.rules import add_relevance, conv_zbox, linear_zplus, matmul_relevance
from fvit.models import load_model, tiny_vit


def _pass(model, images, target):
    with torch.no_grad(), record_tape(model) as tape:
        model(images)
    return tape, relevance_pass(model, tape, target)


def _per_sample(t):
    return t.flatten(1).sum(1)


@pytest.mark.parametrize(
    "kw", [{}, {"init_values": 0.5, "qk_norm": True}], ids=["plain", "layerscale-qknorm"]
)
def test_relevance_is_conserved_through_head_and_blocks(images, kw):
    model = tiny_vit(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, seed=1, **kw)
    target = torch.tensor([0, 1, 2, 3])
    tape, rel = _pass(model, images, target)
    ones = torch.ones(4)
    assert torch.allclose(_per_sample(rel.start), ones)
    assert torch.allclose(_per_sample(rel.head_tokens), ones, atol=1e-5)
    assert torch.allclose(_per_sample(rel.head_tokens[:, 1:]), torch.zeros(4))  # all on CLS
    assert torch.allclose(_per_sample(rel.stack_input), ones, atol=1e-4)
    # the pixels receive the patch branch's share at the position-embedding add
    pos = _positional_part(model.timm_model, tape.tokens)
    share, _ = add_relevance(tape.tokens - pos, pos, rel.stack_input)
    assert torch.allclose(_per_sample(rel.pixel), _per_sample(share[:, 1:]), atol=1e-4)


def test_pixels_plus_prefix_relevance_sum_to_one_without_bias_or_position(images):
    """Zero position embedding and zero biases: the patch branch is the whole token at patch rows,
    so pixels + the relevance left on the CLS token at the embedding = the start relevance 1."""
    model = tiny_vit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, seed=2)
    with torch.no_grad():
        for name, p in model.timm_model.named_parameters():
            if name.endswith("bias") or name == "pos_embed":
                p.zero_()
    target = torch.tensor([5, 6, 7, 8])
    _, rel = _pass(model, images, target)
    on_cls = _per_sample(rel.stack_input[:, :1])
    assert torch.allclose(_per_sample(rel.pixel) + on_cls, torch.ones(4), atol=5e-4)
    e = explain(model, images, "lrp", target=target)
    assert torch.allclose(_per_sample(e.pixel), _per_sample(rel.pixel), atol=1e-5)
    assert torch.allclose(_per_sample(e.patch), 1 - on_cls, atol=5e-4)


def test_distilled_head_splits_relevance_between_cls_and_dist_tokens(images):
    model = load_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                       embed_dim=32, depth=2, num_heads=2, num_classes=5)  # fmt: skip
    _, rel = _pass(model, images, torch.tensor([0, 1, 2, 3]))
    assert torch.allclose(_per_sample(rel.head_tokens), torch.ones(4), atol=1e-5)
    assert (rel.head_tokens[:, 0].sum(-1) > 0).all() and (rel.head_tokens[:, 1].sum(-1) > 0).all()
    assert torch.allclose(_per_sample(rel.stack_input), torch.ones(4), atol=1e-4)


def test_rules_conserve():
    g = torch.Generator().manual_seed(0)
    x, w, r = torch.randn(3, 5, 32, generator=g), torch.randn(6, 32, generator=g), torch.rand(3, 5, 6, generator=g)
    assert torch.allclose(linear_zplus(x, w, r).sum(), r.sum(), rtol=1e-5)
    a, b = torch.rand(3, 2, 5, 5, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    rm = torch.randn(3, 2, 5, 4, generator=g)
    ra, rb = matmul_relevance(a, b, rm)
    assert torch.allclose(_per_sample(ra) + _per_sample(rb), _per_sample(rm), atol=1e-4)
    u, v, radd = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    ru, rv = add_relevance(u, v, radd)
    assert torch.allclose(_per_sample(ru) + _per_sample(rv), _per_sample(radd), atol=1e-4)
    # per-sample rescaling: sample 0 alone gives the same split as inside the batch
    ru0, rv0 = add_relevance(u[:1], v[:1], radd[:1])
    assert torch.allclose(ru0, ru[:1], atol=1e-6) and torch.allclose(rv0, rv[:1], atol=1e-6)
    img, cw = torch.randn(2, 3, 8, 8, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    rc = torch.rand(2, 4, 2, 2, generator=g)
    assert torch.allclose(_per_sample(conv_zbox(img, cw, rc, stride=4)), _per_sample(rc), atol=1e-4)
