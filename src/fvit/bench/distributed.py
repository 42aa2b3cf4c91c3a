"""Sharding the benchmarks over torch.distributed ranks (torchrun), and the single-process case.

Under `torchrun --nproc_per_node N fvit bench ...` every rank takes `ids[rank::world]` of the same
deterministic id list, writes its own store shard, and rank 0 merges after a barrier. Backend: nccl
when CUDA is available, else gloo. Without the torchrun environment nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def shard(self, items: Sequence) -> list:
        """This rank's share: items[rank::world] (every rank must pass the same list)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list:
        """All ranks' `obj` (picklable), on every rank; [obj] when single-process."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def device(self, requested: str | None = None) -> torch.device:
        """One GPU per rank (cuda:local_rank) when CUDA is used, else the requested/CPU device."""
        from fvit.utils import resolve_device

        dev = resolve_device(requested)
        if dev.type == "cuda" and self.world_size > 1 and dev.index is None:
            return torch.device("cuda", self.local_rank)
        return dev

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 when absent)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a 1-rank context."""
    rank, world, local = env_world()
    if world <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local, False)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, True)
