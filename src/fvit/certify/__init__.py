"""Certification of the faithful region: Hu et al. Algorithm 2 with the [Re] corrections.

- :mod:`fvit.certify.renyi`: minimum Rényi divergences (Li et al. prediction lemma; the papers' top-k
  closed forms, as published), stable.
- :mod:`fvit.certify.topk`: the exact minimum Rényi divergence that breaks a top-k set (sound for
  every k0) and its worst case over a confidence box.
- :mod:`fvit.certify.gaussian`: tight Gaussian certificates (Cohen et al. prediction radius;
  Lipschitz top-k membership radius).
- :mod:`fvit.certify.radius`: sup over alpha > 1, ``prediction_radius``, ``topk_radius``,
  ``faithful_region`` (min of the two), l_inf conversions ("sqrt_d" = R/sqrt(d), "paper" = R/d).
- :mod:`fvit.certify.stats`: Clopper-Pearson bounds, sampling protocols, abstention.
- :mod:`fvit.certify.config`: the settings, ``CertifyConfig`` and ``TightnessConfig`` (frozen, validated,
  recorded whole in the results).
- :mod:`fvit.certify.core`: ``certify(model, dds, images01, config) -> list[CertificationResult]``
  (``certify_methods``: several map sources on one set of samples).
- :mod:`fvit.certify.tightness`: ``run_tightness(model, dds, images, labels, certify=..., tightness=...)``
  (attacks at 0.9R, 1R, 1.5R, 2R; a success inside a certified radius fails the run).
"""

from fvit.certify.config import (
    CERTIFICATES,
    DEFAULT_ATTENTION,
    DEFAULT_MC_BATCH,
    CertifyConfig,
    TightnessConfig,
    attention_name,
)
from fvit.certify.core import (
    CertificationResult,
    SampleStatistics,
    certify,
    certify_config,
    certify_methods,
    sample_statistics,
)
from fvit.certify.gaussian import certified_membership, gaussian_prediction_radius, gaussian_topk_radius
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
    topk_indices,
    topk_radius,
    topk_radius_bounds,
    topk_swap_positions,
)
from fvit.certify.topk import exact_topk_divergence, topk_split
from fvit.certify.renyi import hu_topk_divergence, prediction_divergence, swap_divergence
from fvit.certify.stats import (
    PROTOCOLS,
    TopTwoBounds,
    bound_top_two,
    clopper_pearson_interval,
    clopper_pearson_lower,
    bernstein_bounds,
    clopper_pearson_upper,
    hoeffding_halfwidth,
    membership_bounds,
)

__all__ = [
    "CERTIFICATES",
    "CertifyConfig",
    "DEFAULT_MC_BATCH",
    "TightnessConfig",
    "attention_name",
    "certify_config",
    "certify_methods",
    "SampleStatistics",
    "bernstein_bounds",
    "certified_membership",
    "exact_topk_divergence",
    "gaussian_prediction_radius",
    "gaussian_topk_radius",
    "membership_bounds",
    "topk_indices",
    "topk_radius_bounds",
    "topk_split",
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
