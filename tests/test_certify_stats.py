"""Clopper-Pearson bounds and the sampling protocols of the certificate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from fvit.certify import (
    bound_top_two,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    hoeffding_halfwidth,
)
from fvit.errors import FvitError


@pytest.mark.parametrize("x,n", [(0, 10), (1, 10), (37, 100), (99, 100), (100, 100), (500, 1000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_scipy_binomtest(x, n, alpha):
    lo, hi = clopper_pearson_interval(x, n, alpha)
    ci = binomtest(x, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    assert lo == pytest.approx(ci.low, abs=1e-12)
    assert hi == pytest.approx(ci.high, abs=1e-12)
    one_sided = binomtest(x, n, alternative="greater").proportion_ci(confidence_level=1 - alpha, method="exact")
    assert clopper_pearson_lower(x, n, alpha) == pytest.approx(one_sided.low, abs=1e-12)
    upper = binomtest(x, n, alternative="less").proportion_ci(confidence_level=1 - alpha, method="exact")
    assert clopper_pearson_upper(x, n, alpha) == pytest.approx(upper.high, abs=1e-12)


def test_clopper_pearson_closed_forms_and_vectorised():
    for n in (1, 10, 1000):
        assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-12)
        assert clopper_pearson_upper(0, n, 0.001) == pytest.approx(1 - 0.001 ** (1 / n), rel=1e-12)
    assert clopper_pearson_lower(0, 5, 0.1) == 0.0 and clopper_pearson_upper(5, 5, 0.1) == 1.0
    lo = clopper_pearson_lower(np.array([1, 5, 9]), 10, 0.05)
    assert lo.shape == (3,) and np.all(np.diff(lo) > 0)
    with pytest.raises(FvitError):
        clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(FvitError):
        clopper_pearson_lower(1, 10, 1.5)


def test_two_stage_cohen_protocol():
    est = np.array([[90, 10, 0], [50, 50, 0], [100, 0, 0]])
    sel = np.array([[10, 0, 0], [5, 5, 0], [0, 10, 0]])  # third: selection picks class 1 (wrong)
    b = bound_top_two(est, sel, alpha=0.001)
    assert b.top_class.tolist() == [0, 0, 1]
    np.testing.assert_allclose(b.p2_upper, 1 - b.p1_lower)
    assert b.p1_lower[0] == pytest.approx(clopper_pearson_lower(90, 100, 0.001))
    assert b.abstain.tolist() == [False, True, True]
    assert b.reason[0] is None and "pA_lower" in b.reason[1]
    np.testing.assert_allclose(b.p1_raw, [0.9, 0.5, 1.0])
    np.testing.assert_allclose(b.p2_raw, [0.1, 0.5, 0.0])
    with pytest.raises(FvitError):
        bound_top_two(est, None, alpha=0.001)


def test_one_stage_and_bonferroni_protocols_are_more_conservative():
    est = np.array([[90, 8, 2]])
    cohen = bound_top_two(est, est, alpha=0.01)
    bonf = bound_top_two(est, est, alpha=0.01, protocol="two_stage_bonferroni")
    one = bound_top_two(est, alpha=0.01, protocol="one_stage")
    assert one.p1_lower[0] == pytest.approx(clopper_pearson_lower(90, 100, 0.01 / 6))
    assert one.p1_lower[0] < bonf.p1_lower[0] < cohen.p1_lower[0]
    # a separate bound on the runner-up is tighter than 1 - pA_lower when the rest is spread out
    assert bonf.p2_upper[0] < 1 - bonf.p1_lower[0]
    for b in (cohen, bonf, one):
        assert b.p2_upper[0] <= 1 - b.p1_lower[0] + 1e-15
        assert not b.abstain[0]


def test_one_stage_bounds_cover_jointly():
    """Monte Carlo: P(p_(1) < pA_lower or p_(2) > pB_upper) <= alpha for the simultaneous bounds."""
    rng = np.random.default_rng(0)
    p = np.array([0.45, 0.4, 0.15])
    counts = rng.multinomial(60, p, size=4000)
    b = bound_top_two(counts, alpha=0.1, protocol="one_stage")
    failures = (b.p1_lower > p[0]) | (b.p2_upper < p[1])
    assert failures.mean() <= 0.1


def test_hoeffding_halfwidth():
    assert hoeffding_halfwidth(100, 196, 0.001) == pytest.approx(np.sqrt(np.log(2 * 196 / 0.001) / 200))
    assert hoeffding_halfwidth(400, 196, 0.001) == pytest.approx(hoeffding_halfwidth(100, 196, 0.001) / 2)
