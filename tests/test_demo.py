"""`fvit demo`: settings and cache keys, the training pieces, and the --quick run end to end.

The end-to-end run trains the quick classifier and DDPM from scratch into a temporary FVIT_CACHE
(~2 min on 2 CPU cores) and is shared by the tests below through a module fixture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fvit.demo.settings import ALL_METHODS, ClassifierRecipe, get_settings
from fvit.demo.training import augment, lr_at

QUICK_MIN_ACCURACY = 0.70  # quick preset (300 steps, ~40 s on 2 cores) measured 0.83 on 1024 held-out


# ------------------------------------------------------------------------------------------------
# cheap unit tests
# ------------------------------------------------------------------------------------------------


def test_cache_keys_separate_presets_and_seeds():
    quick, full = get_settings("quick"), get_settings("full")
    assert quick.cache_key() != full.cache_key()
    assert quick.cache_key() == get_settings("quick").cache_key()
    assert get_settings("quick", seed=1).cache_key() != quick.cache_key()
    assert quick.cache_key().startswith("world-quick-")


def test_cache_root_follows_fvit_cache(monkeypatch, tmp_path):
    from fvit.demo.world_models import cache_dir

    monkeypatch.setenv("FVIT_CACHE", str(tmp_path))
    s = get_settings("quick")
    assert cache_dir(s) == tmp_path / s.cache_key()


def test_augment_keeps_shape_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    y = augment(x, g, noise_sigma=8 / 255, noise_prob=1.0)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.equal(x, y)


def test_learning_rate_warms_up_and_decays():
    r = ClassifierRecipe(steps=100, warmup_steps=10, lr=1e-3)
    lrs = [lr_at(s, r) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] < 1e-5 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_demo_command_is_registered():
    from fvit.cli import app

    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for flag in ("--out", "--quick", "--retrain", "--device", "--seed"):
        assert flag in result.output


def test_demo_bad_seed_is_one_line_naming_the_option(tmp_path):
    from fvit.cli import app

    result = CliRunner().invoke(app, ["demo", "--quick", "--seed", "-1", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "seed must be >= 0, got -1" in lines[0] and "--seed" in lines[0], result.output
    assert not (tmp_path / "d" / "results.json").exists()  # refused before any work


# ------------------------------------------------------------------------------------------------
# the quick demo, end to end (shared)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from fvit.cli import app

    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("demo") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVIT_CACHE", str(cache))
        result = CliRunner().invoke(app, ["demo", "--quick", "--no-progress", "--out", str(out)])
        assert result.exit_code == 0, result.output + repr(result.exception)
        yield {"out": out, "cache": cache, "output": result.output,
               "results": json.loads((out / "results.json").read_text())}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_report_against_results(out: Path, results: dict) -> None:
    """report.md and the table files say what results.json says: the FViT Table 1 rows (markdown,
    4 decimals, and CSV, exact) are the attacked segmentation results key by key, the headline
    accuracy is the classifier's, and every figure results.json lists is embedded."""
    import csv

    report = (out / "report.md").read_text()
    attacked = results["segmentation"]["attacked"]
    rows = list(csv.DictReader((out / "table1_segmentation_attacked.csv").open()))
    assert len(rows) == len(attacked)
    section = report.split("### Segmentation under PGD", 1)[1].split("###", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| Method")]
    assert len(lines) == len(attacked)
    for row, line, (key, res) in zip(rows, lines, attacked.items()):
        assert row["Method"].endswith(" + DDS") == key.endswith("+dds"), (row, key)
        for column, field in (("Pix. Acc.", "pixel_acc"), ("mIoU", "miou"), ("mAP", "map"), ("Rob. Acc.", "robust_acc")):
            assert float(row[column]) == pytest.approx(res[field], rel=1e-12, abs=1e-12), (key, column)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["Method"] and cells[1:4] == [f"{res[f]:.4f}" for f in ("pixel_acc", "miou", "map")]
        assert int(cells[-1]) == res["n"] == len(results["world"]["eval"]["ids"])
    acc = results["models"]["classifier"]["clean_accuracy"]
    assert f"**Held-out clean accuracy {100 * acc:.1f}%**" in report
    assert [ln[ln.index("(") + 1 : -1] for ln in report.splitlines() if ln.startswith("![")] == results["figures"]


def test_quick_demo_report_says_what_results_json_says(quick_run):
    check_report_against_results(quick_run["out"], quick_run["results"])


def test_quick_demo_has_every_method_with_and_without_dds(quick_run):
    seg = quick_run["results"]["segmentation"]["attacked"]
    for method in ALL_METHODS:
        for key in (method, method + "+dds"):
            row = seg[key]
            assert all(_finite(row[m]) and 0 <= row[m] <= 1 for m in ("pixel_acc", "miou", "map")), key
            assert _finite(row["topk_overlap"])
    sweep = quick_run["results"]["perturbation"]["sweep"]
    radii = get_settings("quick").experiment.radii
    assert all(len(per_radius) == len(radii) for per_radius in sweep.values())
    expl = quick_run["results"]["explanation_attack"]["methods"]
    e = get_settings("quick").experiment
    for method in ALL_METHODS:
        for key in (method, method + "+dds"):
            for attack in ("pgd", *e.expl_objectives, "suite"):
                assert len(expl[key][attack]) == len(e.expl_radii), (key, attack)
                assert all(0 <= v["topk_overlap"] <= 1 and _finite(v["miou"]) for v in expl[key][attack].values())
    cert = quick_run["results"]["certification"]
    assert set(cert["per_method"]) == set(ALL_METHODS) and cert["summary"]["violations"] == []
    for rows in cert["per_method"].values():
        for r in rows:
            g = r["radii"]["gaussian"]
            assert g["certificate"] and g["region"] == min(g["prediction"], g["topk"])
            assert r["radii"]["renyi-re"]["certificate"] is False
    tight = cert["tightness"][ALL_METHODS[0]]["summary"]
    assert set(tight) == {"prediction", "topk"} and list(tight["topk"]) == ["0.9", "1.0", "1.5", "2.0"]


def test_quick_classifier_reaches_stated_accuracy(quick_run):
    info = quick_run["results"]["models"]["classifier"]
    assert info["held_out"]["n"] >= 512
    assert info["clean_accuracy"] >= QUICK_MIN_ACCURACY, info["clean_accuracy"]
    den = quick_run["results"]["models"]["denoiser"]["held_out"]
    assert den["mse_denoised"] < den["mse_noisy"]  # the DDPM denoises, even after a short training


def test_quick_models_are_cached_with_configs(quick_run, monkeypatch):
    from fvit.demo.world_models import get_world_models

    directory = Path(quick_run["results"]["cache_dir"])
    assert directory.parent == quick_run["cache"]
    for name in ("classifier.safetensors", "classifier.json", "denoiser.json", "denoiser/model.safetensors",
                 "denoiser/config.json"):
        assert (directory / name).is_file(), name
    meta = json.loads((directory / "classifier.json").read_text())
    assert meta["data_seed"] == 0 and meta["recipe"]["steps"] == get_settings("quick").classifier.steps
    assert _finite(json.loads((directory / "denoiser.json").read_text())["held_out"]["mse_denoised"])

    monkeypatch.setenv("FVIT_CACHE", str(quick_run["cache"]))
    models = get_world_models(get_settings("quick"), device="cpu", progress=False)
    assert models.trained == []  # warm cache: nothing retrained
    assert models.classifier_info["clean_accuracy"] == meta["clean_accuracy"]
    x = torch.rand(2, 3, 32, 32)
    assert models.classifier(x).shape == (2, get_settings("quick").world.num_classes)


def test_part_stores_resume_same_identity_and_discard_another(tmp_path):
    from fvit.demo.run import PartStores

    rows = [{"id": "a", "setting": "x", "v": 1.5}, {"id": "b", "setting": "x", "v": 2.0}]
    first = PartStores(tmp_path, {"models": "w1"})
    first("segmentation").append(rows)
    assert first.resumed == []  # a fresh store
    again = PartStores(tmp_path, {"models": "w1"})
    assert again("segmentation").rows() == rows and again.resumed == ["segmentation"]
    retrained = PartStores(tmp_path, {"models": "w2"})  # other weights: the old rows are discarded
    assert retrained("segmentation").rows() == [] and retrained.resumed == []


def test_quick_demo_explanation_adversary_is_at_least_as_strong_as_pgd(quick_run):
    """On the quick world, for every method with and without DDS: on the images whose prediction
    classifier PGD did not change (where both maps explain the same class), the explanation-attack
    suite lowers the mean top-k overlap at least as much as PGD at the same radius, and it never
    changes the plain model's prediction; its interval brackets its mean. (Where PGD changes the
    class, the map explains another class and its overlap is not an explanation attack's to match:
    the report prints PGD's change rate beside it.)"""
    part = quick_run["results"]["explanation_attack"]
    r = part["protocol"]["radii"][-1]
    rows = [json.loads(line) for line in (quick_run["out"] / "rows" / "explanation_attack" / "rows.jsonl")
            .read_text().splitlines() if line.strip()]
    by: dict = {}
    for row in rows:
        if "setting" in row:
            by.setdefault(row["setting"], {})[row["id"]] = row
    for key, per in part["methods"].items():
        pgd, suite = by[f"{key}/pgd@{r}"], by[f"{key}/suite@{r}"]
        kept = [i for i, row in pgd.items() if not row["changed"]]
        assert kept, key
        mean = lambda rows_: sum(rows_[i]["overlap"] for i in kept) / len(kept)  # noqa: E731
        assert mean(suite) <= mean(pgd), (key, mean(suite), mean(pgd), len(kept))
        if not key.endswith("+dds"):
            assert per["suite"][r]["changed"] == 0, key
        ci = per["suite"][r]["topk_overlap_ci"]
        assert ci["n"] == per["suite"][r]["n"] and ci["lo"] <= per["suite"][r]["topk_overlap"] <= ci["hi"]


def test_quick_demo_dds_verdicts_follow_the_intervals(quick_run):
    from fvit.demo.run import dds_verdict

    part = quick_run["results"]["explanation_attack"]
    r = part["protocol"]["radii"][-1]
    lines = dds_verdict(part, r)
    diffs = [per[a][r] for per in part["comparisons"]["dds"].values() for a in ("pgd", "suite")]
    assert len(lines) == len(diffs) == 2 * len(ALL_METHODS)
    for line, d in zip(lines, diffs):
        if d["lo"] > 0:
            assert "keeps more" in line
        elif d["hi"] < 0:
            assert "keeps less" in line
        else:
            assert "no significant difference" in line
