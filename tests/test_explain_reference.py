"""Methods against hand computations: a by-hand forward of a timm ViT from its weights (no hooks),
and a by-hand LRP in Chefer et al.'s style (autograd.grad per rule, whole-tensor sums at batch 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fvit.explain import explain
from fvit.models import tiny_vit


# ------------------------------------------------------------------------------ by-hand forward
def manual_forward(model, x01):
    """Re-implements timm's ViT forward from the module weights; returns logits and, per block, a
    dict of the intermediate tensors (attention maps keep their autograd graph)."""
    tm = model.timm_model
    x = (x01 - torch.tensor(model.mean).view(1, 3, 1, 1)) / torch.tensor(model.std).view(1, 3, 1, 1)
    conv = tm.patch_embed.proj
    patches = F.conv2d(x, conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2)
    raw = torch.cat([tm.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)
    t = raw + tm.pos_embed
    acts = {"x": x, "raw": raw, "pos": tm.pos_embed.expand_as(raw), "blocks": []}
    for blk in tm.blocks:
        a = blk.attn
        b, n, c = t.shape
        h1 = F.layer_norm(t, (c,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        qkv = F.linear(h1, a.qkv.weight, a.qkv.bias).reshape(b, n, 3, a.num_heads, c // a.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-1, -2)) * (c // a.num_heads) ** -0.5, dim=-1)
        attn.retain_grad()
        ctx = (attn @ v).transpose(1, 2).reshape(b, n, c)
        b1 = F.linear(ctx, a.proj.weight, a.proj.bias)
        mid = t + b1
        h2 = F.layer_norm(mid, (c,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        hidden = F.gelu(F.linear(h2, blk.mlp.fc1.weight, blk.mlp.fc1.bias))
        b2 = F.linear(hidden, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        acts["blocks"].append(dict(x_in=t, h1=h1, q=q, k=k, v=v, attn=attn, ctx=ctx, b1=b1, mid=mid, h2=h2,
                                   hidden=hidden, b2=b2))  # fmt: skip
        t = mid + b2
    feat = F.layer_norm(t, (t.shape[-1],), tm.norm.weight, tm.norm.bias, tm.norm.eps)[:, 0]
    acts["feat"] = feat
    return F.linear(feat, tm.head.weight, tm.head.bias), acts


# ------------------------------------------------------------ Chefer-style LRP (autograd rules)
def safe_divide(a, b):
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def ref_linear(x, w, r):
    pw, nw = w.detach().clamp(min=0), w.detach().clamp(max=0)
    px, nx = leaf(x.clamp(min=0)), leaf(x.clamp(max=0))
    z1, z2 = F.linear(px, pw), F.linear(nx, nw)
    s = safe_divide(r, z1 + z2)
    return px * torch.autograd.grad(z1, px, s)[0] + nx * torch.autograd.grad(z2, nx, s)[0]


def ref_product(fn, a, b, r):
    """RelPropSimple on a two-input op: X_i * d(fn)/dX_i . (R / Z)."""
    a, b = leaf(a), leaf(b)
    z = fn(a, b)
    ga, gb = torch.autograd.grad(z, [a, b], safe_divide(r, z))
    return a * ga, b * gb


def ref_add(a, b, r):
    ra, rb = ref_product(torch.add, a, b, r)
    sa, sb = ra.sum(), rb.sum()
    fa = safe_divide(sa.abs(), sa.abs() + sb.abs()) * r.sum()
    fb = safe_divide(sb.abs(), sa.abs() + sb.abs()) * r.sum()
    return ra * safe_divide(fa, ra.sum()), rb * safe_divide(fb, rb.sum())


def ref_conv(x, conv, r):
    x = leaf(x)
    pw, nw = conv.weight.detach().clamp(min=0), conv.weight.detach().clamp(max=0)
    lo = leaf(x * 0 + x.min())
    hi = leaf(x * 0 + x.max())
    zx = F.conv2d(x, conv.weight.detach(), stride=conv.stride)
    zl, zh = F.conv2d(lo, pw, stride=conv.stride), F.conv2d(hi, nw, stride=conv.stride)
    s = r / (zx - zl - zh + 1e-9)
    gx = torch.autograd.grad(zx, x, s)[0]
    gl = torch.autograd.grad(zl, lo, s)[0]
    gh = torch.autograd.grad(zh, hi, s)[0]
    return x * gx - lo * gl - hi * gh


def reference_relevance(model, acts, target):
    """Chefer et al.'s ViT_LRP.relprop for one image: returns per-block R_A and the pixel map."""
    tm = model.timm_model
    start = F.one_hot(torch.tensor([target]), model.num_classes).float()
    r = torch.zeros(1, model.num_tokens, acts["feat"].shape[-1])
    r[:, 0] = ref_linear(acts["feat"], tm.head.weight, start)
    r_attn = []
    for blk, a in zip(reversed(list(tm.blocks)), reversed(acts["blocks"])):
        r_mid, r_b2 = ref_add(a["mid"], a["b2"], r)
        r_hidden = ref_linear(a["hidden"], blk.mlp.fc2.weight, r_b2)
        r_mid = r_mid + ref_linear(a["h2"], blk.mlp.fc1.weight, r_hidden)
        r_in, r_b1 = ref_add(a["x_in"], a["b1"], r_mid)
        heads = blk.attn.num_heads
        r_ctx = ref_linear(a["ctx"], blk.attn.proj.weight, r_b1)
        r_ctx = r_ctx.reshape(1, -1, heads, r_ctx.shape[-1] // heads).transpose(1, 2)
        ra, rv = ref_product(torch.matmul, a["attn"], a["v"], r_ctx)
        ra, rv = ra / 2, rv / 2
        r_attn.insert(0, ra)
        rq, rk = ref_product(lambda q, k: q @ k.transpose(-1, -2), a["q"], a["k"], ra)
        rq, rk = rq / 2, rk / 2
        r_qkv = torch.stack([rq, rk, rv]).permute(1, 3, 0, 2, 4).reshape(1, model.num_tokens, -1)
        r = r_in + ref_linear(a["h1"], blk.attn.qkv.weight, r_qkv)
    r_raw, _ = ref_add(acts["raw"], acts["pos"], r)
    r_patch = r_raw[:, 1:].transpose(1, 2).reshape(1, -1, *model.grid_size)
    pixel = ref_conv(acts["x"], model.timm_model.patch_embed.proj, r_patch).sum(dim=1)
    return r_attn, pixel


def reference_rollout(mats, normalize):
    eye = torch.eye(mats[0].shape[-1])
    joint = None
    for m in mats:
        m = m + eye
        if normalize:
            m = m / m.sum(-1, keepdim=True)
        joint = m if joint is None else m @ joint
    return joint


# ---------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module", params=[1, 2], ids=["depth1", "depth2"])
def model(request):
    return tiny_vit(num_classes=6, img_size=16, patch_size=4, embed_dim=32, depth=request.param, num_heads=2, seed=3)


@pytest.fixture()
def image():
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_manual_forward_matches_timm(model, image):
    logits, _ = manual_forward(model, image)
    assert torch.allclose(logits, model(image), atol=1e-5)


def test_recorded_attention_equals_hand_attention(model, image):
    _, acts = manual_forward(model, image)
    with torch.no_grad(), model.record() as rec:
        model(image)
    assert len(rec.attentions) == model.depth
    for got, a in zip(rec.attentions, acts["blocks"]):
        assert got.shape == (1, model.num_heads, model.num_tokens, model.num_tokens)
        assert torch.allclose(got, a["attn"].detach(), atol=1e-6)


def test_raw_attention_and_rollout_by_hand(model, image):
    _, acts = manual_forward(model, image)
    mats = [a["attn"].detach().mean(1) for a in acts["blocks"]]
    raw = explain(model, image, "raw_attention").patch
    roll = explain(model, image, "rollout").patch
    assert torch.allclose(raw, mats[-1][:, 0, 1:].reshape(1, *model.grid_size), atol=1e-6)
    expect = reference_rollout(mats, normalize=True)[:, 0, 1:].reshape(1, *model.grid_size)
    assert torch.allclose(roll, expect, atol=1e-6)


def test_gradcam_by_hand(model, image):
    logits, acts = manual_forward(model, image)
    c = 4
    logits[0, c].backward()
    a = acts["blocks"][-1]["attn"]
    w = a.grad[0, :, 0, 1:].mean(-1, keepdim=True)
    expect = (w * a.detach()[0, :, 0, 1:]).mean(0).clamp(min=0).reshape(1, *model.grid_size)
    got = explain(model, image, "gradcam", target=c).patch
    assert torch.allclose(got, expect, atol=1e-7, rtol=1e-4)


def test_lrp_matches_chefer_style_reference(model, image):
    c = 2
    _, acts = manual_forward(model, image)
    _, pixel = reference_relevance(model, acts, c)
    got = explain(model, image, "lrp", target=c)
    assert got.pixel.shape == (1, 16, 16)
    assert torch.allclose(got.pixel, pixel, atol=1e-6, rtol=1e-4)
    assert torch.allclose(got.patch.sum(), pixel.sum(), atol=1e-5)


def test_transformer_attribution_matches_reference(model, image):
    c = 1
    logits, acts = manual_forward(model, image)
    logits[0, c].backward()
    r_attn, _ = reference_relevance(model, acts, c)
    cams = [(a["attn"].grad * ra).clamp(min=0).mean(1) for a, ra in zip(acts["blocks"], r_attn)]
    expect = reference_rollout(cams, normalize=False)[:, 0, 1:].reshape(1, *model.grid_size)
    got = explain(model, image, "ta", target=c).patch
    assert torch.allclose(got, expect, atol=1e-9, rtol=1e-4)


def test_attribution_rollout_by_hand(model, image):
    c = 3
    tm = model.timm_model
    _, acts = manual_forward(model, image)
    mats = []
    for a in acts["blocks"]:
        out = a["mid"] + a["b2"]
        block_logits = tm.head(F.layer_norm(out, (out.shape[-1],), tm.norm.weight, tm.norm.bias, tm.norm.eps)[:, 0])
        g = torch.autograd.grad(block_logits[0, c], a["attn"], retain_graph=True)[0]
        mats.append((a["attn"].detach() * g * 0.5).max(dim=1).values.clamp(min=0))
    expect = reference_rollout(mats, normalize=True)[:, 0, 1:].reshape(1, *model.grid_size)
    got = explain(model, image, "ar", target=c).patch
    assert torch.allclose(got, expect, atol=1e-7, rtol=1e-4)
