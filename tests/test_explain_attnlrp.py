"""AttnLRP: a hand-written modified forward on 1- and 2-block toys, conservation where the rules
promise it (CP-LRP, no biases, epsilon = 0), and lxt itself on identical weights (torchvision ViT
copied into timm; CP-LRP in attention as lxt's torchvision patch map does, with and without zennit's
gamma rules on the Linear / Conv2d layers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fvit.errors import InputError
from fvit.explain import explain, get_method
from fvit.explain.attnlrp import attnlrp_hooks
from fvit.models import tiny_vit


def _toy(depth, seed, num_classes=4):
    """A tiny float64 ViT with every parameter redrawn at scale 0.3 (LayerNorm weights around 1),
    so the logits and maps are O(1) (timm's init gives maps of ~1e-6)."""
    model = tiny_vit(num_classes=num_classes, img_size=8, patch_size=4, embed_dim=8, depth=depth, num_heads=2,
                     seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.timm_model.named_parameters():
            noise = 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(noise + 1 if "norm" in name and name.endswith("weight") else noise)
    return model.eval()


def _stab(z, eps):
    return z + eps * ((z == 0).double() + z.sign())


def _manual_attnlrp(model, images, target, attention, eps):
    """The rules written out as one explicit modified forward (no hooks, no fvit code):
    returns the pixel map sum_ch x_n * dy~/dx_n and the logits."""
    tm = model.timm_model

    def lin(layer, x):  # epsilon rule: value z, Jacobian (z / stab(z)) W
        z = layer(x)
        if eps == 0:
            return z
        c = (z / _stab(z, eps)).detach()
        wx = x @ layer.weight.T
        return c * wx + (z - c * wx).detach()

    def ln(layer, x):  # identity on the normalisation
        mu = x.mean(-1, keepdim=True)
        sd = ((x - mu) ** 2).mean(-1, keepdim=True).add(layer.eps).sqrt().detach()
        return (x - mu) / sd * layer.weight + layer.bias

    def gelu(x):  # linearised: Jacobian gelu(x) / x, value gelu(x)
        c = (F.gelu(x) / _stab(x, 1e-10)).detach()
        return c * x + (F.gelu(x) - c * x).detach()

    def grad_scale(x, s):
        return x * s + (x * (1 - s)).detach()

    x_n = model.normalize(images).detach().requires_grad_(True)
    t = F.conv2d(x_n, tm.patch_embed.proj.weight, tm.patch_embed.proj.bias, stride=4).flatten(2).transpose(1, 2)
    t = torch.cat([tm.cls_token.expand(t.shape[0], -1, -1), t], 1) + tm.pos_embed
    for blk in tm.blocks:
        at = blk.attn
        b, n, d = t.shape
        qkv = lin(at.qkv, ln(blk.norm1, t)).reshape(b, n, 3, at.num_heads, d // at.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv
        if attention == "cp":
            q, k = q.detach(), k.detach()
        else:
            q, k, v = grad_scale(q, 0.25), grad_scale(k, 0.25), grad_scale(v, 0.5)
        a = ((q * at.scale) @ k.transpose(-2, -1)).softmax(-1)  # softmax rule = its plain gradient
        t = t + lin(at.proj, (a @ v).transpose(1, 2).reshape(b, n, d))
        t = t + lin(blk.mlp.fc2, gelu(lin(blk.mlp.fc1, ln(blk.norm2, t))))
    logits = lin(tm.head, ln(tm.norm, t)[:, 0])
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x_n)
    return (x_n * g).sum(1).detach(), logits.detach()


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_equals_hand_written_rules(depth, attention, eps):
    model = _toy(depth, 2)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = torch.tensor([3, 0, 1])
    expect, logits = _manual_attnlrp(model, images, target, attention, eps)
    e = get_method("attnlrp", attention=attention, epsilon=eps)(model, images, target)
    torch.testing.assert_close(e.logits, logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.pixel, expect, rtol=1e-9, atol=1e-12)
    assert float(expect.abs().max()) > 1e-2
    if attention == "attnlrp":  # the rules inside attention matter: CP-LRP gives another map
        cp = get_method("attnlrp", attention="cp", epsilon=eps)(model, images, target).pixel
        assert float((cp - e.pixel).abs().max()) > 1e-6


def test_conservation_cp_without_biases():
    """CP-LRP, epsilon = 0, every bias zero: every rule is linear and homogeneous, so
    pixels + CLS token + position embedding carry exactly y_c."""
    model = _toy(2, 6)
    with torch.no_grad():
        for name, p in model.timm_model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    images.requires_grad_(True)
    target = torch.tensor([1, 2])
    tm = model.timm_model
    with torch.enable_grad(), attnlrp_hooks(model, "cp", 0.0, 0.0, 0.0) as (_, conv_in):
        logits = model(images)
        score = logits.gather(1, target[:, None])[:, 0]
        x_n = conv_in[-1]
        gx, gc, gp = torch.autograd.grad(score.sum(), (x_n, tm.cls_token, tm.pos_embed))
    # batch of 2 shares cls / pos: check the total over the batch, and the pixel map per image
    total = (x_n * gx).sum() + (tm.cls_token * gc).sum() + (tm.pos_embed * gp).sum()
    torch.testing.assert_close(total, score.sum().detach(), rtol=1e-10, atol=1e-12)
    e = get_method("attnlrp", attention="cp", epsilon=0.0)(model, images.detach(), target)
    torch.testing.assert_close(e.pixel, (x_n * gx).sum(1).detach(), rtol=1e-12, atol=1e-14)
    assert float((x_n * gx).sum().abs().detach()) > 1e-3


def test_bad_parameters():
    with pytest.raises(InputError, match="attention"):
        get_method("attnlrp", attention="full")
    model = tiny_vit(num_classes=4, img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2)
    with pytest.raises(InputError, match="gamma"):
        explain(model, torch.rand(1, 3, 8, 8), get_method("attnlrp", gamma=-1.0))


# --------------------------------------------------------------------------------- against lxt
def _torchvision_and_timm_twins(seed=0):
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    torch.manual_seed(seed)
    ref = tv.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                               num_classes=5).double().eval()
    with torch.no_grad():  # torchvision zero-initialises the head: draw every parameter
        for p in ref.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    model = tiny_vit(num_classes=5, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                     mlp_ratio=2.0).double().eval()
    tm = model.timm_model
    sd = {"patch_embed.proj.weight": ref.conv_proj.weight, "patch_embed.proj.bias": ref.conv_proj.bias,
          "cls_token": ref.class_token, "pos_embed": ref.encoder.pos_embedding,
          "norm.weight": ref.encoder.ln.weight, "norm.bias": ref.encoder.ln.bias,
          "head.weight": ref.heads.head.weight, "head.bias": ref.heads.head.bias}
    for i, layer in enumerate(ref.encoder.layers):
        for ours, theirs in [("norm1", layer.ln_1), ("norm2", layer.ln_2), ("mlp.fc1", layer.mlp[0]),
                             ("mlp.fc2", layer.mlp[3]), ("attn.proj", layer.self_attention.out_proj)]:
            sd[f"blocks.{i}.{ours}.weight"], sd[f"blocks.{i}.{ours}.bias"] = theirs.weight, theirs.bias
        sd[f"blocks.{i}.attn.qkv.weight"] = layer.self_attention.in_proj_weight
        sd[f"blocks.{i}.attn.qkv.bias"] = layer.self_attention.in_proj_bias
    missing = tm.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    assert not missing.missing_keys
    return tv, ref, model


def _lxt_efficient():
    """lxt.efficient's torchvision-ViT patch map and zennit patch, loaded without the package's
    ``__init__`` (lxt 2.1 imports its BERT patches there, which fail on newer transformers)."""
    import importlib
    import importlib.util
    import sys
    import types
    from pathlib import Path

    spec = importlib.util.find_spec("lxt")
    if spec is None:
        pytest.skip("lxt is not installed")
    pytest.importorskip("zennit")
    root = Path(list(spec.submodule_search_locations)[0]) / "efficient"
    stubs = []
    for name, path in (("lxt.efficient", root), ("lxt.efficient.models", root / "models")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            sys.modules[name] = stub
            stubs.append(name)
    try:
        vit = importlib.import_module("lxt.efficient.models.vit_torch")
        zennit_patches = importlib.import_module("lxt.efficient.zennit_patches")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return vit.cp_LRP, zennit_patches.monkey_patch_zennit


def _lxt_map(tv, ref, x_n, target, lin_gamma, conv_gamma):
    """lxt's efficient CP-LRP patch map for torchvision's ViT (+ zennit gamma composites), with the
    patched classes restored afterwards (lxt patches torch.nn classes globally)."""
    patch_map, monkey_patch_zennit = _lxt_efficient()
    classes = [tv.nn.GELU, tv.nn.LayerNorm, tv.nn.MultiheadAttention]
    saved = {c: c.__dict__.get("forward") for c in classes}
    composite = None
    try:
        for cls, patch in patch_map.items():  # lxt.efficient.monkey_patch(vision_transformer)
            assert patch(cls)
        if lin_gamma or conv_gamma:
            import zennit.core
            from zennit.composites import LayerMapComposite
            from zennit.rules import Gamma

            saved_hook = (zennit.core.BasicHook.forward, zennit.core.BasicHook.backward)
            monkey_patch_zennit(verbose=False)
            composite = LayerMapComposite([(torch.nn.Linear, Gamma(lin_gamma)), (torch.nn.Conv2d, Gamma(conv_gamma))])
            composite.register(ref)
        x = x_n.clone().requires_grad_(True)
        y = ref(x)
        y.gather(1, target[:, None]).sum().backward()
        return (x * x.grad).sum(1).detach(), y.detach()
    finally:
        if composite is not None:
            composite.remove()
            zennit.core.BasicHook.forward, zennit.core.BasicHook.backward = saved_hook
        for c, f in saved.items():
            setattr(c, "forward", f)
            if "original_forward" in c.__dict__:
                delattr(c, "original_forward")


@pytest.mark.parametrize("lin_gamma, conv_gamma", [(0.0, 0.0), (0.05, 0.25)])
def test_equals_lxt_on_identical_weights(lin_gamma, conv_gamma):
    tv, ref, model = _torchvision_and_timm_twins()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 2, 4])
    ours = get_method("attnlrp", attention="cp", epsilon=0.0, gamma=lin_gamma, conv_gamma=conv_gamma)(model, images, target)
    theirs, logits = _lxt_map(tv, ref, model.normalize(images), target, lin_gamma, conv_gamma)
    torch.testing.assert_close(ours.logits, logits, rtol=1e-10, atol=1e-10)
    scale = float(theirs.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(ours.pixel, theirs, rtol=1e-6, atol=1e-8 * scale)
    if lin_gamma:  # the gamma rules did act (on both sides)
        plain = get_method("attnlrp", attention="cp", epsilon=0.0)(model, images, target).pixel
        assert float((plain - ours.pixel).abs().max()) > 0.1 * scale
    # lxt's patches were undone: plain LayerNorm / GELU gradients again
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.nn.LayerNorm(16).double(), (x,))


@pytest.mark.parametrize("params", [{"attention": "cp", "gamma": 0.1, "conv_gamma": 0.2}, {"epsilon": 0.05}])
def test_differentiable_variants_match_finite_differences(params):
    """The registry-wide test (tests/test_explain_differentiable.py) covers the defaults; here the
    gamma rules and a large epsilon."""
    model = _toy(2, 3)
    method = get_method("attnlrp", **params)
    g = torch.Generator().manual_seed(5)
    x = 0.1 + 0.8 * torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    target = torch.tensor([1, 3])
    w = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    d = method.differentiable(model, x, target)
    torch.testing.assert_close(d.pixel.detach(), method(model, x, target).pixel, rtol=1e-10, atol=1e-14)

    def read_out(images):
        return (w * method.differentiable(model, images, target).patch).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(read_out(xg), xg)
    h = 1e-6
    numeric = (float(read_out(x + h * v)) - float(read_out(x - h * v))) / (2 * h)
    assert abs(numeric) > 1e-4
    assert float((grad * v).sum()) == pytest.approx(numeric, rel=1e-5)
