"""Gradient baselines (saliency, input x gradient, integrated gradients, SmoothGrad) against captum
on identical inputs, the per-image noise, and the model-capability check (they run on Swin)."""

from __future__ import annotations

import pytest
import torch

from fvit.errors import InputError, UnsupportedModelError
from fvit.explain import explain, get_method
from fvit.explain.gradients import gaussian_blur, seeded_noise, quadrature
from fvit.models import load_model, tiny_vit

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def model64():
    return tiny_vit(num_classes=5, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, seed=4).double().eval()


@pytest.fixture(scope="module")
def x64():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


TARGET = torch.tensor([0, 3, 1])


def _check(e, expect_pixel, model, rel=1e-9):
    """fvit's maps equal ``expect_pixel`` within ``rel`` of its largest entry (float64: 1e-9; captum's
    integrated gradients casts its quadrature weights to float32, hence 1e-6 there)."""
    expect_pixel = expect_pixel.detach()
    atol = rel * float(expect_pixel.abs().max())
    torch.testing.assert_close(e.pixel, expect_pixel, rtol=rel, atol=atol)
    ph, pw = model.patch_size
    b, h, w = expect_pixel.shape
    pooled = expect_pixel.reshape(b, h // ph, ph, w // pw, pw).sum((2, 4))
    torch.testing.assert_close(e.patch, pooled, rtol=rel, atol=atol * ph * pw)
    assert float(expect_pixel.abs().max()) > 0


def test_saliency_equals_captum(model64, x64):
    ref = captum_attr.Saliency(model64).attribute(x64.clone(), target=TARGET, abs=True).amax(dim=1)
    _check(explain(model64, x64, "saliency", target=TARGET), ref, model64)


def test_input_x_gradient_equals_captum(model64, x64):
    ref = captum_attr.InputXGradient(model64).attribute(x64.clone(), target=TARGET).sum(dim=1)
    _check(explain(model64, x64, "input_x_gradient", target=TARGET), ref, model64)


@pytest.mark.parametrize("integration, captum_method", [("gauss-legendre", "gausslegendre"), ("riemann", "riemann_right")])
@pytest.mark.parametrize("baseline", ["black", "blurred", "uniform"])
def test_integrated_gradients_equals_captum(model64, x64, integration, captum_method, baseline):
    method = get_method("integrated_gradients", steps=7, integration=integration, baseline=baseline, blur_sigma=1.5)
    base = {"black": torch.zeros_like(x64), "blurred": gaussian_blur(x64, 1.5),
            "uniform": seeded_noise(x64, 1, 0, kind="uniform").expand_as(x64)}[baseline]
    ref = captum_attr.IntegratedGradients(model64).attribute(
        x64.clone(), baselines=base, target=TARGET, n_steps=7, method=captum_method).sum(dim=1)
    _check(method(model64, x64, TARGET), ref, model64, rel=1e-6)


def test_integrated_gradients_completeness(model64, x64):
    """sum of the IG map = y_c(x) - y_c(x') up to the quadrature error (Gauss-Legendre, smooth path)."""
    e = get_method("ig", steps=48)(model64, x64, TARGET)
    with torch.no_grad():
        gap = (model64(x64) - model64(torch.zeros_like(x64))).gather(1, TARGET[:, None])[:, 0]
    torch.testing.assert_close(e.pixel.sum((1, 2)), gap, rtol=1e-6, atol=1e-8)


def test_blur_equals_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(x, 2.0), tvf.gaussian_blur(x, kernel_size=13, sigma=2.0))


def test_quadrature_integrates_polynomials():
    a, w = quadrature(4, "gauss-legendre")  # exact for degree <= 7 on [0, 1]
    assert sum(wi * ai ** 7 for ai, wi in zip(a, w)) == pytest.approx(1 / 8, rel=1e-12)
    a, w = quadrature(4, "riemann")
    assert a == [0.25, 0.5, 0.75, 1.0] and w == [0.25] * 4


def test_smoothgrad_equals_captum_noise_tunnel(model64, x64, monkeypatch):
    std, n = 0.2, 5
    noise = (std * seeded_noise(x64, n, 7))[None].expand(3, -1, -1, -1, -1)  # (B, n, 3, H, W): fvit's draws for seed 7
    real_normal = torch.normal

    def captum_noise(mean, stdev, *args, **kwargs):  # captum: input.repeat_interleave(n) + torch.normal(0, std)
        assert torch.is_tensor(stdev) and stdev.shape == (3 * n, 3, 16, 16)
        return noise.flatten(0, 1).clone()

    monkeypatch.setattr(torch, "normal", captum_noise)
    ref = captum_attr.NoiseTunnel(captum_attr.Saliency(model64)).attribute(
        x64.clone(), nt_type="smoothgrad", nt_samples=n, stdevs=std, target=TARGET, abs=True).amax(dim=1)
    monkeypatch.setattr(torch, "normal", real_normal)
    _check(get_method("smoothgrad", noise_std=std, samples=n, seed=7)(model64, x64, TARGET), ref, model64)


def test_noise_is_seeded_and_the_same_in_any_batch(x64):
    a = seeded_noise(x64, 3, 0)
    assert a.shape == (3, 3, 16, 16) and torch.equal(seeded_noise(x64[1:2], 3, 0), a)
    assert not torch.equal(a[0], a[1]) and not torch.equal(seeded_noise(x64, 3, 1), a)
    u = seeded_noise(x64, 2, 0, kind="uniform")
    assert float(u.min()) >= 0 and float(u.max()) <= 1 and abs(float(a.std()) - 1) < 0.2


def test_many_samples_split_into_passes_equal_one_pass(model64, x64, monkeypatch):
    import fvit.explain.gradients as gradients

    whole = get_method("smoothgrad", samples=6)(model64, x64, TARGET).pixel
    monkeypatch.setattr(gradients, "MAX_PASS_IMAGES", 6)  # 2 samples of every image per pass
    torch.testing.assert_close(get_method("smoothgrad", samples=6)(model64, x64, TARGET).pixel, whole)


def test_bad_parameters(model64, x64):
    with pytest.raises(InputError, match="steps"):
        get_method("integrated_gradients", steps=0)(model64, x64)
    with pytest.raises(InputError, match="baseline"):
        get_method("integrated_gradients", baseline="white")


def test_gradient_methods_run_on_swin_where_token_methods_refuse():
    model = load_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=16,
                       depths=(1, 1), num_heads=(1, 1), num_classes=3)  # fmt: skip
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"):
        e = explain(model, x, get_method(name) if name != "integrated_gradients" else get_method(name, steps=4),
                    target=1)
        assert e.pixel.shape == (2, 32, 32) and e.patch.shape == (2, 8, 8) and float(e.pixel.abs().sum()) > 0
    ref = captum_attr.Saliency(model).attribute(x.clone(), target=1, abs=True).amax(dim=1)
    torch.testing.assert_close(explain(model, x, "saliency", target=1).pixel, ref, rtol=1e-5, atol=1e-7)
    d = get_method("saliency").differentiable(model, x, torch.tensor([1, 1]))
    assert d.patch.requires_grad
    for name in ("rollout", "generic_attention"):
        with pytest.raises(UnsupportedModelError, match="Swin"):
            explain(model, x, name)
