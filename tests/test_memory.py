"""Chunk sizes from free memory (`fvit.memory`) and DDS(max_batch="auto")."""

import math

import pytest
import torch

from fvit.dds import DDS, DDSConfig
from fvit.dds.factory import make_dds
from fvit.denoise import FunctionDenoiser, linear_schedule
from fvit.errors import FvitError
from fvit.memory import chunk_from_free_memory, measure_item_bytes

GB = 1024 ** 3


def fake_info(free):
    return lambda device: (free, 80 * GB)


def test_chunk_from_free_memory_on_cuda_uses_the_free_share():
    # 70 % of 10 GB = 7 GB -> 7 items of 1 GB; minus a 2 GB reserve -> 5; capped -> 4
    assert chunk_from_free_memory(GB, "cuda", fallback=32, mem_get_info=fake_info(10 * GB)) == 7
    assert chunk_from_free_memory(GB, "cuda", fallback=32, reserve_bytes=2 * GB, mem_get_info=fake_info(10 * GB)) == 5
    assert chunk_from_free_memory(GB, "cuda", fallback=32, cap=4, mem_get_info=fake_info(10 * GB)) == 4
    assert chunk_from_free_memory(3 * GB, "cuda", fallback=32, fraction=0.5, mem_get_info=fake_info(100 * GB)) == 16
    # less free memory than one item still runs one at a time; an unknown cost falls back
    assert chunk_from_free_memory(GB, "cuda", fallback=32, mem_get_info=fake_info(GB // 2)) == 1
    assert chunk_from_free_memory(float("nan"), "cuda", fallback=32, mem_get_info=fake_info(10 * GB)) == 32


def test_chunk_from_free_memory_falls_back_off_cuda():
    def boom(device):  # never asked on a CPU
        raise AssertionError("mem_get_info called for a CPU")

    assert chunk_from_free_memory(GB, "cpu", fallback=12, mem_get_info=boom) == 12
    assert math.isnan(measure_item_bytes(lambda k: None, "cpu"))
    with pytest.raises(FvitError):
        chunk_from_free_memory(GB, "cpu", fallback=0)


def test_dds_auto_batch_on_cpu_gives_the_results_of_a_fixed_chunk():
    schedule = linear_schedule(1000)
    calls = []

    def eps_fn(x, t):
        calls.append(x.shape[0])
        return 0.1 * x

    den = FunctionDenoiser(eps_fn, schedule)
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    auto = DDS(den, samples=8, max_batch="auto")
    # a function denoiser has no layers whose activations could be measured: the CPU cap (256)
    assert auto.max_batch == 32 and auto.chunk_size(images) == 256
    out_auto = auto.denoise(images)
    assert calls[-1:] == [40]  # the 40 samples in one call (after the one-input probe)
    calls.clear()
    assert torch.equal(out_auto, DDS(den, samples=8, max_batch=32).denoise(images))
    assert make_dds(DDSConfig(samples=8, max_batch="auto"), denoiser=den).auto_batch
    with pytest.raises(FvitError, match="max_batch must be an integer"):
        DDSConfig(max_batch="lots")


class FakeLibc:
    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


def test_keep_freed_cpu_memory_sets_glibc_thresholds(monkeypatch):
    import sys

    from fvit.memory import keep_freed_cpu_memory

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("FVIT_KEEP_FREED_MEMORY", raising=False)
    libc = FakeLibc()
    assert keep_freed_cpu_memory(lambda: libc) is True
    # M_MMAP_THRESHOLD (-3) = 1 GiB, M_TRIM_THRESHOLD (-1) = INT_MAX, as malloc.h numbers them
    assert libc.calls == [(-3, 2**30), (-1, 2**31 - 1)]
    refusing = FakeLibc(answer=0)
    assert keep_freed_cpu_memory(lambda: refusing) is False  # glibc refused the values
    # the 32 MiB fallback of older glibc is tried, and the trim threshold is still set
    assert refusing.calls == [(-3, 2**30), (-3, 32 * 2**20), (-1, 2**31 - 1)]

    class OldGlibc(FakeLibc):  # refuses an mmap threshold above 32 MiB, as older glibc does
        def mallopt(self, param, value):
            self.calls.append((param, value))
            return 0 if param == -3 and value > 32 * 2**20 else 1

    old = OldGlibc()
    assert keep_freed_cpu_memory(lambda: old) is True
    assert old.calls == [(-3, 2**30), (-3, 32 * 2**20), (-1, 2**31 - 1)]

    def no_libc():
        raise OSError("libc.so.6: cannot open shared object file")

    assert keep_freed_cpu_memory(no_libc) is False
    monkeypatch.setenv("FVIT_KEEP_FREED_MEMORY", "0")
    untouched = FakeLibc()
    assert keep_freed_cpu_memory(lambda: untouched) is False and untouched.calls == []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("FVIT_KEEP_FREED_MEMORY")
    assert keep_freed_cpu_memory(lambda: untouched) is False and untouched.calls == []


def test_cpu_denoiser_chunk_from_the_largest_activation():
    import torch.nn as nn

    from fvit.dds import DDS
    from fvit.denoise import SmallDDPM, small_unet_config
    from fvit.memory import CPU_DENOISER_CHUNK_BYTES, cpu_chunk_from_activation, largest_activation_bytes

    net = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2))
    # the Sequential's own output (2 floats) is smaller than the first Linear's (7 floats = 28 bytes)
    assert largest_activation_bytes(lambda: net(torch.zeros(1, 3)), net) == 28
    assert largest_activation_bytes(lambda: net(torch.zeros(5, 3)), net) == 140
    assert cpu_chunk_from_activation(1 << 20, budget=8 << 20, cap=256) == 8
    assert cpu_chunk_from_activation(1, budget=8 << 20, cap=256) == 256
    assert cpu_chunk_from_activation(64 << 20, budget=8 << 20) == 1
    assert cpu_chunk_from_activation(float("nan"), cap=33) == 33
    # the demo's SmallDDPM at 32 x 32: the largest activation is the 96-channel concatenation of the
    # up path, 96 * 32 * 32 float32 = 384 KiB per input -> 24 MiB / 384 KiB = 64 inputs per call
    den = SmallDDPM(32, small_unet_config(32, 32), seed=0).eval()
    dds = DDS(den, sigma=8 / 255, samples=2, max_batch="auto")
    assert dds.chunk_size(torch.zeros(3, 3, 32, 32)) == CPU_DENOISER_CHUNK_BYTES // (96 * 32 * 32 * 4) == 64
    assert DDS(den, sigma=8 / 255, max_batch=17).chunk_size(torch.zeros(3, 3, 32, 32)) == 17
