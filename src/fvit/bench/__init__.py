"""Benchmarks: the papers' experiments as resumable, sharded runs of one experiment engine.

- `fvit.bench.settings`: `BenchSettings` (ModelSpec, DataSpec, RunSpec, MethodsSpec, DDSConfig,
  AttackSpec, the experiment's Params): one run, as frozen typed values.
- `fvit.bench.engine`: the `Experiment` base class, the `EXPERIMENTS` registry and
  `run_experiment(settings)` / `run_entry(ctx)`.
- Entries: `segmentation`, `perturbation`, `ablation`, `sensitivity`, `explanation_attack`,
  `frontier`, `certify` (one file each, registered by the imports below); `fvit.bench.experiments`: in-memory wrappers (`run_segmentation`, ...).
- `fvit.bench.store`: the append-only JSON Lines results store (resume, shards).
- `fvit.bench.runner`: the batched, resumable, sharded loop under every entry.
- `fvit.bench.distributed`: torch.distributed helpers (torchrun; gloo on CPU, nccl on GPU).
- `fvit.bench.cost`: runtime / energy / CO2 of a block ([Re] Table 8).
"""

from fvit.bench.cost import Cost, measure
from fvit.bench.distributed import DistContext, init_distributed
from fvit.bench.store import ResultsStore, StoreConfigError, merge_store_dir

# The entries: importing each module registers its experiment (`register_experiment`), in this
# order (`experiment_names`). A new experiment: its file and one line here. Any import of
# `fvit.bench.engine` runs this package first, so the registry is always complete.
from fvit.bench import segmentation  # noqa: E402,F401  (registers 'segmentation')
from fvit.bench import perturbation  # noqa: E402,F401  (registers 'perturbation')
from fvit.bench import ablation  # noqa: E402,F401  (registers 'ablation')
from fvit.bench import sensitivity  # noqa: E402,F401  (registers 'sensitivity')
from fvit.bench import explanation_attack  # noqa: E402,F401  (registers 'explanation-attack')
from fvit.bench import frontier  # noqa: E402,F401  (registers 'frontier')
from fvit.bench import certify  # noqa: E402,F401  (registers 'certify')

__all__ = ["Cost", "DistContext", "ResultsStore", "StoreConfigError", "init_distributed", "measure",
           "merge_store_dir"]
