"""Certification of the faithful region: Hu et al. Algorithm 2 with the [Re] corrections.

- :mod:`fvit.certify.renyi`: minimum Rényi divergences (Li et al. prediction lemma; Liu et al. top-k
  lemma as corrected by [Re]; Hu et al.'s original top-k expression for comparison), stable.
- :mod:`fvit.certify.radius`: sup over alpha > 1, ``prediction_radius``, ``topk_radius``,
  ``faithful_region`` (min of the two), l_inf conversions ("paper" = R/d, "sqrt_d" = R/sqrt(d)).
- :mod:`fvit.certify.stats`: Clopper-Pearson bounds, sampling protocols, abstention.
- :mod:`fvit.certify.core`: ``certify(model, dds, images01, ...) -> list[CertificationResult]``.
- :mod:`fvit.certify.tightness`: ``run_tightness`` (paper section 6.2: attacks at 1.5R and 2R).
"""

from fvit.certify.core import DEFAULT_ATTENTION, CertificationResult, certify, sample_statistics
from fvit.certify.radius import (
    LINF_CONVERSIONS,
    FaithfulRegion,
    convert_radius,
    faithful_region,
    is_certified,
    normalize_attention,
    prediction_radius,
    prediction_robust,
    sup_divergence_over_alpha,
    topk_k0,
    topk_radius,
    topk_swap_positions,
)
from fvit.certify.renyi import hu_topk_divergence, prediction_divergence, swap_divergence
from fvit.certify.stats import (
    PROTOCOLS,
    TopTwoBounds,
    bound_top_two,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    hoeffding_halfwidth,
)

__all__ = [
    "DEFAULT_ATTENTION",
    "LINF_CONVERSIONS",
    "PROTOCOLS",
    "CertificationResult",
    "FaithfulRegion",
    "TopTwoBounds",
    "bound_top_two",
    "certify",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "convert_radius",
    "faithful_region",
    "hoeffding_halfwidth",
    "hu_topk_divergence",
    "is_certified",
    "normalize_attention",
    "prediction_divergence",
    "prediction_radius",
    "prediction_robust",
    "sample_statistics",
    "sup_divergence_over_alpha",
    "swap_divergence",
    "topk_k0",
    "topk_radius",
    "topk_swap_positions",
]
