"""Shared fixtures: a tiny random ViT, a batch of images, the shared real-image assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"

# Tiny tensors: one intra-op thread is faster than a thread pool on a shared CPU (with two busy
# cores, every small matmul otherwise waits tens of ms at the pool's barrier).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-block, 32-dim, 4-head random timm ViT on 32x32 images with 8x8 patches (4x4 grid)."""
    from fvit.models import tiny_vit

    return tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, seed=0)


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=g)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"shared assets not found at {ASSETS}")
    return ASSETS


def tiny_world_setup():
    """(a 2-block random ViT for 32 x 32 world images with a 4 x 4 patch grid, 4 world eval images,
    a DDS whose denoiser predicts zero noise): the benchmark entries' small test world."""
    from fvit.data import open_dataset
    from fvit.dds import DDS
    from fvit.denoise import FunctionDenoiser, linear_schedule
    from fvit.models import tiny_vit

    torch.set_num_threads(1)
    model = tiny_vit(num_classes=8, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    data = open_dataset("world:eval,4", 32)
    dds = DDS(FunctionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(1000)), sigma=8 / 255, samples=2)
    return model, data, dds
