"""Compatibility: `run_bench(settings)` is `fvit.bench.engine.run_experiment` (one benchmark run end
to end: load, store, sharded rows, results.json, report); `apply_protocol` lives in
`fvit.bench.protocols`. The flat `BenchOptions` is gone: build a `fvit.bench.settings.BenchSettings`.
"""

from __future__ import annotations

from fvit.bench.engine import experiment_names, run_experiment
from fvit.bench.protocols import apply_protocol
from fvit.bench.settings import DDS_MODES, BenchSettings

run_bench = run_experiment

__all__ = ["BenchSettings", "DDS_MODES", "apply_protocol", "experiment_names", "run_bench"]
