"""The differentiable path of every explanation method (for explanation attacks).

Checked in float64 on a tiny random ViT: (1) with ``surrogate=None`` the map equals the method's
own (non-differentiable) output; (2) autograd's directional derivative of a random linear read-out
of the map equals a central finite difference, for the exact map and for the softplus surrogate
(`rectify`) where the method has a ReLU / clamp.
"""

import pytest
import torch

from fvit.errors import InputError
from fvit.explain import available_methods, get_method, rectify
from fvit.models import tiny_vit

METHODS = available_methods()
WITH_CLAMP = ("gradcam", "transformer_attribution", "attribution_rollout", "generic_attention")


@pytest.fixture(scope="module")
def model64():
    m = tiny_vit(num_classes=5, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, seed=3).double()
    with torch.no_grad():  # a non-zero position embedding and class token (timm inits them tiny)
        g = torch.Generator().manual_seed(1)
        m.timm_model.pos_embed.copy_(0.5 * torch.randn(m.timm_model.pos_embed.shape, generator=g, dtype=torch.float64))
        m.timm_model.cls_token.copy_(torch.randn(m.timm_model.cls_token.shape, generator=g, dtype=torch.float64))
    return m.eval()


def _images(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.1 + 0.8 * torch.rand(b, 3, 16, 16, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", METHODS)
def test_exact_path_equals_method(model64, name):
    x = _images(3)
    method = get_method(name)
    ref = method(model64, x)
    d = method.differentiable(model64, x)
    assert d.patch.requires_grad and d.logits.requires_grad
    torch.testing.assert_close(d.patch.detach(), ref.patch, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(d.pixel.detach(), ref.pixel, rtol=1e-10, atol=1e-14)
    assert torch.equal(d.target, ref.target)


def _directional_check(model, name, surrogate, seed):
    method = get_method(name)
    x = _images(2, seed)
    g = torch.Generator().manual_seed(100 + seed)
    target = method(model, x).target  # fixed: no argmax inside the finite differences
    w = torch.randn(2, *model.grid_size, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    scale = float(method(model, x, target).patch.abs().amax())  # a constant: comparable tolerances

    def read_out(images):
        e = method.differentiable(model, images, target, surrogate=surrogate)
        return (w * e.patch).sum() / scale

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(read_out(xg), xg)
    analytic = float((grad * v).sum())
    h = 1e-7  # small: LRP's R / Z rules have poles near Z = 0, so the maps can curve sharply
    numeric = (float(read_out(x + h * v).detach()) - float(read_out(x - h * v).detach())) / (2 * h)
    return analytic, numeric


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_finite_differences(model64, name, seed):
    analytic, numeric = _directional_check(model64, name, None, seed)
    assert abs(numeric) > 1e-6  # the read-out does depend on the input
    assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("name", WITH_CLAMP)
def test_surrogate_gradient_matches_finite_differences(model64, name):
    analytic, numeric = _directional_check(model64, name, 10.0, 0)
    assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("name", WITH_CLAMP)
def test_surrogate_changes_the_clamped_maps_only_slightly(model64, name):
    x = _images(2)
    method = get_method(name)
    exact = method.differentiable(model64, x).patch.detach()
    smooth = method.differentiable(model64, x, surrogate=50.0).patch.detach()
    assert not torch.equal(exact, smooth)
    # rectify is within s*log(2)/beta of the ReLU per entry; the maps stay close relative to their range
    assert float((exact - smooth).abs().max()) < 0.2 * float(exact.abs().max())


def test_rectify_values_and_gradient():
    x = torch.tensor([[-2.0, -0.5, 0.0, 1.0, 4.0]], dtype=torch.float64, requires_grad=True)
    assert torch.equal(rectify(x.detach()), torch.tensor([[0.0, 0.0, 0.0, 1.0, 4.0]], dtype=torch.float64))
    y = rectify(x, 10.0)
    s = 4.0  # max |x|
    expected = s / 10 * torch.log1p(torch.exp(10 * x.detach() / s))
    torch.testing.assert_close(y.detach(), expected)
    assert float((y.detach() - rectify(x.detach())).abs().max()) <= s * 0.6932 / 10
    # homogeneous of degree 1: rectify(c x) = c rectify(x) for c > 0
    torch.testing.assert_close(rectify(3 * x.detach(), 10.0), 3 * y.detach())
    assert torch.autograd.gradcheck(lambda t: rectify(t, 10.0), (x,))


def test_bad_surrogate(model64):
    with pytest.raises(InputError, match="surrogate"):
        get_method("gradcam").differentiable(model64, _images(1), surrogate=0.0)
