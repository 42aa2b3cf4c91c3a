"""Honest statistics for the certificate: Clopper-Pearson bounds and the sampling protocols.

Algorithm 2 plugs raw Monte-Carlo frequencies p_j = #{c_i = j} / m into the radius; that radius is
an estimate, not a certificate. A certificate needs p_(1) bounded from below and p_(2) from above,
jointly with probability >= 1 - alpha_conf over the sampling noise. Protocols (by name):

* ``two_stage`` (default; Cohen et al. 2019 CERTIFY): the top class A is chosen on n0 selection
  samples; on n independent estimation samples p_A >= pA_lower (one-sided Clopper-Pearson at level
  alpha_conf) and p_(2) <= 1 - pA_lower. Abstain unless pA_lower > 1/2 (<=> pA_lower > pB_upper).
* ``two_stage_bonferroni``: A chosen as above; on the estimation samples pA_lower at alpha_conf/2 and
  pB_upper = min(1 - pA_lower, max_{c != A} upper_c) with one-sided upper bounds at
  alpha_conf / (2 (C - 1)) (Bonferroni over the other classes). Abstain unless pA_lower > pB_upper.
  (If A is not the true top class, pA_lower > pB_upper cannot hold on the good event, so this
  bounds p_(2) whenever it certifies.)
* ``one_stage``: one set of n samples both selects and estimates. Selection on the same samples
  invalidates a single-class bound, so every class gets a lower and an upper one-sided bound at
  alpha_conf / (2C) (Bonferroni over 2C events, simultaneous); pA_lower, pB_upper as above.

Clopper-Pearson (exact) bounds use scipy.stats.beta:
lower(x, n; a) = Beta.ppf(a; x, n - x + 1) (0 if x = 0), upper(x, n; a) = Beta.ppf(1 - a; x + 1, n - x)
(1 if x = n). A class seen in all n samples gives pA_lower = a^(1/n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import beta as beta_dist

from fvit.errors import FvitError
from fvit.registry import Registry


def clopper_pearson_lower(successes, trials, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion."""
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    _check_counts(x, n, alpha)
    with np.errstate(invalid="ignore"):
        out = beta_dist.ppf(alpha, x, n - x + 1)
    return np.where(x > 0, out, 0.0)


def clopper_pearson_upper(successes, trials, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a binomial proportion."""
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    _check_counts(x, n, alpha)
    with np.errstate(invalid="ignore"):
        out = beta_dist.ppf(1.0 - alpha, x + 1, n - x)
    return np.where(x < n, out, 1.0)


def clopper_pearson_interval(successes, trials, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided (1 - alpha) exact interval (alpha/2 on each side)."""
    return (clopper_pearson_lower(successes, trials, alpha / 2),
            clopper_pearson_upper(successes, trials, alpha / 2))


def _check_counts(x: np.ndarray, n: np.ndarray, alpha: float) -> None:
    if not 0 < alpha < 1:
        raise FvitError(f"confidence alpha must be in (0, 1), got {alpha}")
    if np.isnan(x).any() or np.isnan(n).any() or np.any(n < 1) or np.any(x < 0) or np.any(x > n):
        raise FvitError("binomial counts must satisfy 0 <= successes <= trials, trials >= 1 (no NaN)")


def hoeffding_halfwidth(samples: int, coordinates: int, alpha: float, value_range: float = 1.0) -> float:
    """Half-width eps such that every coordinate of a mean of ``samples`` i.i.d. vectors with entries
    in an interval of length ``value_range`` is within eps of its expectation, simultaneously over
    ``coordinates`` coordinates, with probability >= 1 - alpha (two-sided Hoeffding + union bound):
    eps = value_range sqrt(log(2 T / alpha) / (2 m))."""
    if samples < 1 or coordinates < 1:
        raise FvitError("hoeffding_halfwidth needs samples >= 1 and coordinates >= 1")
    return value_range * math.sqrt(math.log(2 * coordinates / alpha) / (2 * samples))


@dataclass(frozen=True)
class TopTwoBounds:
    """Per-image result of a protocol (arrays of shape (B,))."""

    top_class: np.ndarray   # A (int)
    p1_raw: np.ndarray      # largest estimation frequency
    p2_raw: np.ndarray      # second largest estimation frequency
    p1_lower: np.ndarray    # lower confidence bound of p_A (<= p_(1))
    p2_upper: np.ndarray    # upper confidence bound of p_(2)
    abstain: np.ndarray     # bool: bounds do not separate
    reason: list            # str or None per image


def _raw_top_two(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = counts.sum(axis=1).astype(np.float64)
    ordered = -np.sort(-counts, axis=1)
    second = ordered[:, 1] if counts.shape[1] > 1 else np.zeros(len(counts))
    return ordered[:, 0] / n, second / n


def _max_other_upper(counts: np.ndarray, top: np.ndarray, alpha_each: float) -> np.ndarray:
    n = counts.sum(axis=1, keepdims=True)
    upper = clopper_pearson_upper(counts, np.broadcast_to(n, counts.shape), alpha_each)
    upper[np.arange(len(top)), top] = -np.inf
    return upper.max(axis=1)


def _two_stage(selection, estimation, alpha):
    top = np.argmax(selection, axis=1)
    n = estimation.sum(axis=1)
    p1_lower = clopper_pearson_lower(estimation[np.arange(len(top)), top], n, alpha)
    return top, p1_lower, 1.0 - p1_lower, "pA_lower <= 1/2"


def _two_stage_bonferroni(selection, estimation, alpha):
    top = np.argmax(selection, axis=1)
    n = estimation.sum(axis=1)
    n_classes = estimation.shape[1]
    p1_lower = clopper_pearson_lower(estimation[np.arange(len(top)), top], n, alpha / 2)
    other = _max_other_upper(estimation, top, alpha / (2 * max(n_classes - 1, 1)))
    return top, p1_lower, np.minimum(other, 1.0 - p1_lower), "pA_lower <= pB_upper"


def _one_stage(selection, estimation, alpha):
    top = np.argmax(estimation, axis=1)
    n = estimation.sum(axis=1)
    each = alpha / (2 * estimation.shape[1])
    p1_lower = clopper_pearson_lower(estimation[np.arange(len(top)), top], n, each)
    other = _max_other_upper(estimation, top, each)
    return top, p1_lower, np.minimum(other, 1.0 - p1_lower), "pA_lower <= pB_upper"


PROTOCOLS: Registry[Callable] = Registry("certification protocol")
PROTOCOLS.register("two_stage", _two_stage, aliases=("cohen", "two-stage"))
PROTOCOLS.register("two_stage_bonferroni", _two_stage_bonferroni)
PROTOCOLS.register("one_stage", _one_stage, aliases=("bonferroni", "one-stage"))


def protocol_uses_selection(protocol: str) -> bool:
    """Whether ``protocol`` needs separate selection samples (n0)."""
    return PROTOCOLS.resolve(protocol) != "one_stage"


def bound_top_two(estimation_counts, selection_counts=None, *, alpha: float,
                  protocol: str = "two_stage") -> TopTwoBounds:
    """Apply a protocol to class counts (B, C): returns bounds, raw frequencies and abstentions.

    ``selection_counts`` (B, C) are required by the two-stage protocols (independent samples).
    """
    estimation = np.atleast_2d(np.asarray(estimation_counts)).astype(np.int64)
    name = PROTOCOLS.resolve(protocol)
    if protocol_uses_selection(name):
        if selection_counts is None:
            raise FvitError(f"protocol {name!r} needs selection counts (n0 >= 1 samples)")
        selection = np.atleast_2d(np.asarray(selection_counts)).astype(np.int64)
        if selection.shape != estimation.shape:
            raise FvitError(f"selection counts {selection.shape} and estimation counts "
                            f"{estimation.shape} differ in shape")
    else:
        selection = estimation
    if np.any(estimation.sum(axis=1) < 1):
        raise FvitError("every image needs at least one estimation sample")
    top, p1_lower, p2_upper, why = PROTOCOLS.get(name)(selection, estimation, alpha)
    p2_upper = np.clip(p2_upper, 0.0, 1.0)
    abstain = p1_lower <= p2_upper
    p1_raw, p2_raw = _raw_top_two(estimation)
    reasons = [f"{why} ({lo:.4f} <= {hi:.4f})" if a else None
               for a, lo, hi in zip(abstain, p1_lower, p2_upper)]
    return TopTwoBounds(top, p1_raw, p2_raw, p1_lower, p2_upper, abstain, reasons)


def membership_bounds(counts, trials: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson bounds (lower, upper) of Bernoulli means ``counts`` / ``trials`` (B, T),
    simultaneous over the T coordinates and both sides of each (Bonferroni: alpha / (2 T) per
    one-sided bound), so any set chosen from the same samples may use them."""
    counts = np.atleast_2d(np.asarray(counts))
    each = alpha / (2 * counts.shape[-1])
    return clopper_pearson_lower(counts, trials, each), clopper_pearson_upper(counts, trials, each)


def bernstein_bounds(total, total_sq, trials: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Empirical-Bernstein bounds (Maurer & Pontil 2009, Thm 4) on the means of [0, 1]-valued
    coordinates from their sums and sums of squares over ``trials`` i.i.d. samples, simultaneous
    over the T coordinates and both sides (alpha / (2 T) per one-sided bound):
    mean +- (sqrt(2 V ln(2/d) / n) + 7 ln(2/d) / (3 (n - 1))), V the unbiased sample variance.
    Needs n >= 2; clipped to [0, 1]."""
    total = np.atleast_2d(np.asarray(total, dtype=np.float64))
    total_sq = np.atleast_2d(np.asarray(total_sq, dtype=np.float64))
    n = int(trials)
    if n < 2:
        raise FvitError("empirical-Bernstein bounds need at least 2 samples")
    if not 0 < alpha < 1:
        raise FvitError(f"confidence alpha must be in (0, 1), got {alpha}")
    if not (np.isfinite(total).all() and np.isfinite(total_sq).all()):
        raise FvitError("empirical-Bernstein bounds: the sums must be finite numbers (no NaN / inf)")
    each = alpha / (2 * total.shape[-1])
    log_term = math.log(2.0 / each)
    mean = total / n
    variance = np.clip((total_sq - n * mean ** 2) / (n - 1), 0.0, None)
    half = np.sqrt(2.0 * variance * log_term / n) + 7.0 * log_term / (3.0 * (n - 1))
    return np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)
