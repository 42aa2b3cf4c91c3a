"""`fvit explain --dds` end to end: the FViT explanation through a small DDPM denoiser folder."""

from __future__ import annotations

import json

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
    assert record["dds"]["samples"] == 3 and record["dds"]["sigma"] == "8/255"
    patch = np.array(record["patch_map"])
    assert patch.shape == (8, 8) and np.isfinite(patch).all()
    # max-drop10 fusion ends with a per-image min-max: the fused map spans [0, 1]
    assert abs(patch.min()) < 1e-6 and abs(patch.max() - 1) < 1e-6
    assert (out / "img0.png").stat().st_size > 0

    # sigma = 0 with mean fusion is the plain method (DDS reduces to the identity)
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    assert _run([*common, "--out", str(plain)]).exit_code == 0
    assert _run([*common, "--out", str(zero), "--dds", "--sigma", "0", "--fuse", "mean", "--samples", "2",
                 "--denoiser", ""]).exit_code == 0
    for i in range(3):
        a = np.array(json.loads((plain / f"img{i}.json").read_text())["patch_map"])
        b = np.array(json.loads((zero / f"img{i}.json").read_text())["patch_map"])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_explain_dds_missing_denoiser_is_one_line_error(tmp_path):
    paths = _images(tmp_path, 1)
    res = CliRunner().invoke(app, ["explain", *paths, "--model", "tiny", "--no-pretrained", "--out",
                                   str(tmp_path / "o"), "--dds", "--denoiser", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "nope" in res.output and "Traceback" not in res.output
