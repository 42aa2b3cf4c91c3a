"""The exact minimum Rényi divergence that breaks a top-k set, and its worst case over a confidence box.

Setting. The smoothed explanation is a (sub-)probability vector w over the T patch tokens: the mean,
over the DDS noise, of a per-sample attention row (CLS row without the prefix columns). Its missing
mass 1 - sum(w) (attention on CLS / register / distillation tokens) is ONE MORE OUTCOME, never
renormalised away: an adversary can move that mass too. Sampling a patch i ~ f(x + delta) is a
post-processing of the Gaussian, so D_alpha(w(x') || w(x)) <= alpha ||x - x'||^2 / (2 sigma^2).

Property. S = a fixed set of k patches (the reported top-k). V_k(x') >= beta fails iff at least
k0 = floor((1 - beta) k) + 1 members of S leave the top-k of w(x'), i.e. iff there are A in S and
B outside S, |A| = |B| = k0, with min_B v >= max_A v (ties counted as violations: conservative).

Exact minimum (proved in docs/CERTIFICATES.md and checked against SLSQP on every (A, B) in
tests/test_certify_topk.py):

1. Exchange: swapping the values of v on a in A and a' in S \\ A with w_a' < w_a keeps v violating and
   does not increase D_alpha(v || w) (rearrangement, w^(1-alpha) decreasing), likewise on B. So
   A = the k0 smallest entries of w on S and B = the k0 largest entries of w off S.
2. For fixed (A, B) the problem min_v sum v^alpha w^(1-alpha) over the simplex with v_b >= v_a is
   convex. Its KKT point sets one group G = (top-m of A) + (bottom-n of B) to a common value and
   keeps every other coordinate proportional to w; then D = -log(1 - sum_G w + |G| M_{1-alpha}(w_G))
   (the [Re] / Liu et al. expression restricted to G). Feasibility: the free members of A lie at or
   below M_{1-alpha}(w_G), the free members of B at or above it.
3. We enumerate the k0^2 groups and take the minimum over the feasible ones: every feasible group is
   a feasible v, so the minimum is >= D*, and the KKT group is among them, so it equals D*. A
   tolerance counts near-feasible groups as feasible (only lowers the value: still sound).
   If min_B w >= max_A w the set is already broken at x: D* = 0.

The [Re] / Liu et al. closed form pools all 2 k0 entries into one group (G = A + B, m = n = k0),
which is feasible but need not be the minimiser for k0 >= 2: its value can exceed D*, so its radius
is not a certificate there (kept as the "renyi-re" variant, as published).

Confidence (statistical honesty). With simultaneous bounds l <= w <= u on every patch coordinate,
D*(w) >= D*(w') with w' = (l on S, u on the k0 largest-u patches off S, l elsewhere, the remainder on
the missing-mass outcome) whenever that remainder is >= 0 (moving mass out of S or into B only
helps the adversary: a Markov kernel argument, docs/CERTIFICATES.md). Otherwise nothing is
certified (radius 0).
"""

from __future__ import annotations

import numpy as np

from fvit.certify.renyi import log_power_mean, swap_divergence
from fvit.errors import FvitError

#: relative slack when testing a group's feasibility (more groups count as feasible: sound).
FEASIBILITY_RTOL = 1e-9
#: slack when checking that bounds lie in [0, 1] and lower <= upper (rounding of the bound formulas).
BOUND_TOL = 1e-12


def check_topk_box(lower, upper, topk, *, owner: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, topk) as (R, T) float64 (clipped to [0, 1]) and (R, k) int arrays, or a one-line
    `FvitError` naming ``owner``: NaN bounds, bounds outside [0, 1], lower > upper, non-integer,
    out-of-range or duplicate top-k indices would each give a radius that certifies nothing real."""
    lower = np.atleast_2d(np.asarray(lower, dtype=np.float64))
    upper = np.atleast_2d(np.asarray(upper, dtype=np.float64))
    topk = np.atleast_2d(np.asarray(topk))
    if lower.ndim != 2 or lower.shape != upper.shape:
        raise FvitError(f"{owner}: lower and upper bounds must have one shape (R, T), got {lower.shape} and "
                        f"{upper.shape}")
    if topk.ndim != 2 or topk.shape[0] != lower.shape[0]:
        raise FvitError(f"{owner}: top-k indices {topk.shape} do not match the bounds {lower.shape}")
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise FvitError(f"{owner}: the bounds contain NaN")
    if (lower < -BOUND_TOL).any() or (upper > 1 + BOUND_TOL).any() or np.isinf(lower).any():
        raise FvitError(f"{owner}: the bounds must lie in [0, 1], got [{lower.min():.6g}, {upper.max():.6g}]")
    inverted = lower > upper + BOUND_TOL
    if inverted.any():
        r, j = (int(v[0]) for v in np.nonzero(inverted))
        raise FvitError(f"{owner}: inverted bounds (lower {lower[r, j]:.6g} > upper {upper[r, j]:.6g} at row {r}, "
                        f"patch {j})")
    if topk.size and not np.issubdtype(topk.dtype, np.integer):
        raise FvitError(f"{owner}: top-k indices must be integers, got dtype {topk.dtype}")
    if topk.size and (topk.min() < 0 or topk.max() >= lower.shape[1]):
        raise FvitError(f"{owner}: top-k indices must lie in [0, {lower.shape[1] - 1}], got "
                        f"[{topk.min()}, {topk.max()}]")
    ordered = np.sort(topk, axis=1)
    repeated = np.nonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))[0]
    if repeated.size:
        raise FvitError(f"{owner}: duplicate top-k indices in row {int(repeated[0])}: {topk[repeated[0]].tolist()}")
    return np.clip(lower, 0.0, 1.0), np.clip(upper, 0.0, 1.0), topk.astype(np.int64, copy=False)


def topk_split(lower: np.ndarray, upper: np.ndarray, topk: np.ndarray, k0: int):
    """(a (R, k0) descending, b (R, k0) descending, realisable (R,)) for the worst vector of the box.

    ``lower``/``upper`` (R, T) bound the patch coordinates, ``topk`` (R, k) are the indices of S.
    ``a`` are the k0 smallest lower bounds on S, ``b`` the k0 largest upper bounds off S.
    ``realisable`` says whether l on S, u on B and l elsewhere leave a non-negative missing mass.
    Rows with fewer than k0 patches off S get b = -inf (cannot be broken).
    """
    lower, upper, topk = check_topk_box(lower, upper, topk, owner="topk_split")
    rows, n_tokens = lower.shape
    in_s = np.zeros((rows, n_tokens), dtype=bool)
    np.put_along_axis(in_s, np.asarray(topk), True, axis=1)
    lower_s = np.where(in_s, lower, np.inf)
    a = np.sort(lower_s, axis=1)[:, :k0][:, ::-1]
    upper_out = np.where(in_s, -np.inf, upper)
    order = np.argsort(-upper_out, axis=1, kind="stable")[:, :k0]
    b = np.take_along_axis(upper_out, order, axis=1)
    lifted = np.take_along_axis(upper_out - np.where(in_s, 0.0, lower), order, axis=1)
    total = lower.sum(axis=1) + np.where(np.isfinite(lifted), lifted, 0.0).sum(axis=1)
    return a, b, total <= 1.0 + 1e-12


def exact_topk_divergence(a: np.ndarray, b: np.ndarray, alpha) -> np.ndarray:
    """D*_alpha for groups ``a`` (R, k0) (the k0 smallest of S, descending) and ``b`` (R, k0) (the
    k0 largest off S, descending) of a vector with total mass 1 (module docstring, step 3).

    ``alpha`` (N,) (1 = the alpha -> 1 limit, inf allowed). Returns (R, N); inf where b = -inf
    (fewer than k0 patches off S), 0 where min(b) >= max(a).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    rows, k0 = a.shape
    unbreakable = ~np.all(np.isfinite(b), axis=1)
    b = np.where(np.isfinite(b), b, 0.0)
    best = np.full((rows, alpha.size), np.inf)
    r = (1.0 - alpha)[None, :]
    for m in range(1, k0 + 1):
        for n in range(1, k0 + 1):
            group = np.concatenate([a[:, :m], b[:, k0 - n:]], axis=1)
            value = swap_divergence(group[:, None, :], np.clip(1.0 - group.sum(1), 0.0, None)[:, None],
                                    alpha[None, :])
            feasible = np.ones_like(value, dtype=bool)
            if m < k0 or n < k0:
                with np.errstate(over="ignore"):
                    mean = np.exp(log_power_mean(group[:, None, :], r))
                if m < k0:
                    feasible &= a[:, m, None] <= mean * (1 + FEASIBILITY_RTOL)
                if n < k0:
                    feasible &= b[:, k0 - n - 1, None] >= mean * (1 - FEASIBILITY_RTOL)
            best = np.where(feasible, np.minimum(best, value), best)
    broken = b[:, -1] >= a[:, 0]
    best = np.where(broken[:, None], 0.0, best)
    return np.where(unbreakable[:, None], np.inf, best)
