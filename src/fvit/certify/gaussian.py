"""Tight Gaussian (Neyman-Pearson) certificates for the prediction and for the top-k set of a map.

Both rest on one fact (Cohen et al. 2019; Salman et al. 2019, Lemma 2; Levine et al. 2019): for any
function h: R^d -> [0, 1] and Gaussian noise N(0, sigma^2 I), x -> Phi^-1(E[h(x + delta)]) is
(1/sigma)-Lipschitz in the l_2 norm. So for ||x' - x||_2 <= R,

    Phi(Phi^-1(p_lower) - R / sigma) <= E[h(x' + delta)] <= Phi(Phi^-1(p_upper) + R / sigma).

* Prediction (h = indicator of a class): the top class A stays on top while
  Phi^-1(pA_lower) - R/sigma > Phi^-1(pB_upper) + R/sigma, i.e. for R < sigma/2 (Phi^-1(pA_lower) -
  Phi^-1(pB_upper)); with pB_upper = 1 - pA_lower this is Cohen et al.'s sigma Phi^-1(pA_lower).
* Top-k of a map (h_i = the indicator that patch i is in the top-k of the per-sample map, so p_i =
  E[h_i] is the smoothed top-k MEMBERSHIP of patch i, and S = the k patches with the largest p_i):
  V_k(x') < beta needs k0 = floor((1-beta)k)+1 members of S to be overtaken by k0 patches off S.
  With the bounds above applied per patch, the adversary's best choice is the k0 members of S with
  the smallest lower bounds and the k0 outsiders with the largest upper bounds (the transforms are
  monotone), so the set is certified for

      R < sigma/2 (Phi^-1(l_(a*)) - Phi^-1(u_(b*))),

  a* = the member of S with the k0-th smallest lower bound, b* = the outsider with the k0-th
  largest upper bound. Ties at the boundary count as violations, so the certified ball is open.
* Membership per patch at radius R: a member i of S is certified in the top-k if fewer than k other
  patches can reach its lower bound; an outsider j is certified out if at least k patches stay above
  its upper bound.

The bounds l, u come from :func:`fvit.certify.stats.membership_bounds` (Clopper-Pearson,
simultaneous over the patches). Why the membership indicator and not the min-max normalised map:
it is defined for every method (no scale) and it is Bernoulli, so exact binomial bounds apply (tight
even for tiny frequencies). Its top-k is NOT in general the top-k of a fused heat map (max-drop10);
the 'membership' fusion of `fvit.dds.fusion` draws the map whose top-k this certifies.

Bad input is refused (`fvit.certify.topk.check_topk_box`): NaN bounds, bounds outside [0, 1],
lower > upper, duplicate or out-of-range top-k indices. An infinite radius stays inf.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from fvit.certify.radius import topk_k0
from fvit.certify.topk import check_topk_box
from fvit.errors import FvitError


def _phi_inv(p) -> np.ndarray:
    return ndtri(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0))


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma > 0 and np.isfinite(sigma)):
        raise FvitError(f"sigma must be a positive number, got {sigma}")
    return sigma


def gaussian_prediction_radius(p1_lower, p2_upper, sigma: float) -> np.ndarray:
    """sigma/2 (Phi^-1(p1_lower) - Phi^-1(p2_upper)), 0 where p1_lower <= p2_upper (abstain); inf
    where p1_lower = 1 and p2_upper < 1. Bounds must be probabilities (NaN refused)."""
    sigma = _check_sigma(sigma)
    p1, p2 = np.broadcast_arrays(np.asarray(p1_lower, np.float64), np.asarray(p2_upper, np.float64))
    if np.isnan(p1).any() or np.isnan(p2).any() or (p1 < 0).any() or (p2 < 0).any() or (p1 > 1).any() \
            or (p2 > 1).any():
        raise FvitError("gaussian_prediction_radius: p1_lower and p2_upper must be probabilities in [0, 1] "
                        "(no NaN)")
    with np.errstate(invalid="ignore"):
        radius = 0.5 * float(sigma) * (_phi_inv(p1) - _phi_inv(p2))
    return np.where(p1 > p2, radius, 0.0)


def _split(lower, upper, topk, owner: str):
    lower, upper, topk = check_topk_box(lower, upper, topk, owner=owner)
    in_s = np.zeros(lower.shape, dtype=bool)
    np.put_along_axis(in_s, topk, True, axis=1)
    return lower, upper, in_s


def gaussian_topk_radius(lower, upper, topk, k: int, beta: float, sigma: float) -> np.ndarray:
    """Certified l_2 radius of V_k >= beta for the set ``topk`` (B, k) given per-patch bounds
    ``lower``/``upper`` (B, T) of the smoothed membership (module docstring). inf when fewer than
    k0 patches lie outside S."""
    k0 = topk_k0(k, beta)
    sigma = _check_sigma(sigma)
    if np.atleast_2d(np.asarray(topk)).shape[1] != k:
        raise FvitError(f"expected {k} top-k indices per row, got {np.atleast_2d(np.asarray(topk)).shape[1]}")
    lower, upper, in_s = _split(lower, upper, topk, "gaussian_topk_radius")
    if lower.shape[1] - k < k0:
        return np.full(lower.shape[0], np.inf)
    a = np.sort(np.where(in_s, lower, np.inf), axis=1)[:, k0 - 1]
    b = -np.sort(-np.where(in_s, -np.inf, upper), axis=1)[:, k0 - 1]
    with np.errstate(invalid="ignore"):
        radius = 0.5 * float(sigma) * (_phi_inv(a) - _phi_inv(b))
    # a > b excludes the NaN cases (a = b = 0 or 1); Phi^-1(1) = inf keeps an infinite radius inf
    return np.where(a > b, radius, 0.0)


def certified_membership(lower, upper, topk, k: int, radii, sigma: float) -> np.ndarray:
    """(B, len(radii)) fraction of patches whose top-k membership (in for S, out otherwise) is
    certified at each l_2 radius (module docstring)."""
    lower, upper, in_s = _split(lower, upper, topk, "certified_membership")
    radii = np.asarray(radii, dtype=np.float64)
    shift = radii[:, None, None] / _check_sigma(sigma)
    with np.errstate(invalid="ignore"):
        lo = _shifted(lower, -shift)   # (R, B, T)
        hi = _shifted(upper, shift)
    # member i: #{j != i : hi_j >= lo_i} <= k - 1 ; outsider j: #{i != j : lo_i > hi_j} >= k
    beats = hi[..., None, :] >= lo[..., :, None]          # [r, b, i, j] = hi_j >= lo_i
    eye = np.eye(lower.shape[1], dtype=bool)
    challengers = (beats & ~eye).sum(-1)                   # per member i
    above = ((lo[..., :, None] > hi[..., None, :]) & ~eye).sum(-2)  # [r, b, j] = #{i : lo_i > hi_j}
    member_ok = in_s & (challengers <= k - 1)
    outsider_ok = ~in_s & (above >= k)
    return (member_ok | outsider_ok).mean(-1).T


def _shifted(p: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Phi(Phi^-1(p) + shift) (p = 0 / 1 stay 0 / 1: the bound is then trivial)."""
    return ndtr(_phi_inv(p)[None] + shift)
