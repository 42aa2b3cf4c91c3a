"""What the command-line tests share: the tiny offline model options, an in-process runner, a
random PNG writer, a random small DDPM folder."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

TINY = ["--model", "tiny", "--no-pretrained", "--device", "cpu"]


def run_cli(args):
    from fvit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def write_png(path, seed=0, size=(36, 30)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def small_ddpm_folder(directory):
    from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config

    return save_small_ddpm(SmallDDPM(32, config=small_unet_config(image_size=32, width=8)), directory / "ddpm")
