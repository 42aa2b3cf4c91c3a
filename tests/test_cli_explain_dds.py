"""`fvit explain --dds` end to end: the FViT explanation through a small DDPM denoiser folder."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from fvit.cli import app
from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config


def _images(tmp_path, n=3):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (36, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _denoiser(tmp_path):
    model = SmallDDPM(32, config=small_unet_config(image_size=32, width=8))
    return str(save_small_ddpm(model, tmp_path / "ddpm"))


def _run(args):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_explain_with_dds_writes_fused_maps(tmp_path):
    paths = _images(tmp_path)
    common = ["explain", *paths, "--model", "tiny", "--no-pretrained", "--method", "rollout"]
    out = tmp_path / "out"
    res = _run([*common, "--out", str(out), "--dds", "--denoiser", _denoiser(tmp_path), "--samples", "3",
                "--sigma", "8/255"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "img0.json").read_text())
    assert record["method"] == "rollout+dds"
    assert record["dds"]["samples"] == 3 and record["dds"]["sigma"] == 8 / 255 and record["dds"]["fuse"] == "max_drop10"
    patch = np.array(record["patch_map"])
    assert patch.shape == (8, 8) and np.isfinite(patch).all()
    # max-drop10 fusion ends with a per-image min-max: the fused map spans [0, 1]
    assert abs(patch.min()) < 1e-6 and abs(patch.max() - 1) < 1e-6
    # the overlay PNG has the original's size and is 0.5 * original + 0.5 * jet(min-max of the fused
    # pixel map): its colour layer lies on the jet colour map and spans it (min-max), not constant
    original = np.asarray(Image.open(paths[0]).convert("RGB"), dtype=np.float64) / 255
    png = np.asarray(Image.open(out / "img0.png").convert("RGB"), dtype=np.float64) / 255
    assert png.shape == original.shape == (36, 30, 3) and record["overlay_size"] == [36, 30]
    heat, off_map = _inverse_jet((png - 0.5 * original) / 0.5)
    assert off_map.max() < 0.02  # 8-bit rounding only (2 / 255 after dividing by alpha)
    assert heat.min() < 0.02 and heat.max() > 0.98 and heat.std() > 0.1

    # sigma = 0 with mean fusion is the plain method (DDS reduces to the identity)
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    assert _run([*common, "--out", str(plain)]).exit_code == 0
    assert _run([*common, "--out", str(zero), "--dds", "--sigma", "0", "--fuse", "mean", "--samples", "2",
                 "--denoiser", ""]).exit_code == 0
    for i in range(3):
        a = np.array(json.loads((plain / f"img{i}.json").read_text())["patch_map"])
        b = np.array(json.loads((zero / f"img{i}.json").read_text())["patch_map"])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # the plain overlay recomputed: 0.5 image + 0.5 jet(minmax(patch -> 32 px -> 36 x 30)), 8 bit
        original = np.asarray(Image.open(paths[i]).convert("RGB"), dtype=np.float64) / 255
        heat = _bilinear(a, (32, 32), (36, 30))
        heat = (heat - heat.min()) / (heat.max() - heat.min())
        expect = np.round((0.5 * original + 0.5 * matplotlib.colormaps["jet"](heat)[..., :3]) * 255)
        png = np.asarray(Image.open(plain / f"img{i}.png").convert("RGB"), dtype=np.float64)
        assert np.abs(png - expect).max() <= 2, i


def _bilinear(patch, *sizes):
    """The patch map resized (bilinear, align_corners=False) through each size in turn."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(patch), dtype=torch.float64)[None, None]
    for size in sizes:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[0, 0].numpy()


def _inverse_jet(rgb):
    """(H, W, 3) colours -> (the jet value in [0, 1] of the nearest of 1024 jet colours, the largest
    per-channel distance to it)."""
    table = matplotlib.colormaps["jet"](np.linspace(0, 1, 1024))[:, :3]
    nearest = ((rgb[..., None, :] - table) ** 2).sum(-1).argmin(-1)
    return nearest / 1023, np.abs(rgb - table[nearest]).max(-1)


def test_explain_dds_missing_denoiser_is_one_line_error(tmp_path):
    paths = _images(tmp_path, 1)
    res = CliRunner().invoke(app, ["explain", *paths, "--model", "tiny", "--no-pretrained", "--out",
                                   str(tmp_path / "o"), "--dds", "--denoiser", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "nope" in res.output and "Traceback" not in res.output
