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
    for name in ("rows.jsonl", "results.json", "report.md", "segmentation.csv", "heatmaps.png", "cost.csv"):
        assert (out / name).exists(), name
    first = json.loads((out / "results.json").read_text())["results"]
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
    # the plot decodes to the two-panel figure (11 x 4 in at 120 dpi, tight box) and is not blank
    # (its lines are checked against the numbers in tests/test_viz.py)
    import numpy as np
    from PIL import Image

    png = np.asarray(Image.open(out / "auc_vs_radius.png").convert("RGB"), dtype=np.int64)
    h, w, _ = png.shape
    assert 0.8 * 1320 < w < 1.1 * 1320 and 0.8 * 480 < h < 1.2 * 480 and png.std() > 10


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
