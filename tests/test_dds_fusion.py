"""Fusion of per-sample maps on small hand-made maps with hand-computed answers."""

import pytest
import torch

from fvit.dds import fuse
from fvit.errors import FvitError


def test_max_drop10_hand_computed():
    # one image, two samples, 10 values each: floor(0.1*10) = 1 lowest value is zeroed per map
    a = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    b = torch.tensor([2.0, 9.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 12.0])
    maps = torch.stack([a, b])[None].view(1, 2, 2, 5)
    # drop: a -> value 1.0 (index 1) zeroed; b -> 0.5 (index 2) zeroed
    # max: [5, 9, 2, 3, 4, 6, 7, 8, 9, 12]; min-max with min 2, max 12
    expect = (torch.tensor([5.0, 9, 2, 3, 4, 6, 7, 8, 9, 12]) - 2) / 10
    assert torch.allclose(fuse(maps, "max-drop10"), expect.view(1, 2, 5))


def test_max_drop10_two_images_and_small_maps():
    # 4 values: floor(0.4) = 0 values dropped -> plain max then min-max, per image
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]],
                         [[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = fuse(maps, "max-drop10")
    assert torch.allclose(out[0], torch.tensor([[1.0, 0.0], [0.5, 1.0]]))  # max [4,2,3,4] -> min-max
    assert torch.equal(out[1], torch.zeros(2, 2))  # constant map -> zeros


def test_mean_fusion_is_plain_mean():
    maps = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])  # (B=1, m=2, 2)
    assert torch.equal(fuse(maps, "mean"), torch.tensor([[2.0, 4.0]]))


def test_fusion_errors():
    with pytest.raises(FvitError):
        fuse(torch.rand(4, 4), "mean")
    with pytest.raises(FvitError):
        fuse(torch.rand(1, 2, 4), "median")


def test_dds_presets_set_only_their_fields():
    from fvit.dds import DDSConfig, dds_preset
    from fvit.errors import FvitError

    mine = DDSConfig(samples=7, denoise="ddim:5", seed=3)
    robust = dds_preset("robust")
    config = mine.replace(**robust.fields)
    assert (config.sigma, robust.fuse) == (0.25, "mean")
    assert (config.samples, config.denoise, config.seed) == (7, "ddim:5", 3)  # the user's settings stay
    assert mine.replace(**dds_preset("paper").fields).sigma == 8 / 255 and dds_preset("paper").fuse == "max-drop10"
    import pytest

    with pytest.raises(FvitError, match="DDS preset"):
        dds_preset("strongest")
