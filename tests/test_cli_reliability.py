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
