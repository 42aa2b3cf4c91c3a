"""The one wall-clock timer of fvit: per-name seconds, accumulated over `with stopwatch(name):` blocks
(the experiment runner's per-method timers, the demo's per-part timings, the cost table)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Stopwatch:
    """``seconds[name]``: the wall time spent inside ``with stopwatch(name):`` (summed)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
