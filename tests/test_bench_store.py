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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
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
