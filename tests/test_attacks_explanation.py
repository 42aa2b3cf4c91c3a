"""Explanation attacks (fvit.attacks.explanation): they work, respect the budget, keep the
prediction, are seeded and per-image, and run adaptively through DDS."""

import math

import pytest
import torch

from fvit.attacks import ExplanationAttack, get_explanation_attack
from fvit.attacks.explanation import map_distribution, target_map_distance, topk_share
from fvit.errors import FvitError, InputError
from fvit.explain import get_method
from fvit.metrics import rank_correlation, topk_overlap
from fvit.models import tiny_vit

K = 4
EPS = 8 / 255


@pytest.fixture(scope="module")
def model():
    return tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, seed=0).eval()


def _images(b=6, seed=0, dtype=torch.float32):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _sign_noise(x, eps, seed=1):
    s = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)).to(x.dtype) * 2 - 1
    return (x + eps * s).clamp(0, 1)


def test_objectives_by_hand():
    maps = torch.tensor([[0.0, 1.0, 3.0, 0.5]])
    clean = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    # mass = maps - 0 = [0, 1, 3, .5], total 4.5; clean top-2 = entries 0, 1 -> (0 + 1) / 4.5
    assert float(topk_share(maps, clean, 2)) == pytest.approx(1 / 4.5)
    # shift / positive scale invariance
    assert float(topk_share(3 * maps + 7, clean, 2)) == pytest.approx(1 / 4.5)
    p = map_distribution(maps)
    assert torch.allclose(p, torch.tensor([[0, 1, 3, 0.5]]) / 4.5)
    target = torch.tensor([[1.0, 1.0, 2.0, 1.0]])  # p_t = [0, 0, 1, 0]
    expected = 4 * ((0 - 0) ** 2 + (1 / 4.5) ** 2 + (3 / 4.5 - 1) ** 2 + (0.5 / 4.5) ** 2)
    assert float(target_map_distance(maps, target, 2)) == pytest.approx(expected)
    assert float(target_map_distance(target, target, 2)) == 0


@pytest.mark.parametrize("name", ["raw_attention", "rollout", "gradcam", "lrp", "transformer_attribution",
                                  "attribution_rollout"])
def test_topk_attack_beats_random_noise_of_the_same_norm(model, name):
    x = _images()
    method = get_method(name)
    clean = method(model, x)
    result = get_explanation_attack("topk", EPS, steps=8, k=K).run(method, model, x)
    attacked = method(model, result.adv)
    noisy = method(model, _sign_noise(x, EPS))
    ov_attack = topk_overlap(clean.patch, attacked.patch, K, ties="stable").mean()
    ov_noise = topk_overlap(clean.patch, noisy.patch, K, ties="stable").mean()
    assert float(ov_attack) < float(ov_noise) - 0.15
    # the surrogate went down, on every image (best-kept never returns a worse iterate than the clean one)
    assert bool((result.objective <= result.clean_objective + 1e-6).all())
    assert float(result.objective.mean()) < float(result.clean_objective.mean()) - 0.02
    # the prediction is kept (select='best-kept' on a plain model)
    assert torch.equal(attacked.prediction, clean.prediction) and bool(result.kept.all())


@pytest.mark.parametrize("norm, eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_budget_respected(model, norm, eps):
    x = _images(4)
    x[0, :, :4, :4] = 1.0  # pixels at the box edges
    x[1, :, :4, :4] = 0.0
    adv = get_explanation_attack("topk", eps, norm=norm, steps=4, k=K, step_size=eps, select="last",
                                 random_start=True)(get_method("rollout"), model, x)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5)).all())
    assert bool((size >= 0.5 * eps).all())  # step = eps, so it uses its budget


@pytest.mark.parametrize("name", ["raw_attention", "transformer_attribution"])
def test_batch_equals_single_images(model, name):
    m64 = tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, seed=0).double()
    x = _images(3, seed=5, dtype=torch.float64)
    attack = get_explanation_attack("topk", EPS, steps=4, k=K, seed=3)
    method = get_method(name)
    batch = attack(method, m64, x)
    single = torch.cat([attack(method, m64, x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-12)
    assert torch.equal(attack(method, m64, x), batch)  # seeded: the same again
    assert not torch.equal(batch, x)


def test_prediction_keeping_constraint(model):
    """Without the constraint a large-radius explanation attack changes predictions; with it, none."""
    x = _images(8, seed=2)
    method = get_method("gradcam")
    clean_pred = method(model, x).prediction
    free = get_explanation_attack("topk", 64 / 255, steps=8, k=K, keep_weight=0.0, select="last")
    kept = get_explanation_attack("topk", 64 / 255, steps=8, k=K)
    changed_free = (method(model, free(method, model, x)).prediction != clean_pred).float().mean()
    changed_kept = (method(model, kept(method, model, x)).prediction != clean_pred).float().mean()
    assert float(changed_free) > 0
    assert float(changed_kept) == 0


def test_target_map_attack_moves_the_map_towards_the_target(model):
    x = _images(6, seed=4)
    method = get_method("raw_attention")
    clean = method(model, x)
    target = clean.patch.roll(shifts=(2, 2), dims=(-2, -1))
    attack = get_explanation_attack("target-map", EPS, steps=8, k=K)
    adv = attack(method, model, x, target_maps=target)
    d_attack = target_map_distance(method(model, adv).patch.flatten(1), target.flatten(1), K)
    d_noise = target_map_distance(method(model, _sign_noise(x, EPS)).patch.flatten(1), target.flatten(1), K)
    d_clean = target_map_distance(clean.patch.flatten(1), target.flatten(1), K)
    assert float(d_attack.mean()) < 0.8 * float(d_noise.mean())
    assert float(d_attack.mean()) < 0.8 * float(d_clean.mean())
    # the default target ('roll') is the same shift of the clean map on this 4x4 grid
    torch.testing.assert_close(attack(method, model, x), adv)


def test_adaptive_attack_through_dds(model):
    from fvit.dds import DDS, DDSExplainer
    from fvit.denoise import SmallDDPM, small_unet_config

    den = SmallDDPM(32, small_unet_config(32, width=8), seed=0).eval()
    dds = DDS(den, sigma=8 / 255, samples=2, seed=0)
    explainer = DDSExplainer("rollout", dds, fuse="mean")
    x = _images(3, seed=6)
    attack = get_explanation_attack("topk", EPS, steps=3, k=K, eot=2, seed=1)
    result = attack.run(explainer, model, x)
    assert result.draws == 2 and result.evaluations == 4
    assert float((result.adv - x).abs().max()) <= EPS + 1e-6
    assert not torch.equal(result.adv, x)
    # gradients reach the input through the denoiser: the EOT objective went down
    assert float(result.objective.nanmean()) < float(result.clean_objective.mean())
    again = attack.run(explainer, model, x)
    assert torch.equal(again.adv, result.adv)  # seeded DDS noise


def test_bad_options(model):
    x = _images(2)
    with pytest.raises(FvitError, match="k=99"):
        get_explanation_attack("topk", EPS, k=99)(get_method("rollout"), model, x)
    with pytest.raises(FvitError, match="unknown explanation attack 'nope'"):
        get_explanation_attack("nope", EPS)
    with pytest.raises(FvitError, match="objective 'nope'"):
        ExplanationAttack(objective="nope")
    with pytest.raises(FvitError, match="eot"):
        get_explanation_attack("topk", EPS, eot=0)
    with pytest.raises(FvitError, match="eps"):
        get_explanation_attack("topk", -1.0)
    with pytest.raises(InputError, match="clean_maps"):
        get_explanation_attack("topk", EPS)(get_method("rollout"), model, x, target=0,
                                            clean_maps=torch.zeros(3, 4, 4))


def test_rank_correlation_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 30), generator=g).float()  # many ties
    b = torch.rand(4, 30, generator=g)
    b[:, :10] = 0.0
    rho = rank_correlation(a, b)
    for i in range(4):
        assert float(rho[i]) == pytest.approx(stats.spearmanr(a[i].numpy(), b[i].numpy())[0], abs=1e-12)
    assert torch.allclose(rank_correlation(a, a), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(rank_correlation(a, -a), -torch.ones(4, dtype=torch.float64))
    assert math.isnan(float(rank_correlation(torch.ones(1, 5), torch.rand(1, 5))[0]))
