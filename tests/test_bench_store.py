"""fvit.bench.store: append-only JSONL, resume, config mismatch, torn lines, shard merge; cost."""

import json

import pytest

from fvit.bench.cost import measure, price_energy
from fvit.bench.distributed import DistContext, init_distributed
from fvit.bench.store import ResultsStore, StoreConfigError, merge_store_dir

CFG = {"experiment": "segmentation", "model": "tiny", "seed": 0, "attack": {"name": "pgd", "eps": 8 / 255}}


def test_append_resume_and_order(tmp_path):
    s = ResultsStore(tmp_path, CFG)
    assert s.append([{"id": "b", "setting": "ta", "x": 1.0}, {"id": "a", "setting": "ta", "x": 2.0}]) == 2
    assert s.append([{"id": "a", "setting": "ta", "x": 99.0}]) == 0  # first row wins
    s2 = ResultsStore(tmp_path, dict(CFG))
    assert [r["id"] for r in s2.rows("ta")] == ["a", "b"] and s2.rows("ta")[0]["x"] == 2.0
    assert s2.done_ids(["ta"]) == {"a", "b"} and s2.done_ids(["ta", "rollout"]) == set()
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "header" and len(lines) == 3


def test_different_config_is_an_error(tmp_path):
    ResultsStore(tmp_path, CFG).append([{"id": "a", "setting": "", "v": 1}])
    with pytest.raises(StoreConfigError, match="differs in: seed"):
        ResultsStore(tmp_path, {**CFG, "seed": 1})


def test_torn_last_line_is_dropped_and_truncated(tmp_path):
    s = ResultsStore(tmp_path, CFG)
    s.append([{"id": "a", "setting": "", "v": 1}])
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write('{"id": "b", "setting": "", "v"')  # killed mid-write
    s2 = ResultsStore(tmp_path, CFG)
    assert [r["id"] for r in s2.rows()] == ["a"]
    s2.append([{"id": "b", "setting": "", "v": 2}])
    assert [r["id"] for r in ResultsStore(tmp_path, CFG).rows()] == ["a", "b"]


def test_shards_merge(tmp_path):
    for rank in (0, 1):
        ResultsStore(tmp_path, CFG, rank=rank, world_size=2).append(
            [{"id": f"i{rank}{j}", "setting": "s", "v": j} for j in range(2)])
    # a rank sees the other's rows as done (resume after a kill)
    assert ResultsStore(tmp_path, CFG, rank=0, world_size=2).done_ids(["s"]) == {"i00", "i01", "i10", "i11"}
    out = merge_store_dir(tmp_path, CFG)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["rows.jsonl"]
    assert [r["id"] for r in ResultsStore(out.parent, CFG).rows()] == ["i00", "i01", "i10", "i11"]


def test_cost_runtime_only_and_single_process_context(monkeypatch):
    from types import SimpleNamespace

    import fvit.bench.cost as cost_mod

    ticks = iter([100.0, 102.5])  # the block's wall time by a fake clock (the module's own): 2.5 s
    monkeypatch.setattr(cost_mod, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    with measure("x", energy=False, images=4) as c:
        assert c.seconds == 0.0  # filled in on exit
    monkeypatch.undo()
    assert (c.seconds, c.seconds_per_image, c.energy_j, c.co2_g, c.note) == (2.5, 0.625, None, None, "runtime only")
    assert c.as_dict() == {"label": "x", "seconds": 2.5, "energy_j": None, "co2_g": None, "images": 4,
                           "note": "runtime only", "seconds_per_image": 0.625}
    assert price_energy(3.6e6, 370.0) == pytest.approx(370.0) and price_energy(None) is None
    ctx = init_distributed()
    assert isinstance(ctx, DistContext) and ctx.world_size == 1 and ctx.shard([1, 2, 3]) == [1, 2, 3]
    assert DistContext(1, 2).shard(list(range(5))) == [1, 3]


# -- issue 25: damage, locks, shards of another world size --------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402

from fvit.bench.store import StoreDamagedError, StoreLockedError  # noqa: E402

GOOD = [{"id": "a", "setting": "s", "v": 1}, {"id": "b", "setting": "s", "v": 2}]


def _damaged(tmp_path, bad_line: str, after=({"id": "z", "setting": "s", "v": 9},)):
    ResultsStore(tmp_path, CFG).append(GOOD)
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write(bad_line + "\n")
        for r in after:
            f.write(json.dumps(r) + "\n")
    return tmp_path / "rows.jsonl"


HEADER = json.dumps({"type": "header", "version": 1, "config": CFG})


@pytest.mark.parametrize("bad, what", [
    ('[1, 2, 3]', "a list, not a JSON object"),
    ('"text"', "a str, not a JSON object"),
    ('{"setting": "s", "v": 3}', "a row without an 'id'"),
    (HEADER, "a second header line"),
    ('{"id": "c", "setting": "s", "v": ', "not JSON"),
    ('{"id": ["c"], "setting": "s"}', "a row without an 'id'"),
])
def test_damaged_store_names_file_and_line_then_discards_the_tail(tmp_path, bad, what):
    path = _damaged(tmp_path, bad)
    with pytest.raises(StoreDamagedError) as e:
        ResultsStore(tmp_path, CFG)
    msg = str(e.value)
    assert e.value.path == path and e.value.line == 4 and "\n" not in msg
    assert msg.startswith(f"{path}: line 4 is damaged ({what}); the 2 row(s) before it are intact"), msg
    assert path.read_text().count("\n") == 5  # nothing changed without the option
    s = ResultsStore(tmp_path, CFG, discard_damaged=True)
    assert [r["id"] for r in s.rows()] == ["a", "b"]  # the rows before the damage are kept, the tail is gone
    assert path.read_text().splitlines()[1:] == [json.dumps(r, sort_keys=True) for r in GOOD]
    s.append([{"id": "z", "setting": "s", "v": 9}])
    assert [r["id"] for r in ResultsStore(tmp_path, CFG).rows()] == ["a", "b", "z"]


def test_damaged_header_line_one(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(StoreDamagedError, match=r"rows.jsonl: line 1 is damaged \(the first record is not a"):
        ResultsStore(tmp_path, CFG)
    assert len(ResultsStore(tmp_path, CFG, discard_damaged=True)) == 0
    assert json.loads((tmp_path / "rows.jsonl").read_text())["config"] == CFG


def test_missing_field_names_file_and_line(tmp_path):
    s = ResultsStore(tmp_path, CFG)
    s.append(GOOD)
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write(json.dumps({"id": "c", "setting": "s"}) + "\n" + json.dumps({"id": "d", "setting": "s", "v": 4}) + "\n")
    s = ResultsStore(tmp_path, CFG)
    err = s.missing_field(s.rows(), "v")
    assert (err.path, err.line) == (tmp_path / "rows.jsonl", 4) and "without the field 'v'" in str(err)
    assert s.missing_field(s.rows(), "id") is None
    s.discard_from(err.path, err.line)
    assert [r["id"] for r in s.rows()] == ["a", "b"] and len(ResultsStore(tmp_path, CFG)) == 2


HOLD = """
import sys, time
from fvit.bench.store import ResultsStore
s = ResultsStore(sys.argv[1], {cfg!r})
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_writer_process_is_refused_naming_folder_and_pid(tmp_path):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(cfg=CFG), str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as e:
            ResultsStore(tmp_path, CFG)
        assert str(e.value).startswith(f"{tmp_path}: another process (pid {holder.pid}) is writing")
        assert (tmp_path / "rows.jsonl").read_text().count("\n") == 1  # one header, written once
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    s = ResultsStore(tmp_path, CFG)  # the lock is free once the holder exits
    s.append(GOOD)
    s.close()
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 3 and sum('"header"' in line for line in lines) == 1


def test_one_process_shares_its_own_lock_and_close_releases(tmp_path):
    a = ResultsStore(tmp_path, CFG)
    b = ResultsStore(tmp_path, CFG)  # e.g. a test and the engine: one writer
    a.close()
    b.append(GOOD)
    b.close()
    assert len(ResultsStore(tmp_path, CFG)) == 2


def test_single_process_resume_merges_shards_of_another_world_size(tmp_path):
    for rank in range(3):  # a 3-rank run killed before its merge
        s = ResultsStore(tmp_path, CFG, rank=rank, world_size=3)
        s.append([{"id": f"i{rank}", "setting": "s", "v": rank}])
        s.close()
    s = ResultsStore(tmp_path, CFG)  # resumed by one process
    assert sorted(p.name for p in tmp_path.glob("rows*.jsonl")) == ["rows.jsonl"]
    assert [r["id"] for r in s.rows()] == ["i0", "i1", "i2"] and s.done_ids(["s"]) == {"i0", "i1", "i2"}
    s.append([{"id": "i3", "setting": "s", "v": 3}])
    assert [r["id"] for r in ResultsStore(tmp_path, CFG).rows()] == ["i0", "i1", "i2", "i3"]
