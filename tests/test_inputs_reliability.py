"""Issue 25, inputs: EXIF orientation, option ranges, usage errors, bad denoiser folders, malformed
data sets. Every refusal is exit status 2 with one line on stderr (no traceback), before work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fvit.cli import app
from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config
from cli_helpers import TINY, small_ddpm_folder, write_png as _png, run_cli as _run  # noqa: F401

TINY = ["--model", "tiny", "--no-pretrained", "--device", "cpu"]
BENCH = ["bench", "segmentation", "--model", "tiny", "--no-pretrained", "--no-progress", "--methods", "rollout",
         "--attack", "fgsm", "--figure", "0", "--batch-size", "2"]


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fvit: error:"), r.output
    for n in needles:
        assert n in lines[0], r.output
    return lines[0]


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return small_ddpm_folder(tmp_path_factory.mktemp("ddpm"))


# -- EXIF orientation --------------------------------------------------------------------------
@pytest.mark.parametrize("orientation, turn", [(6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                                (3, lambda a: np.rot90(a, 2)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    from fvit.data.images import image_size, load_image, load_images

    rng = np.random.default_rng(1)
    stored = rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif.tobytes())
    shown = np.ascontiguousarray(turn(stored))  # what a viewer displays
    got = (load_image(tmp_path / "phone.png") * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(got, shown)
    assert image_size(tmp_path / "phone.png") == shown.shape[:2]
    Image.fromarray(shown).save(tmp_path / "upright.png")
    assert torch.equal(load_images([tmp_path / "phone.png"], (16, 8)), load_images([tmp_path / "upright.png"], (16, 8)))


# -- option ranges -----------------------------------------------------------------------------
def test_bench_option_ranges(tmp_path):
    data = ["--data", "world:eval,4"]
    _one_line_error(_run([*BENCH, *data, "--topk", "65", "--out", tmp_path / "a"]),
                    "topk 65: larger than the model's 64 patches", "--topk")
    assert not (tmp_path / "a" / "results.json").exists()
    _one_line_error(_run([*BENCH, *data, "--eps", "10", "--out", tmp_path / "b"]), "--eps 10: outside [0, 1]")
    _one_line_error(_run([*BENCH, *data, "--methods", "", "--out", tmp_path / "c"]), "--methods ''")
    _one_line_error(_run([*BENCH, *data, "--methods", " , ", "--out", tmp_path / "c"]), "--methods ''")
    _one_line_error(_run(["bench", "perturbation", "--model", "tiny", "--no-pretrained", *data, "--radii", "0,3",
                          "--attack", "fgsm", "--out", tmp_path / "d"]), "--radii 3: outside [0, 1]")
    # a settings error names the option that sets the field (not only "SegmentationParams: figure")
    _one_line_error(_run([*BENCH[:-4], *data, "--figure", "-1", "--out", tmp_path / "f"]),
                    "figure must be >= 0, got -1 (command-line options: --figure)")
    from fvit.cli.bench import check_options

    # an l_2 radius may exceed 1 (pixel units of a whole image)
    check_options({"out": tmp_path / "e", "attack": "pgd-l2", "eps": "2"})
    with pytest.raises(ValueError, match="--eps 2: outside"):
        check_options({"out": tmp_path / "e", "attack": "pgd", "eps": "2"})


@pytest.mark.parametrize("steps", ["0", "-1", "1e11", "2000000"])
def test_timestep_steps_out_of_range(steps):
    _one_line_error(_run(["timestep", "--sigma", "0.03", f"--steps={steps}"]), "--steps")


def test_usage_errors_are_one_line(tmp_path):
    img = _png(tmp_path / "a.png")
    _one_line_error(_run(["explain", img, *TINY, "--batch-size", "abc", "--out", tmp_path / "o"]),
                    "Invalid value for '--batch-size'", "explain --help")
    _one_line_error(_run(["certify", img, *TINY, "--beta", "abc"]), "Invalid value for '--beta'")
    _one_line_error(_run(["explain", img, *TINY, "--no-such-option"]), "--no-such-option")
    _one_line_error(_run(["explain"]), "Missing argument")
    assert _run(["timestep", "--sigma", "0.03"]).output.strip() == "15"  # a good call still works


# -- denoiser folders --------------------------------------------------------------------------
def _edited(tmp_path, ddpm, edit):
    bad = tmp_path / "bad-ddpm"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((ddpm / "model.safetensors").read_bytes())
    cfg = json.loads((ddpm / "config.json").read_text())
    cfg = edit(cfg)
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


def _set(path, value):
    def edit(cfg):
        node = cfg
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return cfg
    return edit


@pytest.mark.parametrize("edit, needle", [
    (lambda c: [c], "expected a JSON object, found list"),
    (_set(("schedule", "T"), 0), "'schedule.T' must be an integer in [1, 1000000], got 0"),
    (_set(("schedule", "T"), -5), "'schedule.T' must be an integer"),
    (_set(("schedule", "T"), 10 ** 12), "'schedule.T' must be an integer"),
    (_set(("schedule", "T"), 10), "bad 'schedule'"),
    (_set(("schedule", "betas"), "0.1,0.2"), "'schedule.betas' must be a list"),
    (_set(("image_size",), 0), "'image_size' must be an integer in [1, 4096], got 0"),
    (_set(("image_size",), -32), "'image_size' must be an integer"),
    (_set(("architecture", "model_channels"), -8), "'architecture.model_channels' must be an integer"),
    (_set(("architecture", "model_channels"), 2.5), "'architecture.model_channels' must be an integer"),
    (_set(("architecture", "in_channels"), "3"), "'architecture.in_channels' must be an integer"),
    (_set(("architecture", "model_channels"), 4096), "checkpoint does not fit the architecture"),
    (_set(("architecture", "channel_mult"), []), "'architecture.channel_mult' must be a list"),
])
def test_bad_denoiser_config_is_one_line_naming_file_and_field(tmp_path, ddpm, edit, needle):
    bad = _edited(tmp_path, ddpm, edit)
    img = _png(tmp_path / "a.png")
    line = _one_line_error(_run(["explain", img, *TINY, "--method", "rollout", "--dds", "--denoiser", bad,
                                 "--samples", "1", "--out", tmp_path / "o"]), needle)
    assert "config.json" in line or "model.safetensors" in line


def test_truncated_or_pickled_weights_are_one_line(tmp_path, ddpm):
    img = _png(tmp_path / "a.png")
    bad = _edited(tmp_path, ddpm, lambda c: c)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    args = ["explain", img, *TINY, "--method", "rollout", "--dds", "--denoiser", bad, "--samples", "1",
            "--out", tmp_path / "o"]
    _one_line_error(_run(args), f"{weights}: not a readable safetensors file")
    from safetensors.torch import load_file

    torch.save(load_file(str(ddpm / "model.safetensors")), weights)  # a pickle renamed to .safetensors
    _one_line_error(_run(args), f"{weights}: a pickle / torch.save file, not safetensors")


# -- data sets ---------------------------------------------------------------------------------
def test_malformed_gtsegs_mat(tmp_path):
    import h5py

    path = tmp_path / "gtsegs_ijcv.mat"
    with h5py.File(path, "w") as f:
        f.create_dataset("value/img", data=np.zeros((3, 1)))
        f.create_dataset("value/gt", data=np.zeros((3, 1)))
    _one_line_error(_run([*BENCH, "--data", f"imagenet-seg:{path}", "--out", tmp_path / "o"]),
                    "'value/img' must be an (N, 1) array of object references")


def test_corrupt_image_in_a_mask_folder_is_found_before_any_batch(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(5):
        _png(images / f"x{i}.png", seed=i)
        Image.fromarray((np.random.default_rng(i).random((36, 30)) > 0.5).astype(np.uint8) * 255).save(masks / f"x{i}.png")
    data = (images / "x4.png").read_bytes()
    (images / "x4.png").write_bytes(data[: len(data) // 2])  # the last image (batch 3) is truncated
    out = tmp_path / "o"
    _one_line_error(_run([*BENCH, "--data", f"masks:{images},{masks}", "--out", out]), "x4.png")
    assert not (out / "rows.jsonl").exists()  # nothing computed


def test_json_outputs_have_no_nan_constants(tmp_path):
    from fvit.utils import json_safe

    safe = json_safe({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, "x")})
    assert safe == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"]}
    json.dumps(safe, allow_nan=False)


def _diffusers_folder(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "d" / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "d" / "scheduler")
    return tmp_path / "d"


@pytest.mark.parametrize("damage, needle", [
    (("num_train_timesteps", 0), "'num_train_timesteps' must be an integer in [1, 1000000], got 0"),
    (("num_train_timesteps", -3), "'num_train_timesteps' must be an integer"),
    (("trained_betas", "0.1"), "'trained_betas' must be a list"),
    (("beta_end", "big"), "'beta_end' must be a number"),
    ("list", "expected a JSON object, found list"),
    ("truncated", "diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    ("pickle-renamed", "diffusion_pytorch_model.safetensors: a pickle / torch.save file"),
    ("only-bin", "diffusion_pytorch_model.bin: pickled weights (fvit never unpickles)"),
])
def test_bad_diffusers_folder_is_one_line_naming_file_and_field(tmp_path, damage, needle):
    root = _diffusers_folder(tmp_path)
    cfg_path = root / "scheduler" / "scheduler_config.json"
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    if isinstance(damage, tuple):
        cfg = json.loads(cfg_path.read_text())
        cfg[damage[0]] = damage[1]
        cfg_path.write_text(json.dumps(cfg))
    elif damage == "list":
        cfg_path.write_text(json.dumps([json.loads(cfg_path.read_text())]))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-64])
    else:
        from safetensors.torch import load

        state = load(weights.read_bytes())  # in memory: the file is rewritten below
        torch.save(state, weights if damage == "pickle-renamed" else weights.with_suffix(".bin"))
        if damage == "only-bin":
            weights.unlink()
    img = _png(tmp_path / "a.png")
    _one_line_error(_run(["explain", img, *TINY, "--method", "rollout", "--dds", "--denoiser", f"diffusers:{root}",
                          "--samples", "1", "--out", tmp_path / "o"]), needle)


def test_dds_samples_too_large_for_memory_are_refused_before_work(tmp_path, ddpm, monkeypatch):
    import fvit.utils

    monkeypatch.setattr(fvit.utils, "available_memory", lambda device="cpu": 2 ** 30)  # 1 GiB here
    img = _png(tmp_path / "a.png")
    _one_line_error(_run(["explain", img, *TINY, "--method", "rollout", "--dds", "--denoiser", ddpm,
                          "--samples", "100000000", "--out", tmp_path / "o"]),
                    "--samples 100000000 with --batch-size 1: needs about", "more than the 1 GiB available")
    assert not any((tmp_path / "o").iterdir())
    _one_line_error(_run([*BENCH, "--data", "world:eval,4", "--denoiser", ddpm, "--samples", "100000000",
                          "--out", tmp_path / "b"]), "DDS samples=100000000 x batch_size=2", "--samples, --batch-size")
    assert not (tmp_path / "b" / "rows.jsonl").exists()
    # 100 samples of a 32 x 32 image: 100 * 4 * 17 * 1024 bytes = 6.6 MiB (hand-computed), well within 1 GiB
    assert fvit.utils.dds_batch_bytes(1, 100, (32, 32), 32) == 100 * 4 * 17 * 1024
    assert _run(["explain", img, *TINY, "--method", "rollout", "--dds", "--denoiser", ddpm, "--samples", "2",
                 "--out", tmp_path / "o"]).exit_code == 0


def test_target_and_sampler_steps_out_of_range(tmp_path, ddpm):
    img = _png(tmp_path / "a.png")
    _one_line_error(_run(["explain", img, *TINY, "--method", "rollout", "--target", "99", "--out", tmp_path / "o"]),
                    "--target 99: out of range of the model's classes [0, 10)")
    _one_line_error(_run(["explain", img, *TINY, "--method", "rollout", "--dds", "--denoiser", ddpm, "--samples", "1",
                          "--denoise", "ancestral:10000000", "--out", tmp_path / "o"]),
                    "steps must be in [1, 1000000]")


def test_num_classes_too_large_for_memory(tmp_path, monkeypatch):
    import fvit.utils

    monkeypatch.setattr(fvit.utils, "available_memory", lambda device="cpu": 2 ** 30)
    img = _png(tmp_path / "a.png")
    # 10**6 classes x 1280 x 4 bytes x 2 = 9.5 GiB > 1 GiB; 1000 classes (10 MiB) pass the check
    _one_line_error(_run(["explain", img, *TINY, "--num-classes", "1000000", "--out", tmp_path / "o"]),
                    "--num-classes 1000000 (the classifier head): needs about 9.54 GiB")
    assert _run(["explain", img, *TINY, "--method", "rollout", "--num-classes", "1000",
                 "--out", tmp_path / "o"]).exit_code == 0
