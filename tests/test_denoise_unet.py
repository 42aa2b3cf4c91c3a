"""The guided-diffusion-compatible UNet: exact parameter count, checkpoint key layout, shapes,
and checkpoint loading / error messages."""

import dataclasses

import pytest
import torch

from fvit.denoise import UNet, guided_diffusion_256_config, load_denoiser
from fvit.denoise.guided import GuidedDiffusionDenoiser, load_guided_diffusion
from fvit.errors import CheckpointError


def reduced_config():
    """Same topology as 256x256_diffusion_uncond (6 levels, 2 res blocks, attention at ds 8/16/32,
    resblock_updown, scale-shift norm, 6 outputs) at 1/16 of the width."""
    return dataclasses.replace(guided_diffusion_256_config(), model_channels=16, num_head_channels=16,
                               norm_groups=8)


def test_guided_parameter_count_and_keys_on_meta():
    with torch.device("meta"):
        unet = UNet(guided_diffusion_256_config())
    assert sum(p.numel() for p in unet.parameters()) == 552_814_086
    sd = unet.state_dict()
    # a few names/shapes of the official checkpoint
    assert tuple(sd["time_embed.0.weight"].shape) == (1024, 256)
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (256, 3, 3, 3)
    assert tuple(sd["input_blocks.10.1.qkv.weight"].shape) == (1536, 512, 1)
    assert tuple(sd["middle_block.1.proj_out.weight"].shape) == (1024, 1024, 1)
    assert tuple(sd["output_blocks.17.0.skip_connection.weight"].shape) == (256, 512, 1, 1)
    assert tuple(sd["out.2.weight"].shape) == (6, 256, 3, 3)
    assert len(sd) == 566


@pytest.mark.parametrize("size", [256, 224])
def test_reduced_width_shapes(size):
    torch.manual_seed(0)
    unet = UNet(reduced_config()).eval()
    with torch.inference_mode():
        out = unet(torch.randn(1, 3, size, size), torch.tensor([15]))
    assert out.shape == (1, 6, size, size)
    den = GuidedDiffusionDenoiser(unet)
    assert den.working_size(224, 224) == (224, 224)          # Carlini: 224 directly
    assert den.working_size(224, 224, "always") == (256, 256)  # demo: 224 -> 256 -> 224
    assert den.working_size(100, 100) == (256, 256)          # not a multiple of 32


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = reduced_config()
    torch.manual_seed(0)
    unet = UNet(cfg)
    for p in unet.parameters():  # non-zero everywhere so the check is meaningful
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path / "ckpt.pt"
    torch.save(unet.state_dict(), path)
    den = load_guided_diffusion(path, config=cfg)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([3, 145])
    with torch.inference_mode():
        assert torch.allclose(den.predict_eps(x, t), unet(x, t)[:, :3], atol=1e-5)

    sd = unet.state_dict()
    sd.pop("out.2.bias")
    sd["out.2.weight"] = torch.zeros(5, 16, 3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*missing 1.*out\.2\.bias.*shape mismatch.*\(6, 16, 3, 3\)"):
        load_guided_diffusion(tmp_path / "bad.pt", config=cfg)
    with pytest.raises(CheckpointError, match="nothere.pt"):
        load_denoiser(f"guided-diffusion-256:{tmp_path / 'nothere.pt'}")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_guided_diffusion(tmp_path / "junk.pt", config=cfg)


@pytest.mark.slow
def test_full_size_forward_is_per_sample_and_reads_the_timestep():
    """The real-size network (weights from a seeded normal draw, 64 x 64 inputs to keep it fast):
    each sample's output depends on that sample only (GroupNorm and attention never mix the
    batch), and on its timestep."""
    with torch.device("meta"):
        unet = UNet(guided_diffusion_256_config())
    unet = unet.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.02, generator=g)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.inference_mode():
        both = unet(x, torch.tensor([15, 15]))
        first = unet(x[:1], torch.tensor([15]))
        later = unet(x[:1], torch.tensor([500]))
    assert both.shape == (2, 6, 64, 64)
    scale = float(first.abs().max())
    assert scale > 0
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5 * scale)
    assert float((both[1] - both[0]).abs().max()) > 1e-3 * scale  # the second sample is not a copy
    assert float((later - first).abs().max()) > 1e-4 * scale  # the timestep embedding reaches the output
