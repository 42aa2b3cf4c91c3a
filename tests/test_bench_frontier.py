"""Entry 'frontier' (fvit.bench.frontier) on a tiny random ViT, a function denoiser and the world."""

import pytest

from fvit.bench import ResultsStore
from fvit.bench import experiments as ex
from fvit.bench.frontier import FrontierParams, pareto_front
from fvit.certify import CertifyConfig
from fvit.errors import FvitError
from conftest import tiny_world_setup

SPEC = ex.ExplanationAttackSpec(objectives=("topk", "soft-topk"), steps=2, k=4, eot=1, attack_samples=1)
PARAMS = FrontierParams(sigmas=(8 / 255, 0.25), fusions=("max-drop10", "mean"), eps=8 / 255, spec=SPEC,
                        certify=CertifyConfig(k=4, n0=4, n=16, mc_batch=8, alpha=0.01), cert_radii=(0.0, 0.1))


@pytest.fixture(scope="module")
def setup():
    return tiny_world_setup()


def _run(setup, store=None, **kw):
    model, data, dds = setup
    return ex.run_frontier(model, data, ["raw_attention"], dds=dds, params=PARAMS,
                           attack=ex.AttackSpec("pgd", steps=2, step_size="scaled"), store=store, batch_size=2,
                           progress=False, **kw)


@pytest.fixture(scope="module")
def result(setup):
    return _run(setup)


def test_grid_layout(result):
    cells = result["cells"]
    assert [(round(c["sigma"], 4), c["fusion"]) for c in cells] == [
        (round(8 / 255, 4), "max-drop10"), (round(8 / 255, 4), "mean"), (0.25, "max-drop10"), (0.25, "mean")]
    for c in cells:
        assert c["n"] == 4 and c["method"] == "raw_attention" and c["samples"] == 2
        assert set(c["certified_accuracy"]) == {"0", "0.1"}
        # certified accuracy can only fall as the radius grows
        assert c["certified_accuracy"]["0.1"] <= c["certified_accuracy"]["0"]
        ci = c["topk_overlap_ci"]
        assert ci["lo"] <= c["topk_overlap"] <= ci["hi"]
    # the fusion changes the map, not the classifier: one smoothed accuracy per (sigma, m) cell
    assert cells[0]["smoothed_clean_acc"] == cells[1]["smoothed_clean_acc"]
    assert list(result["plain"]) == ["raw_attention"]
    assert result["pareto"] == pareto_front(cells)


def test_pareto_front_by_hand():
    cells = [{"method": "a", "miou": 0.5, "topk_overlap": 0.5}, {"method": "a", "miou": 0.6, "topk_overlap": 0.4},
             {"method": "a", "miou": 0.4, "topk_overlap": 0.4}, {"method": "b", "miou": 0.1, "topk_overlap": 0.1}]
    assert pareto_front(cells) == [0, 1, 3]  # cell 2 is beaten by cell 0; b is alone


def test_resume_gives_the_same_results(setup, result, tmp_path):
    cfg = {"experiment": "frontier"}
    _run(setup, ResultsStore(tmp_path, cfg), max_batches=1)
    resumed = _run(setup, ResultsStore(tmp_path, cfg))
    assert resumed["cells"] == result["cells"] and resumed["plain"] == result["plain"]


def test_bad_params():
    with pytest.raises(FvitError):
        FrontierParams(fusions=("nope",))
    with pytest.raises(FvitError):
        FrontierParams(sigmas=(0.0,))


def test_cli_runs_and_refuses_bad_samples(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from fvit.cli.bench import register
    from fvit.denoise import SmallDDPM, save_small_ddpm, small_unet_config

    den = tmp_path / "den"
    save_small_ddpm(SmallDDPM(32, small_unet_config(32, width=8), seed=0), den)
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    out = tmp_path / "front"
    args = ["bench", "frontier", "--data", "world:eval,2", "--model", "tiny", "--no-pretrained", "--batch-size", "2",
            "--no-progress", "--methods", "raw_attention", "--denoiser", str(den), "--sigmas", "8/255,1/4",
            "--fusions", "mean", "--samples", "2", "--steps", "1", "--objectives", "soft-topk", "--k", "4",
            "--cert-samples", "8", "--cert-n0", "4", "--alpha", "0.05", "--attack", "fgsm", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())["results"]
    assert [c["sigma"] for c in res["cells"]] == [8 / 255, 0.25]
    assert res["protocol"]["attack"]["objectives"] == ["soft-topk"]
    bad = CliRunner().invoke(app, [*args[:-2], "--samples", "two", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--samples" in bad.output
