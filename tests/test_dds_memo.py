"""The DDS denoise memo: identical results with and without it, generator left where a recomputation
leaves it, invalidation by input, generator state and in-place weight updates."""

import pytest
import torch

from fvit.dds import DDS, DDSExplainer
from fvit.dds.memo import DenoiseMemo
from fvit.denoise import SmallDDPM, small_unet_config
from fvit.errors import FvitError
from fvit.models import tiny_vit


def images(b=2, size=16, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def ddpm():
    m = SmallDDPM(16, small_unet_config(16, width=16), seed=0)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
    return m.eval()


def g(seed=3):
    return torch.Generator().manual_seed(seed)


def test_memo_gives_identical_samples_and_generator_state(ddpm):
    x = images()
    with_memo, without = DDS(ddpm, sigma=0.1, samples=3, memo=DenoiseMemo(2)), DDS(ddpm, sigma=0.1, samples=3)
    ga, gb = g(), g()
    # same generator state twice, then a different state: the sequence a recomputation produces
    first_a, first_b = with_memo.denoise(x, g()), without.denoise(x, g())
    again_a, again_b = with_memo.denoise(x, ga), without.denoise(x, gb)
    next_a, next_b = with_memo.denoise(x, ga), without.denoise(x, gb)
    assert torch.equal(first_a, first_b) and torch.equal(again_a, again_b) and torch.equal(next_a, next_b)
    assert torch.equal(first_a, again_a) and not torch.equal(again_a, next_a)
    assert torch.equal(ga.get_state(), gb.get_state())  # the hit advanced the generator as the run would
    assert with_memo.memo.hits == 1 and with_memo.memo.misses == 2
    assert without.memo is None  # no memo unless one is given: the memo is explicit


def test_memo_result_is_a_fresh_tensor(ddpm):
    dds = DDS(ddpm, sigma=0.1, samples=2, memo=DenoiseMemo(2))
    x = images()
    a = dds.denoise(x, g())
    a.zero_()  # a caller editing its result must not corrupt the stored copy
    b = dds.denoise(x, g())
    assert dds.memo.hits == 1 and float(b.abs().sum()) > 0
    assert not b.is_inference()


def test_memo_misses_on_other_images_and_on_in_place_input_edit(ddpm):
    dds = DDS(ddpm, sigma=0.1, samples=2, memo=DenoiseMemo(2))
    x = images()
    dds.denoise(x, g())
    dds.denoise(images(seed=1), g())
    x[0, 0, 0, 0] += 0.01  # same tensor object, other values
    dds.denoise(x, g())
    assert dds.memo.hits == 0 and dds.memo.misses == 3


def test_memo_invalidated_by_weight_update(ddpm):
    dds = DDS(ddpm, sigma=0.1, samples=2, memo=DenoiseMemo(2))
    x = images()
    before = dds.denoise(x, g())
    with torch.no_grad():
        for p in ddpm.parameters():
            p.mul_(1.5)
    after = dds.denoise(x, g())
    assert dds.memo.hits == 0 and not torch.equal(before, after)


def test_memo_capacity_and_byte_budget():
    memo = DenoiseMemo(capacity=2)
    calls = []

    def request(m, value, size=2):
        x = torch.full((1, 3, size, size), float(value))

        def compute():
            calls.append(value)
            return x[:, None].clone()

        return m.get_or_compute(x, g(), None, compute)

    for i in range(3):
        request(memo, i)
    assert len(memo) == 2 and calls == [0, 1, 2]
    request(memo, 2)  # kept: served from the memo
    request(memo, 0)  # evicted (oldest): computed again
    assert calls == [0, 1, 2, 0] and memo.hits == 1 and memo.misses == 4
    small = DenoiseMemo(capacity=4, max_bytes=100)
    out = request(small, 5, size=4)  # 2 x 192 bytes: over the budget, returned but not stored
    assert len(small) == 0 and float(out.mean()) == 5.0
    with pytest.raises(FvitError, match="memo"):
        DenoiseMemo(-1)


def test_methods_share_one_denoising_pass(ddpm):
    """Several DDS explainers on one batch with the runners' seeding denoise once."""
    model = tiny_vit(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    dds = DDS(ddpm, sigma=0.1, samples=2, memo=DenoiseMemo(2))
    x = images()
    maps = {}
    for name in ("rollout", "gradcam", "transformer_attribution"):
        maps[name] = DDSExplainer(name, dds)(model, x, generator=g()).pixel
    assert dds.memo.misses == 1 and dds.memo.hits == 2
    fresh = DDS(ddpm, sigma=0.1, samples=2)
    for name, m in maps.items():
        assert torch.allclose(DDSExplainer(name, fresh)(model, x, generator=g()).pixel, m)
