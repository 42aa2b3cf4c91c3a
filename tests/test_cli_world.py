"""`--model world` / `--denoiser world`: the demo's cached models from `fvit explain`, `fvit bench`
and `fvit certify`. The models are trained exactly as the demo trains them, on a preset with tiny
recipes ('mini', added to the demo's presets here) in a temporary FVIT_CACHE, so the file stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from fvit.demo import settings as demo_settings
from fvit.demo import world_models
from fvit.demo.settings import ClassifierRecipe, DemoSettings, DenoiserRecipe, get_settings
from fvit.registry import Registry

MINI = DemoSettings(name="mini", classifier=ClassifierRecipe(train_images=240, steps=3, batch_size=32, warmup_steps=1),
                    denoiser=DenoiserRecipe(steps=2, batch_size=8, train_images=48, unet={"width": 8}))


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    """FVIT_CACHE in a temporary folder, the 'mini' preset registered, the mini models trained once."""
    cache = tmp_path_factory.mktemp("cache")
    presets = Registry("demo preset")
    for name, s in demo_settings.PRESETS.items():
        presets.register(name, s)
    presets.register("mini", MINI)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVIT_CACHE", str(cache))
        mp.setattr(demo_settings, "PRESETS", presets)
        mp.setattr(world_models, "EVAL_FOR_TRAINING_CHECKS", 64)
        models = world_models.get_world_models(get_settings("mini"), device="cpu", progress=False)
        assert models.trained == ["classifier", "denoiser"]
        yield {"cache": cache, "models": models}


def _app():
    from fvit.cli import bench, certify, explain

    app = typer.Typer()
    for module in (bench, certify, explain):
        module.register(app)
    return app


def _world_pngs(tmp_path: Path, n: int = 2) -> list[Path]:
    from fvit.data.world import make_world

    ds = make_world("eval", n, seed=0)
    paths = []
    for i in range(n):
        arr = (ds.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        paths.append(tmp_path / f"w{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def test_world_names_resolve_to_the_demo_cache(monkeypatch, tmp_path):
    from fvit.cli import world
    from fvit.errors import FvitError, UnknownNameError

    monkeypatch.setenv("FVIT_CACHE", str(tmp_path))
    assert [world.world_preset(s) for s in ("world", "World:Quick", "world:", "tiny", "./world", None)] == [
        "full", "quick", "full", None, None, None]
    full1 = tmp_path / get_settings("full", 1).cache_key()
    assert world.world_classifier_path("world", 1) == str(full1 / "classifier.safetensors")
    assert world.denoiser_spec("world:quick", 0) == str(tmp_path / get_settings("quick").cache_key() / "denoiser")
    assert world.denoiser_spec("guided-diffusion-256", 0) == "guided-diffusion-256"
    with pytest.raises(UnknownNameError, match="nosuch"):
        world.check_world_options("world:nosuch", None, 0)
    with pytest.raises(FvitError, match="drop --checkpoint"):
        world.check_world_options("world", "w.pth", 0)


def test_bench_refuses_world_with_checkpoint_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("FVIT_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(_app(), ["bench", "segmentation", "--data", "world:eval,2", "--model", "world",
                                    "--checkpoint", "w.pth", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "drop --checkpoint" in r.output
    assert not (tmp_path / "cache").exists()  # refused before any training


def test_explain_world_model_is_the_cached_classifier(mini_world, tmp_path):
    """`fvit explain --model world:mini` explains with the demo's trained classifier: the map and
    prediction equal the library's on the cached model; with --dds the world DDPM is used."""
    from fvit.explain import get_method

    paths = _world_pngs(tmp_path)
    r = CliRunner().invoke(_app(), ["explain", *map(str, paths), "--model", "world:mini", "--method", "rollout",
                                    "--device", "cpu", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    from fvit.data.images import load_images

    net = mini_world["models"].classifier
    x = load_images(paths, net.input_size)
    ref = get_method("rollout")(net, x)
    for i, p in enumerate(paths):
        rec = json.loads((tmp_path / "e" / f"{p.stem}.json").read_text())
        assert rec["predicted_class"] == int(ref.logits[i].argmax())
        torch.testing.assert_close(torch.tensor(rec["patch_map"]), ref.patch[i], rtol=1e-5, atol=1e-7)
    r = CliRunner().invoke(_app(), ["explain", str(paths[0]), "--model", "world:mini", "--dds", "--denoiser",
                                    "world:mini", "--samples", "2", "--method", "rollout", "--device", "cpu",
                                    "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "d" / f"{paths[0].stem}.json").read_text())
    assert rec["dds"]["denoiser"] == str(mini_world["models"].directory / "denoiser")


def test_bench_explanation_attack_on_world_models(mini_world, tmp_path):
    """The issue's command: `fvit bench explanation-attack --data world --model world --denoiser
    world` runs on the demo's trained models (recorded: the cached weights and denoiser)."""
    out = tmp_path / "ea"
    r = CliRunner().invoke(_app(), [
        "bench", "explanation-attack", "--data", "world:eval,2", "--model", "world:mini", "--denoiser", "world:mini",
        "--methods", "rollout", "--radii", "8/255", "--objectives", "topk", "--steps", "1", "--samples", "1",
        "--compare", "none", "--batch-size", "2", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "results.json").read_text())
    directory = mini_world["models"].directory
    assert rec["bench_settings"]["model"] == {"name": "world:mini", "label": None, "pretrained": False,
                                              "checkpoint": str(directory / "classifier.safetensors")}
    assert rec["bench_settings"]["dds"]["denoiser"] == str(directory / "denoiser")
    assert rec["settings"]["weights"] == f"fvit demo world {get_settings('mini').cache_key()} (classifier)"
    assert set(rec["results"]["methods"]) == {"rollout", "rollout+dds"}
    clean = rec["results"]["methods"]["rollout"]["topk"]
    assert list(clean) and all(0 <= v["topk_overlap"] <= 1 for v in clean.values())


def test_bench_frontier_on_world_models_resumes_to_the_same_results(mini_world, tmp_path):
    """`fvit bench frontier --model world --denoiser world`: runs on the demo's trained models, and a
    run killed after its first batch resumes in the same folder to the results of a run in one go."""
    from fvit.bench.engine import run_experiment
    from fvit.cli.bench import bench_settings

    args = ["bench", "frontier", "--data", "world:eval,4", "--model", "world:mini", "--denoiser", "world:mini",
            "--methods", "raw_attention", "--sigmas", "8/255,1/4", "--fusions", "mean", "--samples", "1",
            "--objectives", "soft-topk", "--steps", "1", "--k", "4", "--cert-samples", "8", "--cert-n0", "4",
            "--alpha", "0.05", "--attack", "fgsm", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    whole = tmp_path / "whole"
    r = CliRunner().invoke(_app(), [*args, "--out", str(whole)])
    assert r.exit_code == 0, r.output
    first = json.loads((whole / "results.json").read_text())["results"]
    assert [c["sigma"] for c in first["cells"]] == [8 / 255, 0.25]
    assert first["protocol"]["classifier_attack"]["name"] == "fgsm"
    # a killed run: the rows of only two of the four images stored, then the same command in that folder
    import shutil

    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    lines = (killed / "rows.jsonl").read_text().splitlines()
    ids = sorted({json.loads(line)["id"] for line in lines[1:]})
    keep = [lines[0]] + [line for line in lines[1:] if json.loads(line)["id"] in ids[:2]]
    assert len(ids) == 4 and len(keep) < len(lines)
    (killed / "rows.jsonl").write_text("\n".join(keep) + "\n")
    r = CliRunner().invoke(_app(), [*args, "--out", str(killed)])
    assert r.exit_code == 0, r.output
    again = json.loads((killed / "results.json").read_text())["results"]
    assert again["cells"] == first["cells"] and again["plain"] == first["plain"]


def test_certify_on_world_models(mini_world, tmp_path):
    paths = _world_pngs(tmp_path, 1)
    out = tmp_path / "c"
    r = CliRunner().invoke(_app(), ["certify", str(paths[0]), "--model", "world:mini", "--denoiser", "world:mini",
                                    "--samples", "8", "--n0", "4", "--k", "2", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "certify.json").read_text())
    assert rec["config"]["dds"]["denoiser"] == str(mini_world["models"].directory / "denoiser")
    assert rec["config"]["model"] == "world:mini" and len(rec["results"]) == 1


def test_bench_certify_on_world_models(mini_world, tmp_path):
    out = tmp_path / "bc"
    r = CliRunner().invoke(_app(), ["bench", "certify", "world:eval,1", "--model", "world:mini", "--denoiser",
                                    "world:mini", "--samples", "8", "--n0", "4", "--k", "2", "--factors", "1",
                                    "--attack-steps", "1", "--eot", "1", "--check-samples", "4", "--batch-size", "1",
                                    "--no-progress", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "results.json").read_text())
    directory = mini_world["models"].directory
    assert rec["bench_settings"]["model"]["checkpoint"] == str(directory / "classifier.safetensors")
    assert rec["bench_settings"]["dds"]["denoiser"] == str(directory / "denoiser")
    assert rec["config"]["model"] == "world:mini" and rec["n_images"] == 1
