"""`fvit methods` and `fvit explain` end to end on the tiny random ViT; image loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from fvit.cli.explain import register
from fvit.data.images import load_image, load_images
from fvit.errors import InputError


def _app():
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture()
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    paths = [tmp_path / "photo.jpg", tmp_path / "grey.png", tmp_path / "alpha.png", tmp_path / "palette.png"]
    rgb.save(paths[0])
    rgb.convert("L").save(paths[1])
    rgb.convert("RGBA").resize((20, 70)).save(paths[2])
    rgb.convert("P").save(paths[3])
    return paths


def test_load_images_any_mode_and_size(image_files):
    one = load_image(image_files[2])
    assert one.shape == (3, 70, 20) and one.dtype == torch.float32
    batch = load_images(image_files, (32, 24))
    assert batch.shape == (4, 3, 32, 24) and 0 <= batch.min() and batch.max() <= 1


def test_load_images_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.png: no such file"):
        load_images([tmp_path / "missing.png"], 32)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(InputError, match="notes.png"):
        load_image(text)


def test_methods_lists_all_with_gradient_needs():
    r = CliRunner().invoke(_app(), ["methods"])
    assert r.exit_code == 0, r.output
    from fvit.explain import available_methods

    lines = r.output.strip().splitlines()
    assert [line.split()[0] for line in lines[:len(available_methods())]] == available_methods()
    assert any(line.startswith("rollout") and "forward only" in line for line in lines)
    assert any(line.startswith("transformer_attribution") and "gradients" in line for line in lines)


def test_explain_writes_png_and_json_per_image(image_files, tmp_path):
    out = tmp_path / "out"
    args = ["explain", *map(str, image_files), "--model", "tiny", "--no-pretrained", "--method", "ta",
            "--batch-size", "3", "--device", "cpu", "--out", str(out)]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    for p in image_files:
        record = json.loads((out / f"{p.stem}.json").read_text())
        assert record["method"] == "transformer_attribution" and record["model"] == "tiny"
        assert 0 <= record["predicted_class"] < 10 and record["target"] == record["predicted_class"]
        assert np.asarray(record["patch_map"]).shape == (8, 8)
        assert record["input_size"] == [32, 32]
        with Image.open(out / f"{p.stem}.png") as im:
            assert im.mode == "RGB" and list(im.size[::-1]) == record["image_size"]
    assert json.loads((out / "alpha.json").read_text())["image_size"] == [70, 20]


def test_explain_with_target_and_lrp(image_files, tmp_path):
    args = ["explain", str(image_files[0]), "--model", "tiny", "--no-pretrained", "--method", "lrp",
            "--target", "3", "--out", str(tmp_path)]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "photo.json").read_text())["target"] == 3


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["missing.jpg"], "missing.jpg: no such file"),
        (["--method", "occlusion"], "unknown explanation method 'occlusion'"),
        (["--target", "99"], "out of range"),
    ],
)
def test_errors_exit_2_with_one_line(image_files, tmp_path, extra, needle):
    paths = [str(tmp_path / extra[0])] if extra[0].endswith(".jpg") else [str(image_files[0])]
    opts = extra if not extra[0].endswith(".jpg") else []
    args = ["explain", *paths, "--model", "tiny", "--no-pretrained", *opts, "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 2
    assert needle in r.output
    assert len(r.output.strip().splitlines()) == 1
