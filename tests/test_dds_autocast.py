"""Low-precision denoiser path (DDS ``autocast``): bf16 / fp16 agree with fp32 on a tiny
guided-diffusion-topology UNet within stated tolerances, "auto" resolves to bf16 on CUDA only.

Tolerances. bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 0.2 %); through the UNet's ~10
layers the errors add up to well under 2 % of the largest eps (fp16, 11 bits: 8x smaller). The
one-shot x0 in pixels is ``(x_t - sqrt(1 - abar) eps) / sqrt(abar) / 2 + 1 / 2``, so an eps error e
moves a pixel by ``noise_to_signal[t*] / 2 * e``; at sigma = 8/255 (t* = 18, noise_to_signal ~ 0.063)
a 2 % error on eps of size ~3 moves pixels by < 2e-3, half an 8-bit grey level."""

import dataclasses

import pytest
import torch

from fvit.dds import DDS
from fvit.dds.core import resolve_autocast
from fvit.denoise import UNet, guided_diffusion_256_config
from fvit.denoise.guided import GuidedDiffusionDenoiser


@pytest.fixture(scope="module")
def denoiser():
    cfg = dataclasses.replace(guided_diffusion_256_config(), model_channels=16, num_head_channels=8,
                              norm_groups=4, channel_mult=(1, 2), attention_ds=(2,))
    torch.manual_seed(0)
    unet = UNet(cfg)
    for p in unet.parameters():  # the zero-initialised output layers would make eps == 0
        torch.nn.init.normal_(p, std=0.05)
    den = GuidedDiffusionDenoiser(unet).eval()
    with torch.inference_mode():  # scale the output so eps has unit std, like a trained denoiser
        std = den.predict_eps(torch.randn(4, 3, 32, 32), torch.tensor([18, 18, 300, 900])).std()
        unet.out[-1].weight /= std
        unet.out[-1].bias /= std
    return den


@pytest.mark.parametrize("dtype,rel_tol", [(torch.bfloat16, 0.02), (torch.float16, 0.0025)])
def test_eps_low_precision_matches_fp32(denoiser, dtype, rel_tol):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([18, 250, 900])
    with torch.inference_mode():
        ref = denoiser.predict_eps(x, t)
        with torch.autocast("cpu", dtype=dtype):
            low = denoiser.predict_eps(x, t)
    assert low.dtype == torch.float32  # the denoiser hands back the input's dtype
    err = (ref - low).abs().max().item() / ref.abs().max().item()
    assert 0 < err < rel_tol  # > 0: the low-precision kernels really ran


@pytest.mark.parametrize("name,tol", [("bf16", 2e-3), ("fp16", 3e-4)])
def test_one_shot_x0_low_precision_matches_fp32(denoiser, name, tol):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keys = ["a", "b", "c"]
    ref = DDS(denoiser, samples=2, autocast="none").denoise(images, keys=keys)
    dds = DDS(denoiser, samples=2, autocast=name)
    low = dds.denoise(images, keys=keys)
    assert low.dtype == torch.float32 and dds.settings()["autocast_used"] == name
    diff = (ref - low).abs().max().item()
    assert 0 < diff < tol


def test_auto_is_fp32_on_cpu_and_bf16_on_cuda(denoiser, monkeypatch):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    auto = DDS(denoiser, samples=2)  # the default
    assert auto.autocast is None and auto.settings()["autocast_used"] == "none"
    assert torch.equal(auto.denoise(images), DDS(denoiser, samples=2, autocast="none").denoise(images))
    assert resolve_autocast("auto", "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_autocast("auto", "cuda:0") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_autocast("auto", "cuda") is torch.float16
    assert resolve_autocast("none", "cuda") is None and resolve_autocast("bf16", "cpu") is torch.bfloat16
