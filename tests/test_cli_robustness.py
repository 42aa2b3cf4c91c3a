"""Bad and unusual inputs at the command line: every one ends with exit status 2 and a single
line naming the input at fault (no traceback), or is handled without silent data loss."""

from __future__ import annotations

import json
import os
import pathlib
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fvit.cli import app
from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config
from cli_helpers import TINY, small_ddpm_folder, write_png as _png, run_cli as _run  # noqa: F401

@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return small_ddpm_folder(tmp_path_factory.mktemp("ddpm"))


@pytest.fixture()
def img(tmp_path):
    return _png(tmp_path / "good.png")


def _bad_ddpm(tmp_path, ddpm, drop: str):
    bad = tmp_path / "bad-ddpm"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((ddpm / "model.safetensors").read_bytes())
    cfg = json.loads((ddpm / "config.json").read_text())
    del cfg[drop]
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


def _pickle_checkpoint(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(2), "obj": pathlib.PurePosixPath("x")}, p)  # not a plain state dict
    return p


# (name, argv builder(tmp_path, img, ddpm) -> list, text the one-line message must contain)
CASES = [
    ("sigma nan (explain --dds)",
     lambda t, i, d: ["explain", i, *TINY, "--dds", "--denoiser", d, "--sigma", "nan", "--out", t / "o"],
     "--sigma: 'nan' is not a finite number"),
    ("sigma 1e6 (explain --dds)",
     lambda t, i, d: ["explain", i, *TINY, "--dds", "--denoiser", d, "--sigma", "1e6", "--out", t / "o"],
     "outside [0, 1]"),
    ("sigma inf (certify)",
     lambda t, i, d: ["certify", i, *TINY, "--denoiser", d, "--sigma", "inf"], "--sigma: 'inf' is not a finite number"),
    ("sigma nan (timestep)", lambda t, i, d: ["timestep", "--sigma", "nan"], "--sigma: 'nan' is not a finite number"),
    ("--out is a file (explain)",
     lambda t, i, d: ["explain", i, *TINY, "--out", i], "exists and is not a folder"),
    ("--out is a file (certify)",
     lambda t, i, d: ["certify", i, *TINY, "--denoiser", d, "--samples", "2", "--n0", "2", "--out", i],
     "exists and is not a folder"),
    ("--out below a file (explain)",
     lambda t, i, d: ["explain", i, *TINY, "--out", i / "sub"], "cannot write there"),
    ("--out is a file (bench)",
     lambda t, i, d: ["bench", "segmentation", "--data", "world", *TINY, "--out", i, "--attack", "none"],
     "exists and is not a folder"),
    ("image over the pixel limit",
     lambda t, i, d: ["explain", _huge(t), *TINY, "--out", t / "o"], "huge.png: 14000x13000 pixels"),
    ("pixel limit names the explain flag",
     lambda t, i, d: ["explain", _huge(t), *TINY, "--out", t / "o"],
     "pass max_pixels=None (command-line options: --allow-large-images)"),
    ("tiny without weights names the flags",
     lambda t, i, d: ["explain", i, "--model", "tiny", "--device", "cpu", "--out", t / "o"],
     "no pretrained weights; pass checkpoint=PATH or pretrained=False (command-line options: --checkpoint PATH, "
     "--no-pretrained)"),
    ("bench: tiny without weights names the flags",
     lambda t, i, d: ["bench", "segmentation", "--data", "world", "--model", "tiny", "--device", "cpu",
                      "--out", t / "o"], "(command-line options: --checkpoint PATH, --no-pretrained)"),
    ("DDS without a denoiser names --denoiser",
     lambda t, i, d: ["explain", i, *TINY, "--dds", "--denoiser", "", "--out", t / "o"],
     "DDS needs a denoiser: pass a denoiser spec (e.g. guided-diffusion-256:PATH, diffusers:PATH or a small-DDPM "
     "folder) (command-line options: --denoiser)"),
    ("--device foo", lambda t, i, d: ["explain", i, "--model", "tiny", "--no-pretrained", "--device", "foo",
                                      "--out", t / "o"], "--device device 'foo'"),
    ("--device cuda:7", lambda t, i, d: ["explain", i, "--model", "tiny", "--no-pretrained", "--device", "cuda:7",
                                         "--out", t / "o"], "devices here: auto, cpu"),
    ("--device foo (bench)",
     lambda t, i, d: ["bench", "segmentation", "--data", "world", "--model", "tiny", "--no-pretrained",
                      "--device", "foo", "--out", t / "o"], "--device device 'foo'"),
    ("small DDPM config without image_size",
     lambda t, i, d: ["explain", i, *TINY, "--dds", "--denoiser", _bad_ddpm(t, d, "image_size"),
                      "--out", t / "o"], "missing key 'image_size'"),
    ("--num-classes 0", lambda t, i, d: ["explain", i, *TINY, "--num-classes", "0", "--out", t / "o"],
     "--num-classes 0"),
    ("--batch-size 0", lambda t, i, d: ["explain", i, *TINY, "--batch-size", "0", "--out", t / "o"],
     "--batch-size 0"),
    ("a folder as an image", lambda t, i, d: ["explain", t, *TINY, "--out", t / "o"], "is a folder, not an image"),
    ("pickled checkpoint", lambda t, i, d: ["explain", i, *TINY, "--checkpoint", _pickle_checkpoint(t),
                                           "--out", t / "o"], "not a plain state dict"),
    ("--mc-batch 0", lambda t, i, d: ["certify", i, *TINY, "--denoiser", d, "--mc-batch", "0"], "--mc-batch 0"),
    ("--alpha 1.5", lambda t, i, d: ["certify", i, *TINY, "--denoiser", d, "--alpha", "1.5"], "--alpha 1.5"),
    ("--denoiser foo:bar", lambda t, i, d: ["explain", i, *TINY, "--dds", "--denoiser", "foo:bar",
                                            "--out", t / "o"], "unknown backend 'foo' (backends: guided-diffusion-256:, diffusers:, small:"),
    ("certify --k over the patch count",
     lambda t, i, d: ["certify", i, *TINY, "--denoiser", d, "--k", "65"], "--k 65: larger than the model's 64 patches"),
    ("float TIFF outside [0, 1]", lambda t, i, d: ["explain", _float_tiff(t, 3.0), *TINY, "--out", t / "o"],
     "f.tif: float image with values in [0, 3]"),
]


def _huge(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("L", (14000, 13000)).save(p, optimize=False)  # 182 Mpx > 179 Mpx, a small file
    return p


def _float_tiff(tmp_path, top):
    p = tmp_path / "f.tif"
    Image.fromarray(np.linspace(0, top, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(p)
    return p


@pytest.mark.parametrize("name, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_it(tmp_path, img, ddpm, name, argv, needle):
    r = _run(argv(tmp_path, img, ddpm))
    assert r.exit_code == 2, (name, r.output, r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert needle in lines[0], lines[0]


def test_unwritable_out_is_refused_before_computing(tmp_path, img, ddpm):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = _run(["certify", img, *TINY, "--denoiser", ddpm, "--samples", "2", "--n0", "2", "--out", locked])
        assert r.exit_code == 2 and "cannot write there" in r.output and len(r.output.strip().splitlines()) == 1
        assert "Faithful region" not in r.output  # refused before certifying anything
    finally:
        locked.chmod(stat.S_IRWXU)


def test_colliding_stems_give_unique_names_and_full_paths(tmp_path):
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    paths = [_png(tmp_path / "d1" / "a.png", 1), _png(tmp_path / "d2" / "a.png", 2), _png(tmp_path / "a_2.png", 3)]
    out = tmp_path / "out"
    r = _run(["explain", *paths, *TINY, "--method", "rollout", "--out", out])
    assert r.exit_code == 0, r.output
    records = sorted(out.glob("*.json"))
    assert len(records) == 3 and len(list(out.glob("*.png"))) == 3
    images = {json.loads(p.read_text())["image"] for p in records}
    assert images == {str(p.resolve()) for p in paths}
    assert sorted(p.stem for p in records) == ["1-a", "2-a", "3-a_2"]


def test_a_bad_file_among_good_ones_writes_nothing_whatever_the_batch(tmp_path):
    good = [_png(tmp_path / f"g{i}.png", i) for i in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good[0].read_bytes()[:60])  # a valid header, truncated data
    for batch in ("1", "16"):
        out = tmp_path / f"out{batch}"
        r = _run(["explain", *good, bad, *TINY, "--method", "rollout", "--batch-size", batch, "--out", out])
        assert r.exit_code == 2 and "broken.png" in r.output and len(r.output.strip().splitlines()) == 1
        assert list(out.glob("*")) == []


def test_sixteen_bit_and_float_images_keep_their_range(tmp_path):
    from fvit.data.images import load_image

    ramp16 = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    ramp12 = (ramp16 // 16).astype(np.uint16)  # 0..4095 in a 16-bit file
    Image.fromarray(ramp12).save(tmp_path / "g12.png")
    rampf = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(rampf, mode="F").save(tmp_path / "f.tif")
    for name, expect in (("g16.png", ramp16 / 65535), ("g12.png", ramp12 / 65535), ("f.tif", rampf)):
        x = load_image(tmp_path / name)
        assert x.shape == (3, 64, 64)
        assert torch.equal(x[0], x[2])
        np.testing.assert_allclose(x[1].numpy(), expect, atol=1e-6, err_msg=name)
    # before: 99.6 % of the 16-bit ramp loaded as white; now the share of white pixels is the ramp's
    assert float((load_image(tmp_path / "g16.png") == 1).float().mean()) == pytest.approx(1 / 4096)


def test_large_jpeg_is_downscaled_on_load(tmp_path):
    from fvit.data._io import open_image

    p = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 30, 60)).save(p)
    im = open_image(p, size=(32, 32))
    assert im.size[0] < 4000 / 4 and min(im.size) >= 64  # decoded small, still >= 2x the target


def test_allow_large_images_opens_them(tmp_path):
    from fvit.data.images import load_images

    p = _huge(tmp_path)
    x = load_images([p], 32, max_pixels=None)
    assert x.shape == (1, 3, 32, 32) and float(x.max()) == 0.0
