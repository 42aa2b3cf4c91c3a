"""Issue 25 (reliability, second round) at the command line: inputs never overwritten, paths and
disk problems, option values; each ends with exit status 2 and one line (no traceback), before work."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fvit.cli import app

TINY = ["--model", "tiny", "--no-pretrained", "--device", "cpu"]


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _png(path, seed=0, size=(36, 30)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fvit: error:"), r.output
    for n in needles:
        assert n in lines[0], r.output
    return lines[0]


def test_explain_never_overwrites_its_input(tmp_path):
    photo = _png(tmp_path / "photo.png")
    before = hashlib.sha256(photo.read_bytes()).hexdigest()
    r = _run(["explain", photo, *TINY, "--method", "rollout", "--out", tmp_path])
    _one_line_error(r, "photo.png", "overwrite")
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    # the same folder through another spelling of the path, and a .json input name clash
    r = _run(["explain", tmp_path / "." / "photo.png", *TINY, "--method", "rollout", "--out", tmp_path / "sub" / ".."])
    _one_line_error(r, "overwrite")
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == before
    # a .jpg input in its own folder writes photo.png beside it: no input is touched
    jpg = tmp_path / "other.jpg"
    Image.open(photo).save(jpg)
    r = _run(["explain", jpg, *TINY, "--method", "rollout", "--out", tmp_path])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "other.png").is_file() and hashlib.sha256(photo.read_bytes()).hexdigest() == before


# -- the results store through `fvit bench` ----------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

BENCH = ["bench", "segmentation", "--data", "world:eval,4", "--model", "tiny", "--no-pretrained",
         "--batch-size", "2", "--no-progress", "--methods", "rollout", "--attack", "fgsm", "--figure", "0"]


def _results(out):
    return json.loads((out / "results.json").read_text())["results"]


def _differences(a, b) -> list[str]:
    """benchmarks/compare_results.py's differences of two results (timings ignored)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_results.py"
    spec = importlib.util.spec_from_file_location("compare_results", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out: list[str] = []
    mod.diff(a, b, "", 0.0, mod.VOLATILE, out)
    return out


def test_bench_limit_is_part_of_the_store_identity(tmp_path):
    out = tmp_path / "seg"
    assert _run([*BENCH, "--limit", "4", "--out", out]).exit_code == 0
    _one_line_error(_run([*BENCH, "--limit", "2", "--out", out]), "differs in: limit")
    clean = tmp_path / "clean"
    assert _run([*BENCH, "--limit", "2", "--out", clean]).exit_code == 0
    assert _results(clean)["rollout"]["n"] == 2


@pytest.mark.parametrize("damage", ["list", "no-id", "header", "missing-ap", "missing-label"])
def test_bench_damaged_store_one_line_then_discard_damaged(tmp_path, damage):
    out = tmp_path / "seg"
    assert _run([*BENCH, "--out", out]).exit_code == 0
    first = _results(out)
    rows_file = out / "rows.jsonl"
    lines = rows_file.read_text().splitlines()
    row = json.loads(lines[2])
    bad = {"list": "[1, 2]", "no-id": json.dumps({k: v for k, v in row.items() if k != "id"}),
           "header": lines[0], "missing-ap": json.dumps({k: v for k, v in row.items() if k != "ap"}),
           "missing-label": json.dumps({k: v for k, v in row.items() if k != "label"})}[damage]
    rows_file.write_text("\n".join([*lines[:2], bad, *lines[3:]]) + "\n")
    line = _one_line_error(_run([*BENCH, "--out", out]), f"{rows_file}: line 3 is damaged", "--discard-damaged")
    assert "the 1 row(s) before it are intact" in line
    r = _run([*BENCH, "--out", out, "--discard-damaged"])
    assert r.exit_code == 0, r.output
    assert _differences(_results(out), first) == []
    assert len(rows_file.read_text().splitlines()) == len(lines)


HOLD = ("import sys, pathlib\nfrom fvit.bench.store import acquire_lock\npathlib.Path(sys.argv[1]).mkdir()\n"
        "acquire_lock(sys.argv[1])\nprint('locked', flush=True)\nsys.stdin.read()\n")


def test_bench_second_writer_is_refused_then_the_folder_resumes(tmp_path):
    out = tmp_path / "seg"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _one_line_error(_run([*BENCH, "--out", out]), f"{out}: another process (pid {holder.pid})")
        assert not (out / "rows.jsonl").exists() and not (out / "results.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _run([*BENCH, "--out", out]).exit_code == 0
    clean = tmp_path / "clean"
    assert _run([*BENCH, "--out", clean]).exit_code == 0
    assert _differences(_results(out), _results(clean)) == []
    assert (out / "rows.jsonl").read_text() == (clean / "rows.jsonl").read_text()
