"""Minimum Rényi divergences that change a smoothed output's top class or top-k set.

Both certificates of the faithful region (prediction radius and top-k radius) have the same shape.
For a probability vector w sorted in descending order and a set S of n_S sorted positions,

    D*_alpha(w, S) = -log( sum_{i not in S} w_i + n_S * M_{1-alpha}(w_S) ),                     (*)

where M_r(y) = ((1/n) sum_i y_i^r)^(1/r) is the power mean with exponent r = 1 - alpha < 0.

* Prediction (Li et al. 2019, Lemma 1; Hu et al. Theorem 4.4 / Lemma B.1; [Re] Theorem 5.1): the
  class distribution (p_(1), p_(2), rest) with S = {1, 2}, i.e.
  D* = -log(1 - p1 - p2 + 2((p1^(1-a) + p2^(1-a))/2)^(1/(1-a))).
* Top-k ([Re] Lemma B.2 = Liu et al. 2021, Theorem 2; the [Re]-corrected form): the normalised
  attention vector with S = the last k0 positions of the top-k together with the first k0 positions
  after it, i.e. 1-based sorted positions k-k0+1 .. k+k0 (0-based slice [k-k0, k+k0)),
  k0 = floor((1-beta) k) + 1. The prediction case is exactly the top-1 case (k = 1, k0 = 1).
  (*) is min D_alpha(q || w) over distributions q whose top-k loses >= k0 of w's top-k; checked
  against exhaustive constrained minimisation in tests/test_certify_radius.py.

Hu et al.'s ORIGINAL top-k expression (their Theorem 5.1 / Lemma B.2, Algorithm 2 "Q"), kept for
comparison only (the [Re] study shows it bounds the divergence needed to *keep* top-k robustness,
not to *violate* it, so it does not certify anything):

    D^Hu_alpha = alpha/(alpha-1) ln(2k0 (sum_S w_i^alpha)^(1/alpha) + (2k0)^(1/alpha) sum_{not S} w_i)
                 - ln(2k0)/(alpha-1).

Numerics. alpha ranges over (1, inf); w_i^(1-alpha) overflows for small w_i and large alpha and
(*) cancels catastrophically near alpha -> 1 or when the entries of w_S are nearly equal. We write
(*) as -log(1 - g) with the "gap" g = sum(w_S) (1 - M/AM) (AM = arithmetic mean of w_S, which is
>= M), evaluate log(M/AM) = log M_r(w_S / AM) with log1p/expm1 when every |r log y_i| is small and
with logsumexp otherwise, and use -log1p(-g) while g <= 1/2 and -log(rest + n_S M) beyond. Zeros in
w_S give M = 0 (r < 0), the correct limit. The alpha -> 1 limits are closed forms (geometric mean
for (*), a KL-type expression for Hu's form) and alpha = inf gives the minimum.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, xlogy

#: |r log y| below which log(mean(y^r)) is computed as log1p(mean(expm1(r log y))) (no cancellation).
EXPM1_BRANCH_LIMIT = 0.5
#: gap g below which -log(1 - g) is computed as -log1p(-g).
LOG1P_BRANCH_LIMIT = 0.5


def log_power_mean(values: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    """log M_r(y) = (1/r) log((1/n) sum_i y_i^r) over the last axis of ``values`` (y_i >= 0).

    ``r`` broadcasts against ``values[..., 0]``. r = 0 gives the geometric-mean limit
    mean(log y); r = -inf gives log(min y). Zeros give M_r = 0 for r < 0.
    """
    y = np.asarray(values, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    n = y.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_y = np.log(y)
        shape = np.broadcast_shapes(r.shape, y.shape[:-1])
        r_full = np.broadcast_to(r, shape)
        u = r_full[..., None] * log_y
        small = np.all(np.abs(u) < EXPM1_BRANCH_LIMIT, axis=-1)
        log_mean_small = np.log1p(np.mean(np.expm1(np.where(small[..., None], u, 0.0)), axis=-1))
        log_mean_big = logsumexp(u, axis=-1) - np.log(n)
        out = np.where(small, log_mean_small, log_mean_big) / r_full
        geometric = np.broadcast_to(np.mean(log_y, axis=-1), shape)
        minimum = np.broadcast_to(np.min(log_y, axis=-1), shape)
        out = np.where(r_full == 0, geometric, out)
        out = np.where(np.isneginf(r_full), minimum, out)
    return out


def swap_divergence(inside: np.ndarray, outside: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """D*_alpha = -log(outside + n_S M_{1-alpha}(inside)), formula (*) of the module docstring.

    ``inside`` (..., n_S) are the entries of the probability vector at the positions S, ``outside``
    (...) the total mass elsewhere; inside.sum(-1) + outside must be 1. ``alpha`` broadcasts
    against ``outside`` (alpha = 1 is the alpha -> 1+ limit, alpha = inf the alpha -> inf limit).
    Returns values in [0, inf]; 0 when the entries of ``inside`` are all equal.
    """
    inside = np.asarray(inside, dtype=np.float64)
    outside = np.asarray(outside, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    inside_sum = inside.sum(axis=-1)
    n = inside.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        arithmetic_mean = inside_sum / n
        ratio = inside / np.where(arithmetic_mean > 0, arithmetic_mean, 1.0)[..., None]
        log_m_over_am = np.minimum(log_power_mean(ratio, 1.0 - alpha), 0.0)
        gap = inside_sum * -np.expm1(log_m_over_am)
        near = -np.log1p(-np.minimum(gap, LOG1P_BRANCH_LIMIT))
        far = -np.log(outside + inside_sum * np.exp(log_m_over_am))
        d = np.where(gap <= LOG1P_BRANCH_LIMIT, near, far)
        d = np.where(arithmetic_mean > 0, d, 0.0)
    return np.maximum(d, 0.0)


def hu_topk_divergence(inside: np.ndarray, outside: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """Hu et al.'s ORIGINAL (uncorrected) top-k expression (their Lemma B.2 / Algorithm 2 "Q").

    alpha/(alpha-1) ln(2k0 ||w_S||_alpha + (2k0)^(1/alpha) outside) - ln(2k0)/(alpha-1), with
    2k0 = n_S and a = sum_S w_i = 1 - outside. Rewritten without the 0/0 cancellation at alpha -> 1:
    with y = w_S / a, E = ((alpha-1)/alpha) ln n_S + (1/alpha) ln sum_i y_i^alpha,

        D^Hu_alpha = alpha/(alpha-1) * log1p(a * expm1(E)),

    where ln sum y^alpha = log1p(sum y (y^(alpha-1) - 1)) via expm1 when (alpha-1)|ln y| is small.
    alpha = 1 gives the KL-type limit sum_S w_i ln(n_S w_i / a) (a times KL(w_S/a || uniform on S));
    alpha = inf gives ln(n_S max w_S + outside). For comparison only: not a valid certificate
    ([Re] Appendix B.2).
    """
    inside = np.asarray(inside, dtype=np.float64)
    outside = np.asarray(outside, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    n = inside.shape[-1]
    log_n = np.log(n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = inside.sum(axis=-1)
        y = inside / np.where(total > 0, total, 1.0)[..., None]
        log_y = np.log(y)
        shape = np.broadcast_shapes(alpha.shape, outside.shape)
        a = np.broadcast_to(alpha, shape)
        am1 = (a - 1.0)[..., None]
        u = np.where(y > 0, am1 * log_y, -np.inf)
        small = np.all((np.abs(u) < EXPM1_BRANCH_LIMIT) | (y == 0), axis=-1)
        log_sum_small = np.log1p(np.sum(y * np.expm1(np.where(small[..., None], u, 0.0)), axis=-1))
        log_sum_big = logsumexp(u + log_y, axis=-1)
        log_sum = np.where(small, log_sum_small, log_sum_big)
        exponent = (a - 1.0) / a * log_n + log_sum / a
        d = a / (a - 1.0) * np.log1p(total * np.expm1(exponent))
        d_inf = np.log1p(total * np.expm1(log_n + np.max(log_y, axis=-1)))
        limit = xlogy(inside, inside).sum(axis=-1) + total * log_n - xlogy(total, total)
        d = np.where(np.isinf(a), np.broadcast_to(d_inf, shape), d)
        d = np.where(a == 1.0, np.broadcast_to(limit, shape), d)
    return np.maximum(d, 0.0)


#: The top-k divergence variants by name: "corrected" ([Re] / Liu et al.) and "original" (Hu et al.).
TOPK_DIVERGENCES = {"corrected": swap_divergence, "original": hu_topk_divergence}


def prediction_parts(p1: np.ndarray, p2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) of formula (*) for the top-two class probabilities: ((p1, p2), 1-p1-p2)."""
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    inside = np.stack(np.broadcast_arrays(p1, p2), axis=-1)
    outside = np.clip(1.0 - p1 - p2, 0.0, None)
    return inside, outside


def prediction_divergence(p1, p2, alpha) -> np.ndarray:
    """Li et al.'s minimum Rényi divergence to change the top class (Hu Thm 4.4, [Re] Thm 5.1):
    -log(1 - p1 - p2 + 2((p1^(1-alpha) + p2^(1-alpha))/2)^(1/(1-alpha)))."""
    inside, outside = prediction_parts(p1, p2)
    return swap_divergence(inside, outside, alpha)
