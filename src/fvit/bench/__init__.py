"""Benchmarks: the papers' experiments as resumable, sharded runs.

- `fvit.bench.experiments`: `run_segmentation`, `run_perturbation`, `run_ablation`,
  `run_sensitivity` (in-memory runners returning plain dicts, also used by `fvit demo`).
- `fvit.bench.store`: the append-only JSON Lines results store (resume, shards).
- `fvit.bench.runner`: the batched, resumable, sharded loop under every experiment.
- `fvit.bench.distributed`: torch.distributed helpers (torchrun; gloo on CPU, nccl on GPU).
- `fvit.bench.cost`: runtime / energy / CO2 of a block ([Re] Table 8).
"""

from fvit.bench.cost import Cost, measure
from fvit.bench.distributed import DistContext, init_distributed
from fvit.bench.store import ResultsStore, StoreConfigError, merge_store_dir

__all__ = ["Cost", "DistContext", "ResultsStore", "StoreConfigError", "init_distributed", "measure",
           "merge_store_dir"]
