"""The resumable, sharded batch loop shared by every experiment.

`run_rows(dataset, settings, compute, ...)`:
1. the id list of the data set (deterministic order) is sharded over ranks (`ids[rank::world]`),
2. this rank's ids are cut into fixed batches of `batch_size`,
3. a batch is skipped when the store already holds a row for every (id, setting); otherwise it is
   computed whole with the global RNG seeded from (seed, the batch's ids), so a recomputed batch gives
   the same rows whatever happened before (resume after a kill == uninterrupted run); the classifier
   attacks' random starts and the DDS noise are drawn per image from (seed, id) (`BatchContext.run_seed`,
   `ids`), so with those an image's rows do not depend on its batch, shard or the world size,
4. rows are appended to the store as each batch finishes,
5. rows of all ranks are gathered; rank 0 merges the store shards.
Final numbers are always computed from the returned rows, never from running totals.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from fvit.bench.distributed import DistContext
from fvit.bench.store import ResultsStore, merge_store_dir, row_key
from fvit.data import chunks, dataset_ids, iter_batches
from fvit.errors import FvitError
from fvit.timing import Stopwatch

ComputeFn = Callable[[dict, "BatchContext"], list[dict]]


@dataclass
class BatchContext:
    """What a compute function gets besides the batch: its seed, its ids (per-image DDS noise keys)
    and per-key timers (`fvit.timing.Stopwatch`)."""

    seed: int
    index: int
    ids: tuple[str, ...] = ()
    stopwatch: Stopwatch = field(default_factory=Stopwatch)
    #: the run's seed (per-image streams: attack starts keyed by (run_seed, id), as DDS noise)
    run_seed: int = 0

    @property
    def timings(self) -> dict[str, float]:
        return self.stopwatch.seconds

    def timed(self, key: str):
        return self.stopwatch(key)


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """A seed that depends only on the run seed and the batch's ids."""
    return zlib.crc32(f"{seed}|{'|'.join(ids)}".encode()) & 0x7FFFFFFF


@dataclass
class RunOutput:
    rows: list[dict]
    timings: dict[str, float]
    images: int  # images computed in this call (not skipped), all ranks
    skipped: int


def run_rows(dataset: Dataset, settings: Sequence[str], compute: ComputeFn, *, store: ResultsStore | None = None,
             batch_size: int = 8, seed: int = 0, progress: bool = True, ctx: DistContext | None = None,
             desc: str = "bench", num_workers: int = 0, max_batches: int | None = None) -> RunOutput:
    """Run `compute` over the data set in batches (see module doc); returns the rows of every id and
    setting of the data set. `max_batches` stops early (tests simulate a kill with it)."""
    ctx = ctx or DistContext()
    settings = [str(s) for s in settings]
    all_ids = dataset_ids(dataset)
    if len(set(all_ids)) != len(all_ids):
        raise FvitError("data set ids are not unique; the results store needs unique ids")
    position = {i: n for n, i in enumerate(all_ids)}
    my_ids = ctx.shard(all_ids)
    batches = chunks(my_ids, batch_size)
    done = store.done_ids(settings) if store is not None else set()
    todo = [b for b in batches if not all(i in done for i in b)]
    if max_batches is not None:
        todo = todo[:max_batches]
    skipped = sum(len(b) for b in batches) - sum(len(b) for b in todo)
    timings: dict[str, float] = defaultdict(float)
    local_rows: list[dict] = []
    bar = _progress(sum(len(b) for b in batches), skipped, progress and ctx.is_main, desc)
    wanted = set(settings)
    for k, (ids, batch) in enumerate(zip(todo, iter_batches(dataset, [[position[i] for i in b] for b in todo],
                                                            num_workers))):
        bctx = BatchContext(seed=batch_seed(seed, ids), index=k, ids=tuple(str(i) for i in ids), run_seed=seed)
        torch.manual_seed(bctx.seed)
        rows = compute(batch, bctx)
        bad = [r for r in rows if str(r.get("setting", "")) not in wanted or str(r.get("id")) not in ids]
        if bad:
            raise FvitError(f"internal: row for unexpected (id, setting) {row_key(bad[0])}")
        if store is not None:
            store.append(rows)
        else:
            local_rows += rows
        for key, t in bctx.timings.items():
            timings[key] += t
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    mine = set(my_ids)
    if store is not None:
        local_rows = [r for r in store.rows() if r["id"] in mine and str(r.get("setting", "")) in wanted]
    gathered = ctx.gather_objects((local_rows, dict(timings), sum(len(b) for b in todo), skipped))
    ctx.barrier()
    if store is not None and ctx.is_main and ctx.world_size > 1:
        merge_store_dir(store.dir, store.config)
    ctx.barrier()
    rows_all: dict[tuple[str, str], dict] = {}
    total_t: dict[str, float] = defaultdict(float)
    for rows, t, _, _ in gathered:
        for r in rows:
            rows_all.setdefault(row_key(r), r)
        for key, v in t.items():
            total_t[key] += v
    ordered = sorted(rows_all.values(), key=lambda r: (str(r.get("setting", "")), position.get(r["id"], -1)))
    return RunOutput(ordered, dict(total_t), sum(g[2] for g in gathered), sum(g[3] for g in gathered))


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True)
