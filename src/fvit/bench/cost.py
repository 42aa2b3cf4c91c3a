"""Runtime, energy and CO2 of a block of work, as in the [Re] study's Table 8.

`measure(label)` is a context manager. With codecarbon installed (`pip install fvit[energy]`) it runs an
`OfflineEmissionsTracker` (country ISO code, default NLD) and reports energy (J) and CO2 (g); the CO2
can instead be priced at a fixed grid intensity (the [Re] study: 370 gCO2/kWh, Netherlands 2024).
Without codecarbon, energy and CO2 are None and `Cost.note` says so.
"""

from __future__ import annotations

import importlib.util
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

RE_NL_2024_G_PER_KWH = 370.0  # [Re] study, carbon intensity of the Dutch grid in 2024
J_PER_KWH = 3.6e6


@dataclass
class Cost:
    label: str
    seconds: float = 0.0
    energy_j: float | None = None
    co2_g: float | None = None
    images: int | None = None
    note: str = ""

    @property
    def seconds_per_image(self) -> float | None:
        return self.seconds / self.images if self.images else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seconds_per_image"] = self.seconds_per_image
        return d


def codecarbon_available() -> bool:
    return importlib.util.find_spec("codecarbon") is not None


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def measure(label: str, *, energy: bool = True, country_iso_code: str = "NLD",
            carbon_intensity_g_per_kwh: float | None = None, images: int | None = None,
            output_dir: str | None = None) -> Iterator[Cost]:
    """Measure the wall time (and energy / CO2 when codecarbon is installed) of the `with` block.

    The yielded `Cost` is filled in on exit; set `cost.images` inside the block for per-image time.
    `carbon_intensity_g_per_kwh` prices the measured energy at a fixed intensity instead of
    codecarbon's country figure.
    """
    cost = Cost(label=label, images=images)
    tracker = None
    if energy and codecarbon_available():
        from codecarbon import OfflineEmissionsTracker

        tracker = OfflineEmissionsTracker(country_iso_code=country_iso_code, project_name=label,
                                          save_to_file=output_dir is not None,
                                          output_dir=output_dir or ".", log_level="error")
        tracker.start()
    elif energy:
        cost.note = "runtime only: codecarbon not installed (pip install 'fvit[energy]')"
    else:
        cost.note = "runtime only"
    _sync()
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        _sync()
        cost.seconds = time.perf_counter() - t0
        if tracker is not None:
            kg = tracker.stop()
            data = getattr(tracker, "final_emissions_data", None)
            kwh = getattr(data, "energy_consumed", None)
            if kwh is not None:
                cost.energy_j = float(kwh) * J_PER_KWH
            if carbon_intensity_g_per_kwh is not None and kwh is not None:
                cost.co2_g = float(kwh) * carbon_intensity_g_per_kwh
                cost.note = f"CO2 at {carbon_intensity_g_per_kwh:g} gCO2/kWh"
            elif kg is not None:
                cost.co2_g = float(kg) * 1000.0
                cost.note = f"codecarbon offline, country {country_iso_code}"


def price_energy(energy_j: float | None, g_per_kwh: float = RE_NL_2024_G_PER_KWH) -> float | None:
    """CO2 grams for an energy in joules at a grid intensity (None stays None)."""
    return None if energy_j is None else energy_j / J_PER_KWH * g_per_kwh
