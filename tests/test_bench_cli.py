"""`fvit bench ...` end to end on the tiny model and the generated world; sharded under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fvit.cli.bench import register

COMMON = ["--data", "world:eval,4", "--model", "tiny", "--no-pretrained", "--batch-size", "2",
          "--no-progress"]


def _app():
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop():  # a second command keeps `bench` a sub-group
        pass

    return app


def test_segmentation_cli_writes_store_tables_and_figure(tmp_path):
    out = tmp_path / "seg"
    args = ["bench", "segmentation", *COMMON, "--methods", "raw_attention,rollout", "--attack", "fgsm",
            "--out", str(out), "--figure", "2"]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    assert "| Raw Attention |" in r.output and "Cost per method" in r.output
    record = json.loads((out / "results.json").read_text())
    first = record["results"]
    # the store holds one row per (image, method key), under the run's config; the results are
    # Chefer et al.'s aggregates of those rows, recomputed here by hand
    lines = (out / "rows.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["config"] == record["config"]
    rows = [json.loads(line) for line in lines[1:]]
    ids = [f"world-eval-{i:06d}" for i in range(4)]
    assert sorted((r["id"], r["setting"]) for r in rows) == sorted((i, k) for i in ids for k in ("raw_attention", "rollout"))
    for key, res in first.items():
        rr = [r for r in rows if r["setting"] == key]
        iou = lambda c: sum(r[f"inter_{c}"] for r in rr) / sum(r[f"union_{c}"] for r in rr)  # noqa: E731
        assert res["pixel_acc"] == pytest.approx(sum(r["correct"] for r in rr) / sum(r["labeled"] for r in rr))
        assert res["miou"] == pytest.approx((iou("fg") + iou("bg")) / 2)
        assert res["map"] == pytest.approx(sum(r["ap"] for r in rr) / 4) and res["n"] == 4
        assert res["robust_acc"] == sum(r["pred_adv"] == r["label"] for r in rr) / 4
    # the CSV table and the cost table are the results, row for row
    import csv

    table = list(csv.DictReader((out / "segmentation.csv").open()))
    assert [t["Method"] for t in table] == ["Raw Attention", "Rollout"]
    for t, key in zip(table, ("raw_attention", "rollout")):
        assert float(t["mIoU"]) == pytest.approx(first[key]["miou"]) and int(t["n"]) == 4
        assert float(t["Pix. Acc."]) == pytest.approx(first[key]["pixel_acc"])
    cost = list(csv.DictReader((out / "cost.csv").open()))
    assert [float(c["Time (s)"]) for c in cost] == pytest.approx([record["cost"][k]["seconds"] for k in first])
    assert "![heatmaps](heatmaps.png)" in (out / "report.md").read_text() and (out / "heatmaps.png").is_file()
    # rerun = resume: nothing left to compute, same numbers
    r2 = CliRunner().invoke(_app(), args)
    assert r2.exit_code == 0, r2.output
    again = json.loads((out / "results.json").read_text())["results"]
    assert {k: v["miou"] for k, v in again.items()} == {k: v["miou"] for k, v in first.items()}
    # a different config in the same folder is refused
    r3 = CliRunner().invoke(_app(), [*args[:-4], "--seed", "1", "--out", str(out)])
    assert r3.exit_code == 2 and "different experiment config" in r3.output
    assert len(r3.output.strip().splitlines()) == 1


def test_perturbation_cli_plot(tmp_path):
    out = tmp_path / "pert"
    r = CliRunner().invoke(_app(), ["bench", "perturbation", *COMMON, "--methods", "rollout", "--radii", "0,2/255",
                                    "--attack", "fgsm", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "| Rollout | ✗ | 2/255 |" in r.output
    # the plot is exactly the plot of results.json's numbers (its lines are checked against the
    # numbers in tests/test_viz.py): re-rendered from the file, the pixels are identical, and a plot
    # of other numbers is not
    import numpy as np
    from PIL import Image

    from fvit.viz.plots import plot_auc_vs_radius

    results = json.loads((out / "results.json").read_text())["results"]
    pixels = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    again = plot_auc_vs_radius(results, tmp_path / "again.png")
    assert np.array_equal(pixels(out / "auc_vs_radius.png"), pixels(again))
    key, radius = "rollout", "2/255"
    changed = json.loads(json.dumps(results))
    changed[key][radius]["pos_auc"] = 1 - changed[key][radius]["pos_auc"]
    other = pixels(plot_auc_vs_radius(changed, tmp_path / "other.png"))
    assert other.shape != pixels(again).shape or not np.array_equal(other, pixels(again))


SCRIPT = "import sys\nfrom fvit.cli import main\nsys.argv = ['fvit'] + sys.argv[1:]\nmain()\n"


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(tmp_path):
    script = tmp_path / "fvit_main.py"
    script.write_text(SCRIPT)
    args = ["bench", "segmentation", *COMMON, "--methods", "rollout", "--attack", "fgsm", "--figure", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").glob("rows*.jsonl")) == ["rows.jsonl"]  # shards merged
    a = json.loads((tmp_path / "one" / "results.json").read_text())["results"]
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["world_size"] == 2
    for k in a:
        for m in ("pixel_acc", "miou", "map", "robust_acc", "n"):
            assert a[k][m] == pytest.approx(b["results"][k][m]), (k, m)
    rows = lambda d: sorted(Path(d, "rows.jsonl").read_text().splitlines()[1:])  # noqa: E731
    assert rows(tmp_path / "one") == rows(tmp_path / "two")
