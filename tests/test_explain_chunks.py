"""CPU chunking of explanation methods: a batch explained in chunks equals the batch in one call."""

from __future__ import annotations

import pytest
import torch

import fvit.explain.base as base
from fvit.errors import InputError
from fvit.explain import RankTarget, available_methods, get_method

# the conftest tiny model: 17 tokens (16 patches + CLS), 4 heads, MLP hidden 128 (widest Linear),
# so the largest activation of one image is 17 x max(17 * 4, 128) float32 values
TINY_IMAGE_BYTES = 17 * 128 * 4


def test_chunk_size_from_the_largest_activation(tiny_model, monkeypatch):
    assert base.cpu_chunk(tiny_model) == base.CPU_CHUNK_BYTES // TINY_IMAGE_BYTES
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", 2 * TINY_IMAGE_BYTES + 1)
    assert base.cpu_chunk(tiny_model) == 2
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", 1)
    assert base.cpu_chunk(tiny_model) == 1  # never 0


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("target", [None, 3, "per-image", "second-best"])
def test_chunked_call_equals_one_call(tiny_model, monkeypatch, method, target):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    if target == "per-image":
        target = torch.tensor([4, 0, 9, 2, 7])
    elif target == "second-best":
        target = RankTarget(1)
    m = get_method(method)
    whole = m(tiny_model, images, target)
    calls = []
    compute = m.compute
    monkeypatch.setattr(m, "compute", lambda *a: calls.append(a[1].shape[0]) or compute(*a))
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", 2 * TINY_IMAGE_BYTES)
    parts = m(tiny_model, images, target)
    assert calls == [2, 2, 1]
    assert torch.equal(parts.target, whole.target)
    if isinstance(target, int):
        assert parts.target.tolist() == [3] * 5
    elif torch.is_tensor(target):
        assert parts.target.tolist() == [4, 0, 9, 2, 7]
    for a, b in [(parts.patch, whole.patch), (parts.pixel, whole.pixel), (parts.logits, whole.logits)]:
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    assert not torch.allclose(parts.logits[0], parts.logits[2])  # rows differ, so the order is checked


def test_chunked_call_refuses_a_target_of_the_wrong_length(tiny_model, monkeypatch):
    monkeypatch.setattr(base, "CPU_CHUNK_BYTES", 2 * TINY_IMAGE_BYTES)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with pytest.raises(InputError, match="target has 4 entries for a batch of 5 images"):
        get_method("rollout")(tiny_model, images, [0, 1, 2, 3])
