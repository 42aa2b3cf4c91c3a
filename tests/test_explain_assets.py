"""Real ImageNet images through every method on a random-weight ViT at 224x224 (skips without
../shared/assets)."""

from __future__ import annotations

import pytest
import torch

from fvit.data.images import load_images
from fvit.explain import available_methods, explain
from fvit.models import load_model

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def vit224():
    torch.manual_seed(0)
    return load_model("vit_tiny_patch16_224", pretrained=False)  # 12 blocks, 14x14 grid


def test_real_images_all_methods_end_to_end(assets_dir, vit224):
    paths = sorted((assets_dir / "imagenet-samples").glob("*.JPEG"))[:3]
    if len(paths) < 3:
        pytest.skip("imagenet-samples has fewer than 3 images")
    images = load_images(paths, vit224.input_size)
    assert images.shape == (3, 3, 224, 224)
    cheap = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 4}}  # path / noise passes
    for method in available_methods():
        e = explain(vit224, images, method, target=torch.tensor([0, 500, 999]), **cheap.get(method, {}))
        assert e.patch.shape == (3, 14, 14) and e.pixel.shape == (3, 224, 224), method
        assert torch.isfinite(e.pixel).all(), method
        if method == "gradcam":  # relu of a head-weighted sum: may be all 0 for a random model
            assert (e.patch >= 0).all()
        else:
            assert (e.patch.flatten(1).std(1) > 0).all(), method  # not a constant map
