"""Evaluation metrics on tensors and callables only (no models / explain / dds / bench imports).

- Segmentation (Chefer et al.'s accumulation): ``SegmentationAccumulator``, ``segmentation_row(s)``,
  ``aggregate_segmentation``.
- Perturbation test: ``perturbation_hits``, ``perturbation_auc`` (lower positive / higher negative
  AUC is better).
- ``topk_overlap`` (Definition 4.1), ``rank_correlation`` (Spearman, ties averaged),
  ``faithfulness_score`` (S_Faith), ``accuracy`` helpers.
- Intervals: ``mean_interval`` / ``paired_interval`` (percentile bootstrap over images, paired for
  differences), ``verdict`` (a comparison worded only as far as its interval allows).
"""

from fvit.metrics.average_precision import average_precision
from fvit.metrics.classification import accuracy, flip_rate, top1_hits
from fvit.metrics.intervals import format_interval, mean_interval, paired_interval, verdict
from fvit.metrics.faithfulness import faithfulness_score, mean_abs_difference
from fvit.metrics.normalise import min_max_normalise
from fvit.metrics.overlap import topk_overlap
from fvit.metrics.rank import average_ranks, rank_correlation
from fvit.metrics.perturbation import (
    DEFAULT_FRACTIONS,
    accuracy_curve,
    perturbation_auc,
    perturbation_hits,
    removed_count,
)
from fvit.metrics.segmentation import (
    SegmentationAccumulator,
    aggregate_segmentation,
    segmentation_counts,
    segmentation_row,
    segmentation_rows,
)

__all__ = [
    "format_interval",
    "mean_interval",
    "paired_interval",
    "verdict",
    "DEFAULT_FRACTIONS",
    "SegmentationAccumulator",
    "accuracy",
    "accuracy_curve",
    "aggregate_segmentation",
    "average_ranks",
    "average_precision",
    "faithfulness_score",
    "flip_rate",
    "mean_abs_difference",
    "min_max_normalise",
    "perturbation_auc",
    "perturbation_hits",
    "rank_correlation",
    "removed_count",
    "segmentation_counts",
    "segmentation_row",
    "segmentation_rows",
    "top1_hits",
    "topk_overlap",
]
