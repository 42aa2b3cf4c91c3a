"""DDSExplainer: fixed target per image, batched method calls, fusion, sigma = 0 reduction;
first with a fake method/model, then with the real fvit.explain methods on a tiny ViT."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from fvit.dds import DDS, DDSConfig, DDSExplainer, fuse, make_dds
from fvit.denoise import SmallDDPM, small_unet_config


@dataclass
class FakeExplanation:
    patch: torch.Tensor
    pixel: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    method: str


class FakeModel(torch.nn.Module):
    """Logits = linear map of the 4x4 average-pooled image (3 classes)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3 * 16, 3)
        torch.nn.init.normal_(self.lin.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.lin(F.adaptive_avg_pool2d(x, 4).flatten(1))


class FakeMethod:
    """Gradient x input of the target logit, pooled to a 4x4 patch map; records its calls."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def __call__(self, model, images, target=None):
        x = images.detach().requires_grad_(True)
        logits = model(x)
        tgt = logits.argmax(1) if target is None else torch.as_tensor(target).long().expand(x.shape[0])
        logits.gather(1, tgt[:, None]).sum().backward()
        pixel = (x.grad * x).sum(1).detach()
        self.calls.append((x.shape[0], tgt.clone()))
        return FakeExplanation(F.adaptive_avg_pool2d(pixel[:, None], 4)[:, 0], pixel, tgt, logits.detach(), self.name)


@pytest.fixture(scope="module")
def ddpm():
    m = SmallDDPM(16, small_unet_config(16, width=16), seed=0)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
    return m.eval()


def imgs(b=3, size=16):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_sigma_zero_reduces_to_plain_method(ddpm):
    model, x = FakeModel(), imgs()
    plain = FakeMethod()(model, x)
    out = DDSExplainer(FakeMethod(), DDS(ddpm, sigma=0, samples=3), fuse="mean")(model, x)
    assert torch.allclose(out.patch, plain.patch, atol=1e-6) and torch.allclose(out.pixel, plain.pixel, atol=1e-6)
    assert torch.equal(out.target, plain.target) and torch.allclose(out.logits, plain.logits, atol=1e-6)
    assert out.method == "fake+dds" and isinstance(out, FakeExplanation)
    # max-drop10 of m identical maps = min-max of the map with its lowest 10% zeroed
    md = DDSExplainer(FakeMethod(), DDS(ddpm, sigma=0, samples=3))(model, x)
    assert torch.allclose(md.patch, fuse(plain.patch[:, None], "max-drop10"), atol=1e-6)


def test_fixed_target_and_batched_calls(ddpm):
    model, x, method = FakeModel(), imgs(3), FakeMethod()
    dds = DDS(ddpm, sigma=0.2, samples=4, max_batch=5)
    out = DDSExplainer(method, dds)(model, x, target=2)
    assert [n for n, _ in method.calls] == [5, 5, 2]  # 12 samples, chunks of max_batch
    assert all(bool((t == 2).all()) for _, t in method.calls)
    assert out.patch.shape == (3, 4, 4) and out.pixel.shape == (3, 16, 16) and out.target.tolist() == [2, 2, 2]
    assert float(out.patch.min()) >= 0 and float(out.patch.max()) <= 1


def test_default_target_is_majority_vote(ddpm):
    model, x, method = FakeModel(), imgs(3), FakeMethod()
    dds = DDS(ddpm, sigma=0.3, samples=5, max_batch=64)
    out = DDSExplainer(method, dds)(model, x)
    samples = dds.denoise(x)  # the same seed and content keys: the samples the explainer saw
    with torch.no_grad():
        votes = model(samples.flatten(0, 1)).argmax(1).view(3, 5).tolist()
    # majority vote by hand, ties to the lowest class
    expect = [max(range(3), key=lambda c: (v.count(c), -c)) for v in votes]
    assert out.target.tolist() == expect
    sent = torch.cat([t for _, t in method.calls]).view(3, 5)
    assert bool((sent == out.target[:, None]).all())  # one target for all samples of an image
    samples = dds.denoise(x)
    assert torch.allclose(out.logits, model(samples.flatten(0, 1)).view(3, 5, -1).mean(1), atol=1e-5)


# ---- with the real explanation methods and tiny ViT --------------------------------------------

@pytest.mark.parametrize("name", ["rollout", "gradcam", "transformer_attribution"])
def test_real_methods_through_dds(tiny_model, name):
    from fvit.explain import get_method

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ddpm32 = SmallDDPM(32, small_unet_config(32, width=16), seed=0).eval()
    explainer = DDSExplainer(name, DDS(ddpm32, sigma=8 / 255, samples=2, max_batch=4))
    out = explainer(tiny_model, x, target=torch.tensor([1, 3]))
    assert out.patch.shape == (2, *tiny_model.grid_size) and out.pixel.shape == (2, 32, 32)
    assert out.target.tolist() == [1, 3] and out.logits.shape == (2, 10)
    assert out.method == f"{name}+dds"
    # recomputed: the method on each denoised sample for the image's target, fused by max-drop10
    samples = explainer.dds.denoise(x).flatten(0, 1)
    per_sample = get_method(name)(tiny_model, samples, target=torch.tensor([1, 1, 3, 3]))
    assert torch.allclose(out.patch, fuse(per_sample.patch.view(2, 2, *tiny_model.grid_size), "max-drop10"),
                          atol=1e-5)
    assert torch.allclose(out.pixel, fuse(per_sample.pixel.view(2, 2, 32, 32), "max-drop10"), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(out.logits, tiny_model(samples).view(2, 2, 10).mean(1), atol=1e-5)
    # sigma = 0 + mean fusion == the plain method
    plain = get_method(name)(tiny_model, x)
    same = DDSExplainer(name, make_dds(DDSConfig(sigma=0.0, samples=2)), fuse="mean")(tiny_model, x)
    assert torch.allclose(same.patch, plain.patch, atol=1e-5) and torch.equal(same.target, plain.target)
