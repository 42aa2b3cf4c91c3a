"""Certified radii of the faithful region (Hu et al. Algorithm 2 with the [Re] corrections).

Gaussian smoothing with N(0, sigma^2 I) gives D_alpha(x + z || x' + z) = alpha ||x - x'||_2^2 / (2 sigma^2)
(Hu et al. Appendix B; the [Re] proof writes alpha R / (2 sigma^2), a typo for R^2). By
post-processing, a property whose violation needs Rényi divergence at least D*_alpha holds whenever
alpha R^2 / (2 sigma^2) < D*_alpha (STRICT, [Re] Theorem 5.1 and the B.1.1 counterexample), i.e. for
every l_2 radius R with

    R < R(alpha) = sqrt(2 sigma^2 D*_alpha / alpha)      and hence for every R < sup_{alpha>1} R(alpha).

The functions below return that supremum R_sup; the certified set is the OPEN ball ||delta|| < R_sup
(at R = R_sup the condition can hold with equality and then certifies nothing). Use
:func:`is_certified` for the strict comparison.

* :func:`prediction_radius` - top class unchanged (D* from :func:`fvit.certify.renyi.prediction_divergence`).
* :func:`topk_radius` - top-k overlap V_k >= beta ([Re] Lemma B.2, corrected), or Hu et al.'s
  original expression with ``variant="original"`` (comparison only, not a certificate).
* :func:`faithful_region` - min of the two (Algorithm 2 step 8): "faithful" means BOTH properties
  hold for every x' in the ball, so the ball must fit inside both certified balls. [Re] Theorem 5.2
  writes max{...} over sigma^2-thresholds; with the correct direction (sigma^2 > each threshold,
  their own eqs. (3)-(4)) that max on sigma^2 is the same statement as the min on R.
* l_inf: ``linf_conversion="paper"`` divides the l_2 radius by d = number of input dimensions
  (Algorithm 2 step 7 as printed); ``"sqrt_d"`` divides by sqrt(d), the standard conversion
  (||delta||_2 <= sqrt(d) ||delta||_inf) which Hu et al.'s own Theorem 5.3 (sigma^2 >= d alpha R^2 /
  (2 D)) also implies. Both are sound; the paper's is sqrt(d) times more conservative.

Supremum over alpha (:func:`sup_divergence_over_alpha`). With g(alpha) = D*_alpha / alpha,
R_sup = sigma sqrt(2 sup g). We search t = log(alpha - 1): a uniform grid of
:data:`GRID_POINTS_PER_UNIT` points per unit of t on [log(1e-8), t_max], then bounded Brent
(scipy.optimize.minimize_scalar, method="bounded") on the two grid cells around the best grid
point, and compare with the exact alpha -> 1+ limit g(1) = D*_1 (closed form). The upper end is
rigorous: D*_alpha increases to D*_inf, so g(alpha) <= D*_inf / alpha_max for alpha >= alpha_max;
we take alpha_max >= D*_inf / D*_1 (and >= 1e8), and since sup g >= D*_1 nothing beyond can win.
Measured against 40-digit mpmath evaluations maximised by scipy's differential_evolution and by
scipy.optimize.brute (20k points + Nelder-Mead): interior maxima agree to ~1e-14 relative; where
the supremum is the alpha -> 1 limit we return the exact limit, which those references (bounded at
alpha - 1 >= 6e-6) undershoot by <= 4e-7. Tests require 1e-6 (tests/test_certify_radius.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

from fvit.certify.renyi import TOPK_DIVERGENCES, prediction_parts, swap_divergence
from fvit.certify.topk import check_topk_box, exact_topk_divergence, topk_split
from fvit.errors import FvitError
from fvit.registry import Registry

#: log(alpha - 1) at the lower end of the search grid (alpha = 1 + 1e-8; the limit alpha -> 1 is exact).
LOG_ALPHA_MINUS_ONE_MIN = math.log(1e-8)
#: log(alpha - 1) at the default upper end of the grid (extended when the tail bound needs it).
LOG_ALPHA_MINUS_ONE_MAX = math.log(1e8)
#: grid density in points per unit of log(alpha - 1).
GRID_POINTS_PER_UNIT = 8
#: Brent's absolute tolerance in log(alpha - 1).
BRENT_XATOL = 1e-10
#: tolerance for "w sums to 1" and "w >= 0" checks.
PROB_TOL = 1e-9


@dataclass(frozen=True)
class SupResult:
    """sup_{alpha>1} D_alpha / alpha per batch element, and the maximising alpha (1.0 = limit)."""

    value: np.ndarray
    alpha: np.ndarray


DivergenceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""divergence(alpha (N,), rows (R,) int) -> (R, N): D_alpha for the selected batch rows."""


def sup_divergence_over_alpha(divergence: DivergenceFn, batch: int) -> SupResult:
    """sup over alpha > 1 of divergence(alpha) / alpha for each of ``batch`` rows (see module doc)."""
    rows = np.arange(batch)
    d_one = divergence(np.array([1.0]), rows)[:, 0]
    d_inf = divergence(np.array([np.inf]), rows)[:, 0]
    value = d_one.copy()
    best_alpha = np.ones(batch)
    live = np.isfinite(d_one) & (d_one > 0)
    if not live.any():
        return SupResult(value, best_alpha)
    live_rows = rows[live]
    with np.errstate(divide="ignore"):
        needed = np.log(np.maximum(d_inf[live] / d_one[live], 1.0))
    t_max = max(LOG_ALPHA_MINUS_ONE_MAX, float(np.max(np.where(np.isfinite(needed), needed, 0.0))) + 1.0)
    n_points = int(math.ceil((t_max - LOG_ALPHA_MINUS_ONE_MIN) * GRID_POINTS_PER_UNIT)) + 1
    t = np.linspace(LOG_ALPHA_MINUS_ONE_MIN, t_max, n_points)
    alpha_grid = 1.0 + np.exp(t)
    g = divergence(alpha_grid, live_rows) / alpha_grid
    best = np.argmax(g, axis=1)
    for j, row in enumerate(live_rows):
        i = int(best[j])
        lo, hi = t[max(i - 1, 0)], t[min(i + 1, n_points - 1)]
        candidates = [(g[j, i], 1.0 + math.exp(t[i]))]

        def neg_g(tt: float, row=row) -> float:
            a = 1.0 + math.exp(tt)
            return -float(divergence(np.array([a]), np.array([row]))[0, 0] / a)

        res = minimize_scalar(neg_g, bounds=(lo, hi), method="bounded", options={"xatol": BRENT_XATOL})
        candidates.append((-res.fun, 1.0 + math.exp(res.x)))
        top_value, top_alpha = max(candidates, key=lambda c: c[0])
        if top_value > value[row]:
            value[row], best_alpha[row] = top_value, top_alpha
    return SupResult(value, best_alpha)


def _radius_from_sup(sup_value: np.ndarray, sigma: float) -> np.ndarray:
    """R_sup = sqrt(2 sigma^2 sup_alpha D_alpha/alpha) = sigma sqrt(2 sup g)."""
    return float(sigma) * np.sqrt(2.0 * sup_value)


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise FvitError(f"sigma must be a positive number, got {sigma}")
    return sigma


def prediction_radius(p1, p2, sigma: float, *, return_alpha: bool = False):
    """Certified l_2 radius for the top class: sup_{alpha>1} sqrt(-(2 sigma^2/alpha) log(1 - p1 - p2
    + 2((p1^(1-alpha) + p2^(1-alpha))/2)^(1/(1-alpha)))) (Hu Thm 4.4 + Alg. 2 "P"; [Re] Thm 5.1).

    ``p1`` is (a lower bound of) the top-class probability, ``p2`` (an upper bound of) the runner-up
    probability; arrays broadcast. Returns 0 where p1 <= p2 (nothing certified), inf where p1 = 1.
    With ``return_alpha`` also returns the maximising alpha (1.0 = the alpha -> 1 limit).
    """
    sigma = _check_sigma(sigma)
    p1, p2 = np.broadcast_arrays(np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64))
    shape = p1.shape
    p1, p2 = p1.reshape(-1), p2.reshape(-1)
    if np.any(np.isnan(p1) | np.isnan(p2)) or np.any((p1 < 0) | (p2 < 0) | (p1 > 1) | (p2 > 1)) \
            or np.any(p1 + p2 > 1 + PROB_TOL):
        raise FvitError("prediction_radius: need 0 <= p1, p2 <= 1 and p1 + p2 <= 1 (no NaN)")
    separated = p1 > p2
    inside, outside = prediction_parts(p1, p2)

    def divergence(alpha, rows):
        return swap_divergence(inside[rows][:, None, :], outside[rows][:, None], alpha[None, :])

    sup = sup_divergence_over_alpha(divergence, p1.size)
    radius = np.where(separated, _radius_from_sup(sup.value, sigma), 0.0).reshape(shape)
    if return_alpha:
        return radius, np.where(separated, sup.alpha, np.nan).reshape(shape)
    return radius


def topk_k0(k: int, beta: float) -> int:
    """k0 = floor((1 - beta) k) + 1: the fewest top-k replacements that make V_k < beta.

    Computed in exact rational arithmetic from beta's decimal form, so beta = 0.8, k = 10 gives
    k0 = 3 (floating point would give (1-0.8)*10 = 1.999... and k0 = 2).
    """
    if int(k) != k or k < 1:
        raise FvitError(f"k must be a positive integer, got {k}")
    if not 0 < float(beta) <= 1:
        raise FvitError(f"beta must be in (0, 1], got {beta}")
    b = Fraction(repr(float(beta)))
    return math.floor((1 - b) * int(k)) + 1


def topk_swap_positions(k: int, beta: float) -> tuple[int, int]:
    """0-based slice [start, stop) of the descending-sorted positions forming S in the [Re] closed
    form: the last k0 of the top-k (1-based k-k0+1..k) and the first k0 outside it, i.e. [k-k0, k+k0)."""
    k0 = topk_k0(k, beta)
    return int(k) - k0, int(k) + k0


def normalize_attention(w) -> np.ndarray:
    """Non-negative vector(s) (..., T) -> probability vector(s) (unit l_1 norm).

    Used ONLY by the papers' variants ("renyi-re", "renyi-hu"), which renormalise the patch
    attention after dropping the CLS column. That hides the prefix-token mass an adversary can move;
    the sound variant ("exact") keeps it as an outcome of its own (:mod:`fvit.certify.topk`).
    """
    w = np.asarray(w, dtype=np.float64)
    _check_vector(w)
    total = w.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise FvitError("attention vector sums to 0; cannot normalise it to a distribution")
    return np.clip(w, 0.0, None) / total


def _check_vector(w: np.ndarray) -> None:
    if w.ndim < 1 or w.shape[-1] < 2:
        raise FvitError(f"attention vector must have shape (..., T) with T >= 2, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise FvitError("attention vector contains NaN or inf")
    if np.any(w < -PROB_TOL * np.maximum(np.abs(w).sum(axis=-1, keepdims=True), 1.0)):
        raise FvitError("attention vector has negative entries; the top-k certificate needs w >= 0")


def sub_probability(w) -> np.ndarray:
    """(B, T) non-negative vectors with sum <= 1 (the patch part of a token distribution), checked."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    _check_vector(w)
    if np.any(w.sum(axis=-1) > 1 + 1e-6):
        raise FvitError("the exact top-k certificate needs a sub-probability vector (sum <= 1: the patch "
                        "part of an attention row); use a renyi-re/renyi-hu variant or the gaussian "
                        "certificate for other maps")
    return np.clip(w, 0.0, None)


def topk_parts(w, k: int, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside (B, 2k0), outside (B,), feasible (B,)) of the papers' closed form (*) (renyi-re/-hu).

    ``w`` (T,) or (B, T) is normalised first (as published). ``feasible`` is False when k + k0 > T:
    then fewer than k0 entries lie outside the top-k, V_k >= beta cannot be violated, radius inf.
    """
    w = normalize_attention(np.atleast_2d(w))
    n_tokens = w.shape[-1]
    _check_k(k, n_tokens)
    start, stop = topk_swap_positions(k, beta)
    ordered = -np.sort(-w, axis=-1)
    feasible = np.full(w.shape[0], stop <= n_tokens)
    stop = min(stop, n_tokens)
    inside = ordered[:, start:stop]
    outside = ordered[:, :start].sum(axis=-1) + ordered[:, stop:].sum(axis=-1)
    return inside, outside, feasible


def _check_k(k: int, n_tokens: int) -> None:
    if not 1 <= k < n_tokens:
        raise FvitError(f"k must be in [1, {n_tokens - 1}] for {n_tokens} tokens, got {k}")


def topk_indices(w, k: int) -> np.ndarray:
    """(B, k) indices of the k largest entries per row, descending (ties: lower index first)."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    return np.argsort(-w, axis=-1, kind="stable")[:, :k]


#: Top-k certificate variants: the sound exact minimum and the papers' closed forms (as published).
TOPK_VARIANTS: Registry[str] = Registry("top-k Rényi variant")
TOPK_VARIANTS.register("exact", "exact", aliases=("renyi", "sound"))
TOPK_VARIANTS.register("renyi-re", "corrected", aliases=("corrected", "re", "liu"))
TOPK_VARIANTS.register("renyi-hu", "original", aliases=("original", "hu"))


def topk_radius(w, k: int, beta: float, sigma: float, *, variant: str = "exact",
                return_alpha: bool = False):
    """Rényi l_2 radius for top-k robustness V_k >= beta of the smoothed attention vector ``w``.

    ``variant``:
    * ``exact`` (default, a certificate for the point ``w``): ``w`` (T,) or (B, T) is the patch part
      of a token distribution (sum <= 1, the rest is an outcome of its own); S = top-k of ``w``;
      exact minimum divergence of :mod:`fvit.certify.topk`. Use :func:`topk_radius_bounds` to
      certify with confidence bounds on ``w``.
    * ``renyi-re`` ([Re] Lemma B.2 = Liu et al. 2021 Thm 2, as published): ``w`` renormalised, all
      2 k0 swapped entries pooled. NOT a certificate for k0 >= 2 (can exceed the exact radius) nor
      when prefix tokens hold attention mass.
    * ``renyi-hu`` (Hu et al.'s Algorithm 2 "Q", as published): not a certificate at all.
    Returns (B,) (or a 0-d array for (T,)).
    """
    sigma = _check_sigma(sigma)
    kind = TOPK_VARIANTS.get(variant)
    single = np.asarray(w).ndim == 1
    if kind == "exact":
        w2 = sub_probability(w)
        radius, alpha = topk_radius_bounds(w2, w2, topk_indices(w2, k), k, beta, sigma, return_alpha=True)
    else:
        inside, outside, feasible = topk_parts(w, k, beta)
        div_fn = TOPK_DIVERGENCES[kind]

        def divergence(alpha, rows):
            return div_fn(inside[rows][:, None, :], outside[rows][:, None], alpha[None, :])

        sup = sup_divergence_over_alpha(divergence, inside.shape[0])
        radius = np.where(feasible, _radius_from_sup(sup.value, sigma), np.inf)
        alpha = np.where(feasible, sup.alpha, np.nan)
    if single:
        radius, alpha = radius[0], alpha[0]
    return (radius, alpha) if return_alpha else radius


def topk_radius_bounds(lower, upper, topk, k: int, beta: float, sigma: float, *,
                       return_alpha: bool = False):
    """Rényi l_2 radius certifying that >= beta k of the set ``topk`` (B, k) stay in the top-k of the
    smoothed attention vector, for EVERY vector w with lower <= w <= upper (patch coordinates, the
    missing mass an outcome of its own): the exact minimum divergence at the box's worst vector
    (:mod:`fvit.certify.topk`). 0 where that worst vector is not a sub-distribution."""
    sigma = _check_sigma(sigma)
    lower, upper, topk = check_topk_box(lower, upper, topk, owner="topk_radius_bounds")
    _check_k(k, lower.shape[1])
    if topk.shape != (lower.shape[0], k):
        raise FvitError(f"top-k indices must have shape {(lower.shape[0], k)}, got {topk.shape}")
    a, b, realisable = topk_split(lower, upper, topk, topk_k0(k, beta))

    def divergence(alpha, rows):
        return exact_topk_divergence(a[rows], b[rows], alpha)

    sup = sup_divergence_over_alpha(divergence, a.shape[0])
    radius = np.where(realisable, _radius_from_sup(sup.value, sigma), 0.0)
    alpha = np.where(realisable & (radius > 0), sup.alpha, np.nan)
    return (radius, alpha) if return_alpha else radius


# ---- l_inf conversion -------------------------------------------------------------------------

LINF_CONVERSIONS: Registry[Callable[[np.ndarray, int], np.ndarray]] = Registry("l_inf conversion")
LINF_CONVERSIONS.register("paper", lambda r, d: r / d, aliases=("paper_d", "hu", "d"))
LINF_CONVERSIONS.register("sqrt_d", lambda r, d: r / math.sqrt(d), aliases=("sqrt", "standard", "sound"))
NORMS = ("l2", "linf")


def convert_radius(r_l2, norm: str, d: int | None = None, linf_conversion: str = "sqrt_d") -> np.ndarray:
    """An l_2 radius in the requested norm. "l2": unchanged. "linf": ``linf_conversion`` "sqrt_d"
    (R / sqrt(d), the standard conversion; the default, as in `CertifyConfig`) or "paper" (R / d,
    Algorithm 2 step 7 as printed, sqrt(d) times more conservative)."""
    r_l2 = np.asarray(r_l2, dtype=np.float64)
    if norm == "l2":
        return r_l2
    if norm != "linf":
        raise FvitError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if d is None or int(d) < 1:
        raise FvitError("norm 'linf' needs d, the number of input dimensions (3*H*W)")
    return LINF_CONVERSIONS.get(linf_conversion)(r_l2, int(d))


@dataclass(frozen=True)
class FaithfulRegion:
    """Radii of Algorithm 2 in the chosen norm: region = min(prediction, top_k)."""

    prediction: np.ndarray
    top_k: np.ndarray
    region: np.ndarray
    norm: str


def faithful_region(p1, p2, w, k: int, beta: float, sigma: float, *, norm: str = "l2",
                    d: int | None = None, linf_conversion: str = "sqrt_d",
                    topk_variant: str = "exact") -> FaithfulRegion:
    """Algorithm 2 (corrected): R = min(R_pred, R_topk), converted to ``norm``.

    The min, not the max: "faithful" requires top-k robustness AND prediction robustness for
    every x' in the ball, and each is certified only inside its own radius.
    """
    r_pred = convert_radius(prediction_radius(p1, p2, sigma), norm, d, linf_conversion)
    r_topk = convert_radius(topk_radius(w, k, beta, sigma, variant=topk_variant), norm, d, linf_conversion)
    return FaithfulRegion(r_pred, r_topk, np.minimum(r_pred, r_topk), norm)


def is_certified(radius: float, certified_radius) -> np.ndarray:
    """Strict check ||delta|| = radius < certified_radius ([Re] Thm 5.1: equality certifies nothing)."""
    return np.asarray(radius) < np.asarray(certified_radius)


def prediction_robust(gamma: float, p1, p2, alpha) -> np.ndarray:
    """[Re] Theorem 5.1: D_alpha(ybar(x) || ybar(x')) <= gamma implies an unchanged top class if
    gamma < D*_alpha(p1, p2) STRICTLY (Hu's Theorem 4.4 had <=; the B.1.1 counterexample)."""
    from fvit.certify.renyi import prediction_divergence

    return np.asarray(gamma) < prediction_divergence(p1, p2, alpha)
