"""Issue 25: two real `fvit bench` runs into one folder at once: the second is refused with one
line naming the folder and the first's pid, and the first finishes with a correct store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fvit.cli import app

SCRIPT = "import sys\nfrom fvit.cli import main\nsys.argv = ['fvit'] + sys.argv[1:]\nmain()\n"
BENCH = ["bench", "segmentation", "--data", "world:eval,32", "--model", "tiny", "--no-pretrained", "--no-progress",
         "--methods", "rollout,transformer_attribution", "--attack", "pgd", "--steps", "30", "--figure", "0",
         "--batch-size", "1"]


@pytest.mark.slow
def test_second_concurrent_run_is_refused_and_the_first_finishes_correctly(tmp_path):
    # the second run starts in this process: import and build what it needs first, so that it reaches
    # the store while the first is still computing
    assert CliRunner().invoke(app, [*BENCH[:2], "--model", "tiny", "--no-pretrained", "--no-progress",
                                    "--methods", "rollout", "--attack", "fgsm", "--figure", "0",
                                    "--data", "world:eval,1", "--out", str(tmp_path / "warm")]).exit_code == 0
    script = tmp_path / "fvit_main.py"
    script.write_text(SCRIPT)
    out = tmp_path / "seg"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, str(script), *BENCH, "--out", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".fvit-store.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        time.sleep(0.05)
    assert lock.read_text().strip() == str(first.pid), "the first run never took the lock"
    second = CliRunner().invoke(app, [*BENCH, "--out", str(out)])
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert second.exit_code == 2, second.output  # (exit 0 would mean the first had already finished)
    lines = [line for line in second.stderr.strip().splitlines() if line.strip()]
    assert lines == [f"fvit: error: {out}: another process (pid {first.pid}) is writing results into this folder; "
                     "wait for it to finish (then rerun to resume) or use another folder (command-line options: --out)"]
    rows = (out / "rows.jsonl").read_text().splitlines()
    assert sum('"type": "header"' in line for line in rows) == 1
    keys = [(r["id"], r["setting"]) for r in map(json.loads, rows[1:])]
    assert len(keys) == len(set(keys)) == 32 * 2  # every row once: nothing computed twice
