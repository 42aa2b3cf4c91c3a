"""The strong explanation adversary (fvit.attacks.explanation): the rank-aware soft top-k
objective, the attacker's hard top-k score, APGD's step schedule, random restarts, the suite that
keeps per image the worst kept map, and per-image seeding."""

import pytest
import torch

from fvit.attacks.explanation import (
    apgd_checkpoints,
    combine_worst,
    get_explanation_attack,
    hard_topk_overlap,
    soft_topk_overlap,
)
from fvit.errors import FvitError
from fvit.explain import get_method
from fvit.metrics import topk_overlap
from fvit.models import tiny_vit

K = 4
EPS = 8 / 255


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, seed=0).eval()


def _images(b=5, seed=0):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_hard_overlap_is_the_reported_metric_including_ties():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (64, 16), generator=g).float()  # many ties at the k-th value
    b = torch.randint(0, 4, (64, 16), generator=g).float()
    for k in (1, 3, 8):
        assert torch.equal(hard_topk_overlap(b, a, k), topk_overlap(a, b, k))


def test_soft_topk_by_hand():
    clean = torch.tensor([[9.0, 8.0, 1.0, 0.0]])  # clean top-2 = {0, 1}
    # attacked map keeps entry 0 far above the top-2 boundary and entry 1 far below it
    maps = torch.tensor([[10.0, -10.0, 0.0, 1.0]])
    # z = standardised maps; tau = midpoint of the 2nd and 3rd largest z (z of 1.0 and 0.0)
    z = (maps - maps.mean()) / maps.std()
    tau = (z[0, 3] + z[0, 2]) / 2
    expected = (torch.sigmoid((z[0, 0] - tau) / 0.1) + torch.sigmoid((z[0, 1] - tau) / 0.1)) / 2
    assert float(soft_topk_overlap(maps, clean, 2)) == pytest.approx(float(expected), abs=1e-6)
    assert float(soft_topk_overlap(maps, clean, 2)) == pytest.approx(0.5, abs=1e-3)  # = the hard overlap
    assert float(hard_topk_overlap(maps, clean, 2)) == 0.5
    # invariant to shifting and positive scaling of the attacked map
    assert float(soft_topk_overlap(3 * maps + 2, clean, 2)) == pytest.approx(float(expected), abs=1e-5)


def test_apgd_checkpoints_are_croce_and_heins():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2) for 100 iterations
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("name", ["raw_attention", "gradcam"])
def test_apgd_and_restarts_never_worse_than_the_start(model, name):
    """The returned map is the best kept iterate by the attacker's own score, and with the exact
    map of a deterministic method that score is the overlap a user measures afterwards."""
    x = _images()
    method = get_method(name)
    clean = method(model, x)
    res = get_explanation_attack("topk", EPS, steps=6, k=K, schedule="apgd", restarts=1).run(
        method, model, x, target=clean.target, clean_maps=clean.patch)
    measured = topk_overlap(clean.patch, method(model, res.adv, target=clean.target).patch, K)
    assert torch.allclose(res.score, measured)
    assert bool(res.kept.all()) and res.evaluations == 2 * 7
    assert bool((measured <= 1).all()) and float(measured.mean()) < 1.0
    assert float((res.adv - x).abs().max()) <= EPS + 1e-6


def test_suite_keeps_per_image_the_worst_kept_part(model):
    x = _images(6)
    method = get_method("raw_attention")
    clean = method(model, x)
    suite = get_explanation_attack("suite", EPS, steps=4, k=K)
    res = suite.run(method, model, x, target=clean.target, clean_maps=clean.patch)
    assert list(res.parts) == ["topk", "soft-topk", "target-map"]
    parts = torch.stack([p.score for p in res.parts.values()])
    assert torch.equal(res.score, parts.min(dim=0).values)
    for i, c in enumerate(res.chosen.tolist()):
        assert torch.equal(res.adv[i], list(res.parts.values())[c].adv[i])
    # an image whose best part did not keep the prediction is not taken from that part
    parts_list = list(res.parts.values())
    fake = {n: p for n, p in res.parts.items()}
    first = parts_list[0]
    first.kept[:] = False
    first.score[:] = -1.0  # rated best, but it changed the class
    combined = combine_worst(fake)
    assert bool((combined.chosen != 0).all())


def test_suite_refuses_repeated_objectives():
    with pytest.raises(FvitError, match="repeat"):
        get_explanation_attack("suite", EPS, objectives=("topk", "top-k"))


def test_per_image_keys_make_random_starts_batch_independent(model):
    x = _images(4)
    method = get_method("rollout")
    keys = ["a", "b", "c", "d"]
    atk = get_explanation_attack("soft-topk", EPS, steps=3, k=K, random_start=True, restarts=1)
    batch = atk.run(method, model, x, keys=keys).adv
    alone = torch.cat([atk.run(method, model, x[i:i + 1], keys=[keys[i]]).adv for i in (2, 0)])
    assert torch.allclose(batch[[2, 0]], alone, atol=1e-6)
    other = atk.run(method, model, x, keys=["a", "b", "c", "e"]).adv
    assert torch.allclose(other[:3], batch[:3], atol=1e-6) and not torch.allclose(other[3], batch[3])


def test_warm_start_is_projected_and_x_as_start_changes_nothing(model):
    x = _images(3)
    method = get_method("raw_attention")
    atk = get_explanation_attack("soft-topk", EPS, steps=2, k=K, schedule="constant")
    plain = atk.run(method, model, x)
    same = atk.run(method, model, x, start=x.clone())
    assert torch.equal(plain.adv, same.adv)
    far = (x + 0.5).clamp(0, 1)  # far outside the ball: the start is projected into it
    warm = atk.run(method, model, x, start=far)
    assert float((warm.adv - x).abs().max()) <= EPS + 1e-6
