"""Radii of the faithful region against independent numerical solutions and hand-checked cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import brute, differential_evolution, minimize

from fvit.certify import (
    convert_radius,
    faithful_region,
    hu_topk_divergence,
    is_certified,
    prediction_divergence,
    prediction_radius,
    prediction_robust,
    swap_divergence,
    topk_k0,
    topk_radius,
    topk_swap_positions,
)
from fvit.certify.radius import topk_parts
from fvit.certify.renyi import log_power_mean
from fvit.errors import FvitError

PAIRS = [(0.7, 0.2), (0.9, 0.05), (0.55, 0.44), (0.999, 0.0005), (0.4, 0.35), (0.6, 0.4), (0.3, 0.01)]
REL = 1e-6


def naive_prediction_divergence(p1, p2, a):
    """The printed formula, evaluated directly (fine for moderate alpha and probabilities)."""
    return -math.log(1 - p1 - p2 + 2 * ((p1 ** (1 - a) + p2 ** (1 - a)) / 2) ** (1 / (1 - a)))


def naive_topk_divergence(w_sorted, start, stop, a):
    s = w_sorted[start:stop]
    rest = w_sorted[:start].sum() + w_sorted[stop:].sum()
    n = len(s)
    return -math.log(n * (np.mean(s ** (1 - a))) ** (1 / (1 - a)) + rest)


mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 40


def mp_swap_divergence(inside, outside, a):
    """(*) in 40-digit arithmetic straight from the printed formula (independent of the library)."""
    a = mpmath.mpf(a)
    s = [mpmath.mpf(float(v)) for v in inside]
    n = len(s)
    mean = sum(v ** (1 - a) if v > 0 else mpmath.inf for v in s) / n
    power_mean = mean ** (1 / (1 - a)) if mean != mpmath.inf else mpmath.mpf(0)
    return float(-mpmath.log(mpmath.mpf(float(outside)) + n * power_mean))


def mp_hu_divergence(inside, outside, a):
    a = mpmath.mpf(a)
    s = [mpmath.mpf(float(v)) for v in inside]
    n = len(s)
    norm = sum(v ** a for v in s) ** (1 / a)
    return float(a / (a - 1) * mpmath.log(n * norm + mpmath.mpf(n) ** (1 / a) * mpmath.mpf(float(outside)))
                 - mpmath.log(n) / (a - 1))


def global_sup(objective, lo=-12.0, hi=12.0):
    """sup over t = log(alpha - 1) by scipy's differential evolution polished by L-BFGS-B."""
    res = differential_evolution(lambda t: -objective(1 + math.exp(t[0])), [(lo, hi)], tol=1e-12,
                                 seed=0, polish=True, maxiter=300)
    return -res.fun


def brute_sup(objective, lo=-12.0, hi=12.0, ns=4001):
    """Dense brute-force grid in log(alpha - 1), then Nelder-Mead polish (scipy.optimize.brute)."""
    res = brute(lambda t: -objective(1 + math.exp(min(max(t[0], lo), hi))), [(lo, hi)], Ns=ns,
                full_output=True)
    return -res[1]


# ---- divergences ---------------------------------------------------------------------------------

@pytest.mark.parametrize("p1,p2", PAIRS)
@pytest.mark.parametrize("alpha", [1.001, 1.5, 2.0, 7.0, 40.0])
def test_prediction_divergence_matches_printed_formula(p1, p2, alpha):
    assert prediction_divergence(p1, p2, alpha) == pytest.approx(naive_prediction_divergence(p1, p2, alpha),
                                                                rel=1e-9, abs=1e-13)


def test_prediction_divergence_limits_are_closed_forms():
    p1, p2 = 0.7, 0.2
    # alpha -> 1+: power mean -> geometric mean: -log(1 - (sqrt p1 - sqrt p2)^2)
    d1 = -math.log(1 - (math.sqrt(p1) - math.sqrt(p2)) ** 2)
    assert prediction_divergence(p1, p2, 1.0) == pytest.approx(d1, rel=1e-14)
    assert prediction_divergence(p1, p2, 1 + 1e-9) == pytest.approx(d1, rel=1e-7)
    # alpha -> inf: power mean -> min: -log(1 - p1 + p2)
    dinf = -math.log(1 - p1 + p2)
    assert prediction_divergence(p1, p2, np.inf) == pytest.approx(dinf, rel=1e-14)
    assert prediction_divergence(p1, p2, 1e7) == pytest.approx(dinf, rel=1e-5)


def test_divergence_is_stable_at_extremes():
    alphas = np.array([1.0, 1 + 1e-12, 2.0, 1e3, 1e8, np.inf])
    for p1, p2 in [(1 - 1e-15, 1e-300), (0.5 + 1e-12, 0.5 - 1e-12), (1e-3, 1e-300), (0.9, 0.0)]:
        d = prediction_divergence(p1, p2, alphas)
        assert np.all(np.isfinite(d)) and np.all(d >= 0)
        assert np.all(np.diff(d) >= -1e-12)  # D_alpha non-decreasing in alpha
    assert np.all(np.isinf(prediction_divergence(1.0, 0.0, alphas)))
    # nearly equal pair: tiny divergence computed without cancellation, ~ (p1 - p2)^2 / 2 per unit alpha
    eps = 1e-6
    d = prediction_divergence(0.5 + eps, 0.5 - eps, 1.0)
    assert d == pytest.approx(-math.log1p(-(math.sqrt(0.5 + eps) - math.sqrt(0.5 - eps)) ** 2), rel=1e-6)


def test_log_power_mean_special_cases():
    y = np.array([0.2, 0.5, 0.9])
    assert log_power_mean(y, 0.0) == pytest.approx(np.mean(np.log(y)))
    assert log_power_mean(y, -np.inf) == pytest.approx(math.log(0.2))
    assert log_power_mean(y, -2.0) == pytest.approx(math.log(np.mean(y ** -2.0) ** (-1 / 2.0)))
    assert log_power_mean(np.array([0.0, 0.5]), -1.0) == -np.inf


def test_divergence_symmetric_in_the_two_probabilities():
    for p1, p2 in PAIRS:
        assert prediction_divergence(p1, p2, 3.0) == pytest.approx(prediction_divergence(p2, p1, 3.0), rel=1e-14)


def _min_divergence_to_violate(w, k, k0, alpha):
    """min_q D_alpha(q || w) over q whose top-k loses >= k0 of w's top-k (exhaustive over which
    k0 leave and which k0 enter; each subproblem convex with linear constraints, SLSQP)."""
    order = np.argsort(-w)
    best = np.inf
    for leave in itertools.combinations(order[:k], k0):
        for enter in itertools.combinations(order[k:], k0):
            cons = [{"type": "ineq", "fun": (lambda q, i=i, j=j: q[j] - q[i])} for i in leave for j in enter]
            cons.append({"type": "eq", "fun": lambda q: q.sum() - 1})
            res = minimize(lambda q: np.sum(np.clip(q, 1e-300, None) ** alpha * w ** (1 - alpha)), w.copy(),
                           constraints=cons, bounds=[(0, 1)] * len(w), method="SLSQP",
                           options={"ftol": 1e-15, "maxiter": 500})
            best = min(best, math.log(res.fun) / (alpha - 1))
    return best


@pytest.mark.parametrize("k,beta", [(1, 0.5), (2, 1.0), (3, 0.6), (3, 1.0)])
@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_corrected_topk_lemma_is_the_minimum_divergence_to_violate(k, beta, alpha):
    """[Re] Lemma B.2 (Liu et al. Thm 2) with S = sorted positions [k-k0, k+k0) is exactly the
    smallest Rényi divergence D_alpha(q || w) of a q that violates V_k >= beta (k=1: Li's lemma)."""
    w = np.array([0.3, 0.25, 0.15, 0.12, 0.1, 0.08])
    inside, outside, _ = topk_parts(w, k, beta)
    expected = _min_divergence_to_violate(w, k, topk_k0(k, beta), alpha)
    assert swap_divergence(inside[0], outside[0], alpha) == pytest.approx(expected, rel=1e-6)
    if k == 1:
        assert prediction_divergence(0.3, 0.25, alpha) == pytest.approx(expected, rel=1e-6)


def test_topk_divergence_matches_printed_formula():
    w = np.sort(np.random.default_rng(3).dirichlet(np.ones(30)))[::-1]
    start, stop = topk_swap_positions(10, 0.8)
    inside, outside = w[start:stop], w[:start].sum() + w[stop:].sum()
    for a in [1.01, 2.0, 9.0]:
        assert swap_divergence(inside, outside, a) == pytest.approx(naive_topk_divergence(w, start, stop, a), rel=1e-9)


def test_hu_original_divergence_formula_and_kl_limit():
    w = np.array([0.3, 0.2, 0.15, 0.1])
    out = 0.25
    n = len(w)
    for a in [1.5, 4.0]:
        s = np.sum(w ** a) ** (1 / a)
        printed = a / (a - 1) * math.log(n * s + n ** (1 / a) * out) - math.log(n) / (a - 1)
        assert hu_topk_divergence(w, out, a) == pytest.approx(printed, rel=1e-12)
    # alpha -> 1: a * KL(w_S / a || uniform on S), a = sum w_S
    total = w.sum()
    kl = total * np.sum((w / total) * np.log((w / total) * n))
    assert hu_topk_divergence(w, out, 1.0) == pytest.approx(kl, rel=1e-12)
    assert hu_topk_divergence(w, out, 1 + 1e-6) == pytest.approx(kl, rel=1e-5)


# ---- suprema over alpha ----------------------------------------------------------------------------

@pytest.mark.parametrize("p1,p2", PAIRS)
def test_prediction_radius_against_global_optimisers(p1, p2):
    sigma = 0.25
    r = prediction_radius(p1, p2, sigma)

    def objective(a):
        d = mp_swap_divergence([p1, p2], max(1 - p1 - p2, 0.0), a)
        return math.sqrt(max(2 * sigma ** 2 * d / a, 0.0))

    assert r == pytest.approx(global_sup(objective), rel=REL)
    assert r == pytest.approx(brute_sup(objective), rel=REL)
    assert r >= objective(1 + 1e-9) * (1 - 1e-12)


@pytest.mark.parametrize("variant", ["corrected", "original"])
def test_topk_radius_against_global_optimisers(variant):
    rng = np.random.default_rng(7)
    sigma = 0.5
    for w in [rng.dirichlet(np.ones(49) * 0.3), rng.dirichlet(np.ones(49) * 3.0)]:
        k, beta = 5, 0.8
        r = topk_radius(w, k, beta, sigma, variant=variant)
        inside, outside, _ = topk_parts(w, k, beta)
        fn = mp_swap_divergence if variant == "corrected" else mp_hu_divergence

        def objective(a):
            return math.sqrt(max(2 * sigma ** 2 * fn(inside[0], outside[0], a) / a, 0.0))

        assert r == pytest.approx(global_sup(objective), rel=REL)
        assert r == pytest.approx(brute_sup(objective), rel=REL)


def test_p2_zero_closed_form():
    # D* = -log(1 - p1) for every alpha: the sup of sqrt(2 sigma^2 D / alpha) is at alpha -> 1
    for p1 in [0.3, 0.9, 0.999]:
        assert prediction_radius(p1, 0.0, 0.5) == pytest.approx(0.5 * math.sqrt(-2 * math.log(1 - p1)), rel=1e-12)
    assert prediction_radius(1.0, 0.0, 0.5) == np.inf


def test_radius_exactly_proportional_to_sigma():
    p1 = np.array([0.7, 0.9, 0.55])
    p2 = np.array([0.2, 0.05, 0.44])
    base = prediction_radius(p1, p2, 1.0)
    w = np.random.default_rng(0).dirichlet(np.ones(20), size=3)
    base_k = topk_radius(w, 4, 0.5, 1.0)
    for sigma in [8 / 255, 0.25, 1.7]:
        np.testing.assert_allclose(prediction_radius(p1, p2, sigma), sigma * base, rtol=1e-14)
        np.testing.assert_allclose(topk_radius(w, 4, 0.5, sigma), sigma * base_k, rtol=1e-14)


def test_prediction_radius_monotone():
    p1 = np.linspace(0.3, 0.99, 30)
    r = prediction_radius(p1, 0.01, 0.25)
    assert np.all(np.diff(r) > 0)  # grows with p1 for fixed p2
    p2 = np.linspace(0.0, 0.49, 30)
    r = prediction_radius(0.5, p2, 0.25)
    assert np.all(np.diff(r) < 0)  # shrinks as p2 grows for fixed p1


def test_prediction_radius_zero_without_separation_and_vectorised():
    assert prediction_radius(0.4, 0.4, 0.3) == 0.0
    assert prediction_radius(0.3, 0.4, 0.3) == 0.0
    p1 = np.array([[0.7, 0.9], [0.5, 0.6]])
    p2 = np.array([[0.2, 0.05], [0.5, 0.1]])
    batch = prediction_radius(p1, p2, 0.3)
    assert batch.shape == (2, 2)
    for idx in np.ndindex(2, 2):
        assert batch[idx] == pytest.approx(prediction_radius(p1[idx], p2[idx], 0.3), rel=1e-12)


def test_topk_radius_grows_with_k0_and_shrinks_as_w_flattens():
    w = np.random.default_rng(1).dirichlet(np.ones(50) * 0.5)
    betas = [1.0, 0.9, 0.8, 0.7, 0.5, 0.3]  # k0 = 1, 2, 3, 4, 6, 8 for k = 10
    assert [topk_k0(10, b) for b in betas] == [1, 2, 3, 4, 6, 8]
    radii = [topk_radius(w, 10, b, 0.5) for b in betas]
    assert np.all(np.diff(radii) > 0)  # more replacements needed to violate -> larger radius
    flat = np.ones(50) / 50
    radii = [topk_radius((1 - t) * w + t * flat, 10, 0.8, 0.5) for t in (0.0, 0.3, 0.6, 0.9)]
    assert np.all(np.diff(radii) < 0)
    assert topk_radius(flat, 10, 0.8, 0.5) == 0.0


def test_topk_radius_batch_normalisation_and_errors():
    w = np.random.default_rng(2).dirichlet(np.ones(16), size=3)
    batch = topk_radius(w * 7.0, 3, 0.7, 0.2, variant="renyi-re")  # as published: w is renormalised
    for i in range(3):
        assert batch[i] == pytest.approx(topk_radius(w[i], 3, 0.7, 0.2, variant="renyi-re"), rel=1e-12)
    exact = topk_radius(w * 0.5, 3, 0.7, 0.2)  # sound: half the mass on prefix tokens is kept as is
    for i in range(3):
        assert exact[i] == pytest.approx(topk_radius(w[i] * 0.5, 3, 0.7, 0.2), rel=1e-12)
        assert exact[i] < topk_radius(w[i], 3, 0.7, 0.2)  # movable prefix mass shrinks the radius
    with pytest.raises(FvitError, match="sub-probability"):
        topk_radius(w * 7.0, 3, 0.7, 0.2)
    assert topk_radius(w[0], 15, 0.5, 0.2) == np.inf  # k + k0 > T: top-k cannot be violated
    with pytest.raises(FvitError):
        topk_radius(np.array([0.5, -0.2, 0.7]), 1, 0.5, 0.2)
    with pytest.raises(FvitError):
        topk_radius(w[0], 16, 0.5, 0.2)
    with pytest.raises(FvitError):
        topk_radius(w[0], 3, 0.0, 0.2)
    with pytest.raises(FvitError):
        prediction_radius(0.7, 0.4, 0.2)
    with pytest.raises(FvitError):
        prediction_radius(0.7, 0.2, 0.0)


def test_k0_uses_exact_arithmetic():
    assert topk_k0(10, 0.8) == 3  # (1 - 0.8) * 10 = 1.9999999999999996 in floating point
    assert topk_k0(10, 1.0) == 1
    assert topk_k0(10, 0.75) == 3
    assert topk_k0(1, 0.5) == 1
    assert topk_swap_positions(10, 0.8) == (7, 13)  # 1-based sorted positions 8..13


# ---- strictness ([Re] B.1.1) and region ---------------------------------------------------------------

def test_counterexample_equality_does_not_certify():
    p1, p2, alpha = 0.7, 0.2, 2.5
    d = prediction_divergence(p1, p2, alpha)
    assert not prediction_robust(d, p1, p2, alpha)  # gamma == D*: Hu's "<=" would certify; [Re] does not
    assert prediction_robust(np.nextafter(d, 0), p1, p2, alpha)
    r, a = prediction_radius(p1, p2, 0.25, return_alpha=True)
    # at the supremum radius the Gaussian bound alpha R^2 / (2 sigma^2) equals D*: not certified
    assert a * r ** 2 / (2 * 0.25 ** 2) == pytest.approx(prediction_divergence(p1, p2, a), rel=1e-9)
    assert not is_certified(r, r)
    assert is_certified(np.nextafter(r, 0), r)


def test_faithful_region_is_min_and_linf_conversions():
    w = np.random.default_rng(4).dirichlet(np.ones(64) * 0.4)
    region = faithful_region(0.9, 0.05, w, 5, 0.8, 0.25)
    rp, rk = prediction_radius(0.9, 0.05, 0.25), topk_radius(w, 5, 0.8, 0.25)
    assert region.region == pytest.approx(min(rp, rk))
    d = 3 * 32 * 32
    paper = faithful_region(0.9, 0.05, w, 5, 0.8, 0.25, norm="linf", d=d, linf_conversion="paper")
    sound = faithful_region(0.9, 0.05, w, 5, 0.8, 0.25, norm="linf", d=d)  # the default, as CertifyConfig
    assert paper.region == pytest.approx(region.region / d)
    assert sound.region == pytest.approx(region.region / math.sqrt(d))
    assert convert_radius(2.0, "l2") == 2.0
    with pytest.raises(FvitError):
        convert_radius(1.0, "linf")
    with pytest.raises(FvitError):
        convert_radius(1.0, "l1", 3)


def test_supremum_at_alpha_one_is_the_closed_form_limit():
    # for (0.3, 0.01) D_alpha / alpha decreases from alpha = 1: R = sigma sqrt(-2 log(1 - (sqrt p1 - sqrt p2)^2))
    r, a = prediction_radius(0.3, 0.01, 0.5, return_alpha=True)
    assert a == 1.0
    assert r == pytest.approx(0.5 * math.sqrt(-2 * math.log(1 - (math.sqrt(0.3) - math.sqrt(0.01)) ** 2)), rel=1e-13)
    # for (0.7, 0.2) the supremum is interior (alpha > 1) and strictly above the alpha -> 1 value
    r, a = prediction_radius(0.7, 0.2, 0.5, return_alpha=True)
    assert a > 1.0 and r > 0.5 * math.sqrt(2 * prediction_divergence(0.7, 0.2, 1.0))
