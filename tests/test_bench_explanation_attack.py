"""fvit.bench.experiments.run_explanation_attack on a tiny random ViT and the generated world."""

import math

import pytest

from fvit.bench import ResultsStore
from fvit.bench import experiments as ex
from fvit.errors import FvitError
from conftest import tiny_world_setup

METHODS = ["raw_attention", "gradcam"]
SPEC = ex.ExplanationAttackSpec(objectives=("topk", "target-map"), steps=2, k=4, eot=2, attack_samples=1)
COMPARE = ex.AttackSpec("pgd", steps=2, step_size="scaled")
RADII = (4 / 255, 8 / 255)
LABELS = ("4/255", "8/255")  # the radius labels of RADII (fvit.keys.radius_label)


@pytest.fixture(scope="module")
def setup():
    return tiny_world_setup()


def _run(setup, store=None, **kw):
    model, data, dds = setup
    return ex.run_explanation_attack(model, data, METHODS, dds=dds, radii=RADII, spec=SPEC, compare=COMPARE,
                                     store=store, batch_size=2, progress=False, **kw)


@pytest.fixture(scope="module")
def result(setup):
    return _run(setup)


def test_layout_and_invariants(result):
    res = result["methods"]
    assert list(res) == ["raw_attention", "raw_attention+dds", "gradcam", "gradcam+dds"]
    for key, per in res.items():
        assert list(per) == ["clean", "pgd", "topk", "target-map", "warm-start", "suite"]
        assert list(per["clean"]) == ["0"] and list(per["topk"]) == list(LABELS)
        clean = per["clean"]["0"]
        # the clean map against itself (DDS: the same evaluation noise): identical. (GradCAM's ReLU zeros
        # and DDS's dropped 10% tie at the k-th value, where Definition 4.1 keeps fewer than k.)
        assert clean["rank_corr"] == pytest.approx(1.0) and clean["changed"] == 0
        if key == "raw_attention":
            assert clean["topk_overlap"] == 1.0
        for attack in ("pgd", "topk", "target-map"):
            for r in LABELS:
                v = per[attack][r]
                assert v["n"] == 4 and 0 <= v["topk_overlap"] <= 1 and 0 <= v["miou"] <= 1
        if not key.endswith("+dds"):  # best-kept selection on the plain model: the prediction never changes
            assert per["topk"]["8/255"]["changed"] == 0 and per["target-map"]["8/255"]["changed"] == 0
            assert per["topk"]["8/255"]["objective"] <= per["topk"]["8/255"]["clean_objective"] + 1e-6
        for r in LABELS:  # the suite never reports a map the attacker rated better than its parts'
            assert per["suite"][r]["n"] == 4
    p = result["protocol"]
    assert p["dds_draws_per_step"] == 2 and p["dds_samples_per_draw"] == 1 and p["dds_samples_evaluation"] == 2
    assert p["evaluations_per_attack"] == 3 and p["objectives"] == ["topk", "target-map"]


def test_clean_segmentation_equals_the_segmentation_runner(setup, result):
    model, data, dds = setup
    seg = ex.run_segmentation(model, data, METHODS, dds=dds, attack=None, batch_size=2, progress=False)
    for key, v in seg.items():
        clean = result["methods"][key]["clean"]["0"]
        for metric in ("pixel_acc", "miou", "map"):
            assert clean[metric] == pytest.approx(v[metric], abs=1e-12)


def test_resume_gives_the_same_results(setup, result, tmp_path):
    cfg = {"experiment": "explanation-attack"}
    _run(setup, ResultsStore(tmp_path, cfg), max_batches=1)
    resumed = _run(setup, ResultsStore(tmp_path, cfg))
    for key, per in result["methods"].items():
        for attack, radii in per.items():
            for r, v in radii.items():
                w = resumed["methods"][key][attack][r]
                for metric in ("topk_overlap", "rank_corr", "changed", "miou", "map"):
                    assert w[metric] == pytest.approx(v[metric], abs=1e-9), (key, attack, r, metric)


def test_bad_specs(setup):
    with pytest.raises(FvitError, match="explanation attack 'nope'"):
        ex.ExplanationAttackSpec(objectives=("nope",))
    with pytest.raises(FvitError, match="eot"):
        ex.ExplanationAttackSpec(eot=0)
    model, data, dds = setup
    with pytest.raises(FvitError, match="radius > 0"):
        ex.run_explanation_attack(model, data, METHODS, radii=(0,), progress=False)
    assert math.isfinite(ex.ExplanationAttackSpec().k)


def test_cli_writes_tables_plot_and_resumes(tmp_path):
    import json

    import typer
    from typer.testing import CliRunner

    from fvit.cli.bench import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    out = tmp_path / "expl"
    args = ["bench", "explanation-attack", "--data", "world:eval,2", "--model", "tiny", "--no-pretrained",
            "--batch-size", "2", "--no-progress", "--methods", "raw_attention", "--objectives", "topk",
            "--radii", "4/255,8/255", "--steps", "2", "--k", "5", "--compare", "fgsm", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "| Raw Attention | ✗ | top-k (expl.) |" in r.output and "| Raw Attention | ✗ | classifier PGD |" in r.output
    for name in ("rows.jsonl", "results.json", "report.md", "explanation_attack.csv", "overlap_vs_radius.png"):
        assert (out / name).exists(), name
    first = json.loads((out / "results.json").read_text())["results"]
    assert first["protocol"]["steps"] == 2 and first["protocol"]["k"] == 5
    r2 = CliRunner().invoke(app, args)  # rerun = resume: the same numbers
    assert r2.exit_code == 0, r2.output
    again = json.loads((out / "results.json").read_text())["results"]["methods"]

    def numbers(res):  # timings differ (nothing is recomputed on resume)
        return {(k, a, r): {m: x for m, x in v.items() if m != "seconds"}
                for k, per in res.items() for a, rs in per.items() for r, v in rs.items()}

    assert numbers(again) == numbers(first["methods"])
    r3 = CliRunner().invoke(app, [*args[:-2], "--steps", "3", "--out", str(out)])
    assert r3.exit_code == 2 and "different experiment config" in r3.output


def _hand_results():
    def v(ov, miou):
        return {"topk_overlap": ov, "miou": miou, "map": miou + 0.1, "rank_corr": ov / 2, "changed": 0.0, "n": 2}

    return {
        "rollout": {"clean": {"0": v(1.0, 0.5)}, "pgd": {"2/255": v(0.9, 0.45), "8/255": v(0.8, 0.4)},
                    "topk": {"2/255": v(0.5, 0.3), "8/255": v(0.2, 0.1)}},
        "rollout+dds": {"clean": {"0": v(1.0, 0.55)}, "pgd": {"2/255": v(0.95, 0.5), "8/255": v(0.9, 0.5)},
                        "topk": {"2/255": v(0.7, 0.4), "8/255": v(0.6, 0.35)}},
    }


def test_table_and_verdict_from_hand_made_results(tmp_path):
    from fvit.demo.run import dds_verdict
    from fvit.viz import explanation_attack_table
    from fvit.viz.plots import plot_overlap_vs_radius

    table = explanation_attack_table(_hand_results())
    assert table.columns[:5] == ["Method", "DDS", "Attack", "Top-k ov. 2/255", "Top-k ov. 8/255"]
    rows = {(r[0], r[1], r[2]): r for r in table.rows}
    assert rows[("Rollout", False, "top-k (expl.)")][3:7] == [0.5, 0.2, 0.3, 0.1]
    assert rows[("Rollout", True, "classifier PGD")][3:5] == [0.95, 0.9]
    assert rows[("Rollout", True, "classifier PGD")][-3:] == [0.45, 0.6, 0.0]  # rank corr, mAP, changed at 8/255
    assert rows[("Rollout", False, "none (clean)")][5:7] == [0.5, 0.5]
    # verdicts follow the paired intervals: +0.1 on every image is significant, a +-0.1 swing is not
    from fvit.metrics import paired_interval

    up = paired_interval([0.9] * 8, [0.8] * 8)
    swing = paired_interval([0.9, 0.7] * 4, [0.8] * 8)
    part = {"comparisons": {"dds": {"rollout": {"pgd": {"8/255": up}, "suite": {"8/255": swing}}}}}
    lines = dds_verdict(part, "8/255")
    assert lines == ["Rollout under classifier PGD at ε=8/255: DDS keeps more of the map "
                     "(+0.100 [+0.100, +0.100], 95% CI, n = 8)",
                     "Rollout under the strongest explanation attack at ε=8/255: no significant difference at "
                     f"n = 8 ({swing['mean']:+.3f} [{swing['lo']:+.3f}, {swing['hi']:+.3f}], 95% CI)"]
    assert swing["lo"] < 0 < swing["hi"]
    assert plot_overlap_vs_radius(_hand_results(), tmp_path / "o.png").stat().st_size > 2000


def test_rows_do_not_depend_on_the_batch(setup, result):
    """Attack starts, the attacks' DDS draws and the evaluation noise are per image (by id): the
    same images in batches of 1 give the rows of batches of 2, so the store ignores --batch-size."""
    model, data, dds = setup
    alone = ex.run_explanation_attack(model, data, METHODS, dds=dds, radii=RADII, spec=SPEC, compare=COMPARE,
                                      batch_size=1, progress=False)

    def numbers(res):
        return {(k, a, r): {m: x for m, x in v.items() if m != "seconds"}
                for k, per in res["methods"].items() for a, rs in per.items() for r, v in rs.items()}

    a, b = numbers(alone), numbers(result)
    assert a.keys() == b.keys()
    for key in a:
        for metric in ("topk_overlap", "changed", "miou", "map"):
            assert a[key][metric] == pytest.approx(b[key][metric], abs=1e-6), (key, metric)
