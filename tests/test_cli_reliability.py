"""Issue 25 (reliability, second round) at the command line: inputs never overwritten, paths and
disk problems, option values; each ends with exit status 2 and one line (no traceback), before work."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fvit.cli import app

def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]  # progress notes go to stdout
    assert len(lines) == 1 and lines[0].startswith("fvit: error:"), r.output
    assert "Traceback" not in r.output
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


# -- paths and disks ---------------------------------------------------------------------------
import errno  # noqa: E402
import stat  # noqa: E402

from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config  # noqa: E402
from cli_helpers import TINY, small_ddpm_folder, write_png as _png, run_cli as _run  # noqa: F401


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return small_ddpm_folder(tmp_path_factory.mktemp("ddpm"))


def test_output_names_that_exist_as_folders(tmp_path):
    (tmp_path / "in").mkdir()
    photo = _png(tmp_path / "in" / "photo.png")
    out = tmp_path / "out"
    (out / "photo.json").mkdir(parents=True)
    _one_line_error(_run(["explain", photo, *TINY, "--method", "rollout", "--out", out]),
                    "photo.json: exists as a folder")
    seg = tmp_path / "seg"
    (seg / "results.json").mkdir(parents=True)
    _one_line_error(_run([*BENCH, "--out", seg]), "results.json: exists as a folder")
    assert sorted(p.name for p in seg.iterdir()) == ["results.json"]  # refused before any row


def test_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo = _png(tmp_path / "photo.jpg")
    _one_line_error(_run(["explain", photo, *TINY, "--method", "rollout", "--out", ""]), "--out ''")
    _one_line_error(_run([*BENCH, "--out", ""]), "--out ''")
    _one_line_error(_run(["demo", "--quick", "--out", " "]), "--out ' '")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


def test_demo_out_file_or_unwritable_and_cache_file_refused_before_training(tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv("FVIT_CACHE", str(tmp_path / "cache"))
    _one_line_error(_run(["demo", "--quick", "--out", a_file]), f"--out {a_file}: exists and is not a folder")
    _one_line_error(_run(["demo", "--quick", "--out", "/proc/fvit-demo"]), "--out /proc/fvit-demo: cannot write there")
    monkeypatch.setenv("FVIT_CACHE", str(a_file))
    _one_line_error(_run(["demo", "--quick", "--no-progress", "--out", tmp_path / "demo"]),
                    f"demo model cache (FVIT_CACHE) {a_file}", "cannot write there")
    assert a_file.read_text() == "x"


def test_truncated_cached_classifier_is_one_line(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from fvit.demo.settings import get_settings
    from fvit.demo.world_models import _classifier_paths, build_classifier, cache_dir

    monkeypatch.setenv("FVIT_CACHE", str(tmp_path / "cache"))
    settings = get_settings("quick", 0)
    directory = cache_dir(settings)
    directory.mkdir(parents=True)
    weights, meta = _classifier_paths(directory)
    save_file({k: v.contiguous() for k, v in build_classifier(settings).state_dict().items()}, str(weights))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    meta.write_text(json.dumps({"clean_accuracy": 0.5}))
    _one_line_error(_run(["demo", "--quick", "--no-progress", "--out", tmp_path / "demo"]),
                    str(weights), "retrain")


def test_written_files_follow_the_umask(tmp_path):
    from fvit.utils import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o027)
        write_text_atomic(tmp_path / "b.json", "{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
        os.umask(0o022)
        photo = _png(tmp_path / "photo.jpg")
        assert _run(["explain", photo, *TINY, "--method", "rollout", "--out", tmp_path / "ex"]).exit_code == 0
        assert _run([*BENCH, "--out", tmp_path / "seg"]).exit_code == 0
        for f in (tmp_path / "ex" / "photo.json", tmp_path / "ex" / "photo.png", tmp_path / "seg" / "results.json",
                  tmp_path / "seg" / "rows.jsonl", tmp_path / "seg" / "report.md"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    finally:
        os.umask(old)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_explain_is_one_line(tmp_path, monkeypatch):
    import fvit.utils
    import fvit.viz.heatmap

    photo = _png(tmp_path / "photo.jpg")
    monkeypatch.setattr(fvit.viz.heatmap, "save_overlay", _enospc)
    _one_line_error(_run(["explain", photo, *TINY, "--method", "rollout", "--out", tmp_path / "a"]),
                    "photo.png: cannot write it (No space left on device)")
    monkeypatch.undo()
    monkeypatch.setattr(fvit.utils.os, "replace", _enospc)
    _one_line_error(_run(["explain", photo, *TINY, "--method", "rollout", "--out", tmp_path / "b"]),
                    "cannot write it (No space left on device)")


def test_disk_full_bench_keeps_rows_and_resumes(tmp_path, monkeypatch):
    import fvit.bench.store as store

    real, calls = store.append_text, []

    def second_write_fails(path, text, fsync=False):
        calls.append(text)
        if len(calls) == 2:
            real(path, text[: len(text) // 2], fsync)  # a partial write, then the disk is full
            _enospc()
        real(path, text, fsync)

    out = tmp_path / "seg"
    monkeypatch.setattr(store, "append_text", second_write_fails)
    _one_line_error(_run([*BENCH, "--out", out]), "rows.jsonl: cannot append results (No space left on device)",
                    "kept")
    monkeypatch.undo()
    assert not (out / "results.json").exists()
    assert _run([*BENCH, "--out", out]).exit_code == 0
    clean = tmp_path / "clean"
    assert _run([*BENCH, "--out", clean]).exit_code == 0
    assert (out / "rows.jsonl").read_text() == (clean / "rows.jsonl").read_text()


def test_disk_full_certify_keeps_the_results(tmp_path, monkeypatch, ddpm):
    import fvit.utils

    photo = _png(tmp_path / "photo.png")
    args = ["certify", photo, *TINY, "--denoiser", ddpm, "--samples", "4", "--n0", "2", "--k", "3"]
    ok = _run([*args, "--out", tmp_path / "ok"])
    assert ok.exit_code == 0, ok.output
    expected = json.loads((tmp_path / "ok" / "certify.json").read_text())
    monkeypatch.setattr(fvit.utils.os, "replace", _enospc)
    r = _run([*args, "--out", tmp_path / "full"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    err = [line for line in r.output.splitlines() if line.startswith("fvit: error:")]
    assert len(err) == 1 and "certify.json: cannot write it (No space left on device)" in err[0]
    start = r.output.index('{\n  "config"')
    printed = json.loads(r.output[start: r.output.index("\nfvit: error:")])
    assert printed == expected
    assert not (tmp_path / "full" / "certify.json").exists()


def test_disk_full_while_writing_the_bench_report_keeps_the_rows(tmp_path, monkeypatch):
    import fvit.viz.report

    out = tmp_path / "seg"
    monkeypatch.setattr(fvit.viz.report, "write_report", _enospc)
    _one_line_error(_run([*BENCH, "--out", out]), "cannot write the report (No space left on device)",
                    "rows are kept")
    monkeypatch.undo()
    rows = (out / "rows.jsonl").read_text()
    assert _run([*BENCH, "--out", out]).exit_code == 0  # resumes: every row was kept
    assert (out / "rows.jsonl").read_text() == rows
