"""Per-image random streams: noise that depends only on (seed, image identity).

DDS draws its Gaussian noise (and a stochastic sampler its per-step noise) for B images x m samples
at once. With one generator for the whole batch, an image's noise would depend on its position in
the batch and on the other images; a result could not be reproduced from its record. Here each
image gets its own `torch.Generator`, seeded by `stable_seed(seed, key)` where `key` names the image
(a data-set id, or `content_key` of its pixels), and draws its own rows of every noise tensor. Only
the noise draw is per image (B small `randn` calls, cheap next to the denoiser); all network passes
stay batched.

`PerImageGenerator` exposes `get_state` / `set_state` like a `torch.Generator`, so the DDS memo
(which keys on the generator state) works unchanged.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from fvit.errors import FvitError

#: How the per-image seed is derived (recorded next to results so that a map can be reproduced).
#: How a classifier attack's random start is drawn per image (`fvit.attacks.GradientAttack` with keys).
ATTACK_START_RULE = ("per-image torch.Generator seeded with stable_seed(seed, 'attack-start|<key>'), key = the "
                     "data-set id")

NOISE_RULE = "per-image torch.Generator seeded with stable_seed(seed, key) = sha256('fvit-noise|<seed>|<key>')[:8] (LE, 63 bits)"


def stable_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, key): the first 8 bytes (little endian) of SHA-256 of
    ``'fvit-noise|<seed>|<key>'``, top bit cleared. Stable across runs, processes and platforms."""
    digest = hashlib.sha256(f"fvit-noise|{int(seed)}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def content_keys(images: torch.Tensor) -> list[str]:
    """One key per image of a ``(B, ...)`` tensor: ``'sha256:<16 hex>'`` of its shape and float32
    bytes (the same pixels give the same key on any device)."""
    flat = images.detach().to("cpu", torch.float32).contiguous()
    keys = []
    for img in flat:
        h = hashlib.sha256(f"{tuple(img.shape)}|".encode())
        h.update(img.numpy().tobytes())
        keys.append(f"sha256:{h.hexdigest()[:16]}")
    return keys


def noise_keys(images01: torch.Tensor, keys: Sequence | None = None) -> list[str]:
    """The per-image noise keys of a batch: ``keys`` (one per image, as str) or the images'
    `content_keys`; a count that does not match the batch is an `FvitError`."""
    if keys is None:
        return content_keys(images01)
    keys = [str(k) for k in keys]
    if len(keys) != images01.shape[0]:
        raise FvitError(f"{len(keys)} noise keys for {images01.shape[0]} images")
    return keys


class PerImageGenerator:
    """A group of `torch.Generator`s, one per image; `randn(shape)` draws rows
    ``[i * r, (i + 1) * r)`` of a ``(B * r, ...)`` tensor from generator i (r = shape[0] / B)."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        if not len(seeds):
            raise FvitError("PerImageGenerator needs at least one seed")
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = []
        for s in self.seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            self.generators.append(g)

    @classmethod
    def from_keys(cls, seed: int, keys: Sequence[str], device: torch.device | str = "cpu") -> "PerImageGenerator":
        return cls([stable_seed(seed, k) for k in keys], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
        """Standard normal noise: rows ``[i * r, (i + 1) * r)`` from generator i."""
        return self._rows(torch.randn, shape, dtype, device)

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform [0, 1) noise, image i's rows from generator i (as `randn`)."""
        return self._rows(torch.rand, shape, dtype, device)

    def _rows(self, fn, shape: Sequence[int], dtype: torch.dtype, device) -> torch.Tensor:
        n = len(self.generators)
        if not shape or shape[0] % n:
            raise FvitError(f"per-image noise: {tuple(shape)} rows are not a multiple of {n} images")
        rows = (shape[0] // n, *shape[1:])
        parts = [fn(rows, generator=g, device=self.device, dtype=dtype) for g in self.generators]
        return torch.cat(parts).to(device if device is not None else self.device)

    def get_state(self) -> torch.Tensor:
        return torch.cat([g.get_state() for g in self.generators])

    def set_state(self, state: torch.Tensor) -> None:
        for g, part in zip(self.generators, state.chunk(len(self.generators))):
            g.set_state(part.clone())


def draw(kind: str, shape: Sequence[int], generator, *, device, dtype=torch.float32) -> torch.Tensor:
    """``randn`` (kind 'normal') or ``rand`` ('uniform') of ``shape`` from a `torch.Generator` or a
    `PerImageGenerator` (image i's rows from its own stream), on ``device``."""
    if isinstance(generator, PerImageGenerator):
        fn = generator.randn if kind == "normal" else generator.rand
        return fn(shape, dtype, device)
    fn = torch.randn if kind == "normal" else torch.rand
    dev = generator.device if generator is not None else device
    return fn(tuple(shape), generator=generator, device=dev, dtype=dtype).to(device)


__all__ = ["ATTACK_START_RULE", "NOISE_RULE", "PerImageGenerator", "content_keys", "draw", "noise_keys", "stable_seed"]
