"""Benchmarks: the papers' experiments as resumable, sharded runs of one experiment engine.

- `fvit.bench.settings`: `BenchSettings` (ModelSpec, DataSpec, RunSpec, MethodsSpec, DDSConfig,
  AttackSpec, the experiment's Params): one run, as frozen typed values.
- `fvit.bench.engine`: the `Experiment` base class, the `EXPERIMENTS` registry and
  `run_experiment(settings)` / `run_entry(ctx)`.
- Entries: `segmentation`, `perturbation`, `ablation`, `sensitivity`, `explanation_attack`,
  `certify` (one file each); `fvit.bench.experiments`: in-memory wrappers (`run_segmentation`, ...).
- `fvit.bench.store`: the append-only JSON Lines results store (resume, shards).
- `fvit.bench.runner`: the batched, resumable, sharded loop under every entry.
- `fvit.bench.distributed`: torch.distributed helpers (torchrun; gloo on CPU, nccl on GPU).
- `fvit.bench.cost`: runtime / energy / CO2 of a block ([Re] Table 8).
"""

from fvit.bench.cost import Cost, measure
from fvit.bench.distributed import DistContext, init_distributed
from fvit.bench.store import ResultsStore, StoreConfigError, merge_store_dir

__all__ = ["Cost", "DistContext", "ResultsStore", "StoreConfigError", "init_distributed", "measure",
           "merge_store_dir"]
