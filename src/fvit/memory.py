"""Chunk sizes from free device memory (instead of a fixed ``max_batch``).

`chunk_from_free_memory` turns a per-item memory cost into the number of items that fit in a share
of the device's free memory (CUDA, `torch.cuda.mem_get_info`); on other devices, where free memory
is neither cheap to query nor the limit that matters, it returns the caller's fallback.
`measure_item_bytes` measures the per-item cost of a function on CUDA from two probe calls (1 and 2
items), so fixed costs (weights cast by autocast, workspaces) are not counted per item.
`keep_freed_cpu_memory` stops glibc from handing large freed blocks back to the kernel (the command
line and the benchmarks call it).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from typing import Callable

import torch

from fvit.errors import FvitError


def chunk_from_free_memory(item_bytes: float, device: torch.device | str, *, fallback: int,
                           fraction: float = 0.7, reserve_bytes: float = 0.0, cap: int | None = None,
                           mem_get_info: Callable | None = None) -> int:
    """Items per chunk: ``(fraction * free - reserve_bytes) // item_bytes`` on CUDA (at least 1, at
    most ``cap``), ``fallback`` elsewhere. ``mem_get_info`` replaces `torch.cuda.mem_get_info`
    (tests)."""
    device = torch.device(device)
    if fallback < 1 or not 0 < fraction <= 1:
        raise FvitError(f"chunk size: fallback must be >= 1 and fraction in (0, 1], got {fallback}, {fraction}")
    if device.type != "cuda":
        return fallback
    if not item_bytes > 0 or not math.isfinite(item_bytes):
        return fallback
    free, _total = (mem_get_info or torch.cuda.mem_get_info)(device)
    n = int((fraction * free - reserve_bytes) // item_bytes)
    return max(1, min(n, cap) if cap else n)


def measure_item_bytes(fn: Callable[[int], object], device: torch.device | str) -> float:
    """Peak memory per item of ``fn(k)`` (which runs k items) on CUDA: the peak of ``fn(2)`` minus
    that of ``fn(1)``, both above the memory allocated before; NaN on other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return float("nan")
    peaks = []
    for k in (1, 2):
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(k)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    return float(max(peaks[1] - peaks[0], 1))


#: CPU chunk budget of a denoiser call: the chunk's largest activation stays under this many bytes
#: (cache-sized working sets: on the 2-core build machine the SmallDDPM's per-sample forward was
#: fastest at 64 32x32 inputs, 384 KiB of largest activation each, and 2.2x slower at 256).
CPU_DENOISER_CHUNK_BYTES = 24 << 20
CPU_DENOISER_CHUNK_CAP = 256


def largest_activation_bytes(fn: Callable[[], object], module: torch.nn.Module) -> int:
    """The largest output (bytes) of any submodule of ``module`` while ``fn()`` runs (forward hooks;
    call it on ONE input to get the per-input figure)."""
    largest = [0]

    def hook(_mod, _inp, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def cpu_chunk_from_activation(item_bytes: float, *, budget: int = CPU_DENOISER_CHUNK_BYTES,
                              cap: int = CPU_DENOISER_CHUNK_CAP) -> int:
    """Inputs per CPU call so that the chunk's largest activation stays under ``budget`` bytes
    (at least 1, at most ``cap``; ``cap`` when the figure is unknown)."""
    if not item_bytes > 0 or not math.isfinite(item_bytes):
        return cap
    return int(max(1, min(cap, budget // item_bytes)))


#: glibc ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to 1 GiB come from the heap, and the heap is never trimmed (2**31 - 1: mallopt's int).
#: Older glibc refuses an mmap threshold above 32 MiB (its documented maximum): then 32 MiB.
KEEP_FREED_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1))
_MMAP_THRESHOLD_FALLBACK = 32 << 20


def keep_freed_cpu_memory(load_libc: Callable[[], object] | None = None) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mappings and
    trims the heap top, so a CPU pass over ViT-B activations at batch 8-32 maps and zeroes them
    anew on every call: page faults made batch 16 / 32 slower per image than batch 1 for forward +
    backward and GradCAM (`benchmarks/bench_pipeline.py`). PyTorch's CPU tuning guide recommends
    preloading jemalloc / tcmalloc for the same reason; ``mallopt`` is the in-process equivalent.
    The process keeps its peak resident memory. A no-op (False) off glibc or with
    ``FVIT_KEEP_FREED_MEMORY=0``; True when the settings were applied. ``load_libc`` replaces
    loading libc (tests)."""
    if os.environ.get("FVIT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = load_libc() if load_libc is not None else ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no libc.so.6 / no mallopt
        return False
    applied = []
    for param, value in KEEP_FREED_SETTINGS:  # every setting is tried, whatever the others answer
        ok = mallopt(param, value) == 1
        if not ok and param == _M_MMAP_THRESHOLD:
            ok = mallopt(param, _MMAP_THRESHOLD_FALLBACK) == 1
        applied.append(ok)
    return all(applied)
