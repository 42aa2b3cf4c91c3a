"""Real ImageNet images through every method on a random-weight ViT at 224x224 (skips without
../shared/assets)."""

from __future__ import annotations

import pytest
import torch

from fvit.data.images import load_images
from fvit.explain import available_methods, explain, get_method
from fvit.models import load_model

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def vit224():
    torch.manual_seed(0)
    return load_model("vit_tiny_patch16_224", pretrained=False)  # 12 blocks, 14x14 grid


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


def test_real_images_all_methods_end_to_end(assets_dir, vit224):
    """Three real photos at 224 px through a 12-block ViT: raw attention and rollout equal their
    definitions computed by hand from q and k; every method's batched map (one target per image)
    equals the map of each image explained alone, and the pixel map is the patch map upsampled."""
    paths = sorted((assets_dir / "imagenet-samples").glob("*.JPEG"))[:3]
    if len(paths) < 3:
        pytest.skip("imagenet-samples has fewer than 3 images")
    images = load_images(paths, vit224.input_size)
    assert images.shape == (3, 3, 224, 224)
    attn = _attention_by_hand(vit224, images)
    raw = explain(vit224, images, "raw_attention").patch
    torch.testing.assert_close(raw, attn[-1].mean(1)[:, 0, 1:].reshape(3, 14, 14), rtol=1e-5, atol=1e-7)
    joint = torch.eye(197)
    for a in attn:  # rollout by hand: rownorm(mean_h A + I), multiplied from the left
        m = a.mean(1) + torch.eye(197)
        joint = (m / m.sum(-1, keepdim=True)) @ joint
    rollout = explain(vit224, images, "rollout").patch
    torch.testing.assert_close(rollout, joint[:, 0, 1:].reshape(3, 14, 14), rtol=1e-4, atol=1e-8)
    targets = [0, 500, 999]
    cheap = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 4}}  # path / noise passes
    for method in available_methods():
        e = explain(vit224, images, method, target=torch.tensor(targets), **cheap.get(method, {}))
        assert e.patch.shape == (3, 14, 14) and e.pixel.shape == (3, 224, 224), method
        assert e.target.tolist() == targets, method
        for i, t in enumerate(targets):
            one = explain(vit224, images[i : i + 1], method, target=t, **cheap.get(method, {}))
            scale = float(one.patch.abs().max()) or 1.0
            torch.testing.assert_close(e.patch[i], one.patch[0], rtol=1e-4, atol=1e-5 * scale, msg=method)
        up = torch.nn.functional.interpolate(e.patch[:, None].float(), size=(224, 224), mode="bilinear",
                                             align_corners=False)[:, 0]
        if not get_method(method).native_pixel:  # LRP and the gradient methods are natively pixel-level
            torch.testing.assert_close(e.pixel.float(), up, rtol=1e-5, atol=1e-6 * float(up.abs().max()), msg=method)
