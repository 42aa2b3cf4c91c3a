"""Generic attention explainability (Chefer et al. ICCV 2021) against a hand computation.

The reference forward is written out here from the timm weights (patch conv, tokens, per block
q / k / v, softmax, proj, MLP, final norm, head), with each block's attention map made a leaf tensor
so that ``dy_c/dA_b`` comes from plain autograd on that leaf, independently of `model.record`.
"""

import pytest
import torch
import torch.nn.functional as F

from fvit.explain import explain, get_method
from fvit.models import tiny_vit


def _manual_logits_and_attention_grads(model, images, target):
    tm = model.timm_model
    x = model.normalize(images)
    tokens = tm.patch_embed(x)
    tokens = torch.cat([tm.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + tm.pos_embed
    leaves = []
    for blk in tm.blocks:
        at = blk.attn
        b, n, d = tokens.shape
        h = blk.norm1(tokens)
        q, k, v = at.qkv(h).reshape(b, n, 3, at.num_heads, d // at.num_heads).permute(2, 0, 3, 1, 4)
        a = ((q * at.scale) @ k.transpose(-2, -1)).softmax(-1)
        leaf = a.detach().requires_grad_(True)  # the gradient is taken at A, holding q, k fixed
        leaves.append(leaf)
        ctx = (leaf @ v).transpose(1, 2).reshape(b, n, d)
        tokens = tokens + at.proj(ctx)
        tokens = tokens + blk.mlp(blk.norm2(tokens))
    logits = tm.head(tm.norm(tokens)[:, 0])
    score = logits.gather(1, target[:, None]).sum()
    grads = torch.autograd.grad(score, leaves)
    return logits.detach(), [leaf.detach() for leaf in leaves], grads


@pytest.mark.parametrize("depth", [1, 2])
def test_equals_hand_computation(depth):
    model = tiny_vit(num_classes=6, img_size=16, patch_size=4, embed_dim=16, depth=depth, num_heads=2, seed=5)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 4, 2])
    logits, attns, grads = _manual_logits_and_attention_grads(model, images, target)
    r = torch.eye(17).repeat(3, 1, 1)
    for a, g in zip(attns, grads):
        abar = (g * a).clamp(min=0).mean(dim=1)  # mean over heads of the positive part
        r = r + torch.bmm(abar, r)
    expect = r[:, 0, 1:].reshape(3, 4, 4)
    e = explain(model, images, "generic_attention", target=target)
    torch.testing.assert_close(e.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e.patch, expect, rtol=1e-5, atol=1e-6)
    assert float((expect - 0).abs().max()) > 1e-3  # not a trivially zero map
    # the pixel map is the bilinear upsampling of the patch map
    up = F.interpolate(expect[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(e.pixel, up, rtol=1e-5, atol=1e-6)


def test_one_block_value_by_formula():
    """On one block: map = e_CLS^T (I + Abar) restricted to patches = Abar[CLS, 1:] (no identity
    contribution off the diagonal)."""
    model = tiny_vit(num_classes=4, img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, seed=1)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 3])
    _, (a,), (g,) = _manual_logits_and_attention_grads(model, images, target)
    abar = (g * a).clamp(min=0).mean(1)
    e = explain(model, images, "gae", target=target)
    torch.testing.assert_close(e.patch, abar[:, 0, 1:].reshape(2, 2, 2), rtol=1e-5, atol=1e-7)


def test_aliases():
    assert get_method("chefer2021b") is get_method("generic-attention") is get_method("GAE")
