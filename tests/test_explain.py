"""Explanation methods: batching, class specificity, registry, input checks, architectures."""

from __future__ import annotations

import pytest
import torch

from fvit.errors import InputError, UnknownNameError, UnsupportedModelError
from fvit.explain import Explanation, available_methods, explain, get_method
from fvit.models import load_model, tiny_vit

TOKEN = ["raw_attention", "rollout", "gradcam", "lrp", "transformer_attribution", "attribution_rollout",
         "generic_attention", "attnlrp"]  # read the CLS token: refuse Swin / average pooling
PIXEL_GRADIENT = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"]  # any classifier
ALL = TOKEN + PIXEL_GRADIENT
GRADIENT = ["gradcam", "lrp", "transformer_attribution", "attribution_rollout", "generic_attention", "attnlrp", *PIXEL_GRADIENT]


def test_registry_names_and_aliases():
    assert sorted(available_methods()) == sorted(ALL)
    assert get_method("ta") is get_method("transformer-attribution")
    assert get_method("AR") is get_method("attribution_rollout")
    assert get_method("attention") is get_method("raw_attention")
    with pytest.raises(UnknownNameError, match="available"):
        get_method("occlusion")
    assert [m for m in ALL if get_method(m).needs_cls_token] == TOKEN


@pytest.mark.parametrize("method", ALL)
def test_shapes_finite_and_batch_equals_single_calls(tiny_model, images, method):
    target = torch.tensor([0, 3, 7, 3])
    batch = explain(tiny_model, images, method, target=target)
    assert isinstance(batch, Explanation) and batch.method == method
    assert batch.patch.shape == (4, *tiny_model.grid_size)
    assert batch.pixel.shape == (4, *tiny_model.input_size)
    assert batch.logits.shape == (4, tiny_model.num_classes)
    assert torch.equal(batch.target, target)
    assert torch.isfinite(batch.patch).all() and torch.isfinite(batch.pixel).all()
    assert not batch.patch.requires_grad and not batch.pixel.requires_grad
    for i in range(4):
        single = explain(tiny_model, images[i : i + 1], method, target=int(target[i]))
        scale = batch.patch[i].abs().max().clamp(min=1e-12)
        assert torch.allclose(single.patch[0], batch.patch[i], atol=1e-5 * float(scale), rtol=1e-4)
        assert torch.allclose(single.pixel[0], batch.pixel[i], atol=1e-5 * float(scale), rtol=1e-4)


@pytest.mark.parametrize("method", GRADIENT)
def test_target_class_changes_gradient_maps(tiny_model, images, method):
    a = explain(tiny_model, images, method, target=1).patch
    b = explain(tiny_model, images, method, target=8).patch
    assert not torch.allclose(a, b)


def test_target_none_is_prediction(tiny_model, images):
    e = explain(tiny_model, images, "ta")
    with torch.no_grad():
        logits = tiny_model(images)  # an independent forward pass
    assert torch.allclose(e.logits, logits, atol=1e-6)
    assert torch.equal(e.target, logits.argmax(1))
    # the map is the one for that class: equal to asking for the predicted classes explicitly
    assert torch.allclose(e.patch, explain(tiny_model, images, "ta", target=logits.argmax(1)).patch)
    assert len(set(e.target.tolist())) > 1  # the fixture's images are not all one class (else vacuous)


def test_target_forms(tiny_model, images):
    import numpy as np

    expect = explain(tiny_model, images, "gradcam", target=torch.tensor([3, 3, 3, 3])).patch
    for form in (3, np.int64(3), torch.tensor(3), [3, 3, 3, 3]):
        e = explain(tiny_model, images, "gradcam", target=form)
        assert torch.equal(e.target, torch.full((4,), 3)) and torch.allclose(e.patch, expect)


def test_pixel_maps(tiny_model, images):
    import torch.nn.functional as F

    e = explain(tiny_model, images, "rollout")
    up = F.interpolate(e.patch[:, None], size=tiny_model.input_size, mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(e.pixel, up)
    lrp = explain(tiny_model, images, "lrp")  # natively pixel-level: patch = sum-pool of pixels
    ph, pw = tiny_model.patch_size
    pooled = lrp.pixel.reshape(4, tiny_model.grid_size[0], ph, tiny_model.grid_size[1], pw).sum((2, 4))
    assert torch.allclose(lrp.patch, pooled, atol=1e-6)


@pytest.mark.parametrize(
    "target, match",
    [(10, "out of range"), (-1, "out of range"), (torch.tensor([1, 2]), "2 entries")],
)
def test_bad_targets(tiny_model, images, target, match):
    with pytest.raises(InputError, match=match):
        explain(tiny_model, images, "rollout", target=target)


def test_bad_images(tiny_model):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        explain(tiny_model, torch.full((1, 3, 32, 32), 2.0), "rollout")
    with pytest.raises(InputError, match="takes"):
        explain(tiny_model, torch.rand(1, 3, 48, 48), "rollout")
    with pytest.raises(InputError, match="B, 3, H, W"):
        explain(tiny_model, torch.rand(3, 32, 32), "rollout")


def test_leaves_model_clean(images):
    model = tiny_vit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    model.train()
    for name in ALL:
        explain(model, images, name)
    assert model.training  # mode restored; methods ran in eval mode
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(blk.attn.fused_attn == type(blk.attn)(8, 2).fused_attn for blk in model.timm_model.blocks)


def test_methods_run_in_eval_mode(images):
    model = tiny_vit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, attn_drop_rate=0.5)
    model.train()
    a = explain(model, images, "rollout").patch
    b = explain(model, images, "rollout").patch
    assert torch.equal(a, b)


def test_frozen_parameters_give_the_same_maps(images):
    """Gradient methods differentiate w.r.t. the attention / activations, not the weights: a model
    with frozen parameters gives exactly the maps of the same model with trainable ones, and stays
    frozen."""
    model = tiny_vit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    trainable = {name: explain(model, images, name, target=2) for name in GRADIENT}
    model.requires_grad_(False)
    for name in GRADIENT:
        e = explain(model, images, name, target=2)
        torch.testing.assert_close(e.patch, trainable[name].patch, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(e.pixel, trainable[name].pixel, rtol=0, atol=0, msg=name)
        assert float(e.patch.abs().max()) > 0, name  # not the trivial all-zero map
    assert not any(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def _small(name, **kw):
    torch.manual_seed(0)  # random init: GradCAM's ReLU can zero a whole map for some draws
    return load_model(name, pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                      num_classes=5, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "name, kw",
    [
        ("deit_tiny_distilled_patch16_224", {}),  # 2 prefix tokens, two heads averaged
        ("vit_tiny_patch16_224", {"init_values": 0.1, "qk_norm": True, "reg_tokens": 2, "no_embed_class": True}),
        ("vit_tiny_patch16_224", {"pre_norm": True, "qkv_bias": False}),
    ],
    ids=["deit-distilled", "layerscale-qknorm-registers", "pre-norm"],
)
def test_timm_variants(images, name, kw):
    model = _small(name, **kw)
    expect_prefix = 2 if "distilled" in name else 3 if "reg_tokens" in kw else 1
    assert model.num_prefix_tokens == expect_prefix and model.num_tokens == expect_prefix + 16
    attn = _attention_by_hand(model, images)  # per block (B, heads, T, T), recomputed from q, k
    p = expect_prefix
    raw = explain(model, images, "raw_attention")
    assert torch.allclose(raw.patch, attn[-1].mean(1)[:, 0, p:].reshape(4, 4, 4), atol=1e-6)
    joint = torch.eye(model.num_tokens)
    for a in attn:  # rollout by hand: rownorm(mean_h A + I), multiplied from the left
        m = a.mean(1) + torch.eye(model.num_tokens)
        joint = (m / m.sum(-1, keepdim=True)) @ joint
    assert torch.allclose(explain(model, images, "rollout").patch, joint[:, 0, p:].reshape(4, 4, 4), atol=1e-6)
    with torch.no_grad():
        logits = model(images)
    for method in ALL:
        e = explain(model, images, method, target=1)
        assert e.patch.shape == (4, 4, 4) and torch.isfinite(e.patch).all(), method
        assert torch.allclose(e.logits, logits, atol=1e-5) and e.target.tolist() == [1] * 4, method
        assert float(e.patch.abs().sum()) > 0, method


def _attention_by_hand(model, images) -> list[torch.Tensor]:
    """Each block's softmax(q k^T * scale) from its input tokens, independently of `model.record`."""
    inputs = []
    handles = [blk.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
               for blk in model.timm_model.blocks]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    out = []
    for blk, x in zip(model.timm_model.blocks, inputs):
        at = blk.attn
        b, n, _ = x.shape
        q, k, _ = at.qkv(x).reshape(b, n, 3, at.num_heads, at.head_dim).permute(2, 0, 3, 1, 4)
        q, k = at.q_norm(q), at.k_norm(k)
        out.append(((q * at.scale) @ k.transpose(-2, -1)).softmax(-1).detach())
    return out


def test_avg_pool_model_is_unsupported(images):
    model = _small("vit_tiny_patch16_224", global_pool="avg")
    assert model(images).shape == (4, 5)  # still a classifier
    with pytest.raises(UnsupportedModelError, match="global_pool"):
        explain(model, images, "rollout")


def test_swin_is_unsupported():
    model = load_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=16,
                       depths=(1, 1), num_heads=(1, 1), num_classes=3)  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 3)
    for method in TOKEN:  # the pixel-gradient methods run there (tests/test_explain_gradients.py)
        with pytest.raises(UnsupportedModelError, match="Swin.*none of them apply"):
            explain(model, x, method)


def test_models_layer_does_not_list_the_methods():
    """models sits left of explain: no module of fvit.models imports fvit.explain or names a
    registered method in any string, and its refusal reads the same for any method name (a new
    method needs no edit there)."""
    import ast
    from pathlib import Path

    import fvit.models

    methods = available_methods()
    for path in Path(fvit.models.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imports += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imports if m.startswith("fvit.explain")], path.name
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [(m, t) for t in strings for m in methods if m in t], path.name
    swin = load_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=16,
                      depths=(1, 1), num_heads=(1, 1), num_classes=3)  # fmt: skip
    messages = {}
    for name in ("rollout", "a_method_registered_tomorrow"):
        with pytest.raises(UnsupportedModelError) as info:
            swin.require_token_methods(name)
        messages[name] = str(info.value).replace(name, "METHOD")
    assert messages["rollout"] == messages["a_method_registered_tomorrow"]
