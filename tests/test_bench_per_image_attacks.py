"""Issue 25: the classifier attacks' random starts are drawn per image (keyed by data-set id, like
DDS noise), so an image's attacked row does not depend on its batch, shard or world size, and the
batch size leaves the results store's identity."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fvit.attacks import get_attack
from fvit.attacks.norms import get_norm
from fvit.seeding import PerImageGenerator, stable_seed

ROOT = Path(__file__).resolve().parents[1]


def _compare():
    spec = importlib.util.spec_from_file_location("compare_results", ROOT / "benchmarks" / "compare_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _differences(a: Path, b: Path, ignore=("out", "batch_size")) -> list[str]:
    mod, out = _compare(), []
    mod.diff(json.loads(a.read_text()), json.loads(b.read_text()), "", 0.0, mod.VOLATILE | set(ignore), out)
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_rows_come_from_each_images_own_stream(norm):
    keys = ["a", "b", "c", "d", "e"]
    like = torch.zeros(5, 3, 4, 4)
    ball = get_norm(norm)
    batch = ball.random_start(like, 0.1, PerImageGenerator([stable_seed(0, k) for k in keys]))
    alone = torch.cat([ball.random_start(like[:1], 0.1, PerImageGenerator([stable_seed(0, k)])) for k in keys])
    assert torch.equal(batch, alone)
    reordered = ball.random_start(like[:2], 0.1, PerImageGenerator([stable_seed(0, k) for k in ("c", "a")]))
    assert torch.equal(reordered, batch[[2, 0]])
    # the stream of key 'a' by hand: uniform in the cube (linf) / z then r (l2)
    g = torch.Generator().manual_seed(stable_seed(0, "a"))
    if norm == "linf":
        expected = (2 * torch.rand((1, 3, 4, 4), generator=g) - 1) * 0.1
    else:
        z = torch.randn((1, 3, 4, 4), generator=g)
        r = torch.rand((1, 1, 1, 1), generator=g)
        expected = 0.1 * r * z / (z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
    assert torch.equal(batch[:1], expected)


def test_pgd_with_keys_does_not_depend_on_the_batch(tiny_model, images):
    x = torch.cat([images, images[:1].flip(-1)])  # 5 images
    keys = [f"img{i}" for i in range(5)]
    labels = torch.tensor([1, 2, 3, 4, 5])
    pgd = get_attack("pgd", 8 / 255, steps=3, seed=7)
    together = pgd(tiny_model, x, labels, keys=keys)
    for i in range(5):
        alone = pgd(tiny_model, x[i:i + 1], labels[i:i + 1], keys=keys[i:i + 1])
        assert torch.equal(alone, together[i:i + 1]), i
    # the start is the image's own: another key gives another adversarial example
    other = pgd(tiny_model, x[:1], labels[:1], keys=["another"])
    assert not torch.equal(other, together[:1])
    # without keys: one stream for the batch (as before)
    assert torch.equal(pgd(tiny_model, x, labels), get_attack("pgd", 8 / 255, steps=3, seed=7)(tiny_model, x, labels))
    with pytest.raises(ValueError, match="keys: expected one per image"):
        pgd(tiny_model, x, labels, keys=keys[:2])


BENCH = ["bench", "segmentation", "--data", "world:eval,6", "--model", "tiny", "--no-pretrained", "--no-progress",
         "--methods", "rollout", "--attack", "pgd", "--steps", "3", "--samples", "2", "--topk", "3",
         "--figure", "0"]


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config

    model = SmallDDPM(32, config=small_unet_config(image_size=32, width=8))
    return save_small_ddpm(model, tmp_path_factory.mktemp("ddpm") / "ddpm")


def _bench(args):
    from fvit.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _rows(folder: Path) -> dict:
    lines = (folder / "rows.jsonl").read_text().splitlines()
    return {(r["id"], r["setting"]): r for r in map(json.loads, lines[1:])}


def test_batch_1_and_5_give_identical_results_and_share_a_store(tmp_path, ddpm):
    args = [*BENCH, "--denoiser", ddpm]
    _bench([*args, "--batch-size", "1", "--out", tmp_path / "b1"])
    _bench([*args, "--batch-size", "5", "--out", tmp_path / "b5"])
    assert _differences(tmp_path / "b1" / "results.json", tmp_path / "b5" / "results.json") == []
    assert _rows(tmp_path / "b1") == _rows(tmp_path / "b5")
    assert json.loads((tmp_path / "b1" / "results.json").read_text())["config"]["batch_size"] is None
    # the batch size is no longer part of the store: a folder started with batch 2 resumes with batch 5
    from fvit.bench.store import ResultsStore

    cfg = json.loads((tmp_path / "b1" / "rows.jsonl").read_text().splitlines()[0])["config"]
    mixed = tmp_path / "mixed"
    with ResultsStore(mixed, cfg) as s:
        s.append([r for (i, _), r in _rows(tmp_path / "b1").items() if i.endswith(("0", "1", "2"))])
    _bench([*args, "--batch-size", "5", "--out", mixed])
    assert _differences(tmp_path / "b1" / "results.json", mixed / "results.json") == []


SCRIPT = "import sys\nfrom fvit.cli import main\nsys.argv = ['fvit'] + sys.argv[1:]\nmain()\n"


@pytest.mark.slow
def test_two_ranks_with_pgd_equal_one_process_and_resume_with_another_world_size(tmp_path):
    script = tmp_path / "fvit_main.py"
    script.write_text(SCRIPT)
    args = [*BENCH, "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    one = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _differences(tmp_path / "one" / "results.json", tmp_path / "two" / "results.json",
                        ignore=("out", "world_size")) == []
    assert _rows(tmp_path / "one") == _rows(tmp_path / "two")
    # a 2-rank run killed before its merge, resumed by one process: shards merged, same rows
    killed = tmp_path / "killed"
    killed.mkdir()
    header = (tmp_path / "two" / "rows.jsonl").read_text().splitlines()[0]
    rows = sorted(_rows(tmp_path / "two").items())
    for rank in (0, 1):
        part = [json.dumps(r) for n, (_, r) in enumerate(rows) if n % 2 == rank and n < len(rows) // 2]
        (killed / f"rows.rank{rank}.jsonl").write_text("\n".join([header, *part]) + "\n")
    again = subprocess.run([sys.executable, str(script), *args, "--out", str(killed)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in killed.glob("rows*.jsonl")) == ["rows.jsonl"]
    assert _rows(killed) == _rows(tmp_path / "one")
