"""Tables (Markdown / CSV / JSON in the papers' layouts), plots and heat-map grids of results."""

from fvit.viz.names import display, method_key, radius_label, radius_value, split_key
from fvit.viz.tables import (
    Table,
    ablation_table,
    adversary_table,
    cost_table,
    dds_effect_table,
    dds_table,
    explanation_attack_table,
    overlap_table,
    perturbation_table,
    segmentation_table,
    sensitivity_table,
)

__all__ = [
    "Table", "ablation_table", "adversary_table", "cost_table", "dds_effect_table", "dds_table", "display", "explanation_attack_table", "method_key", "overlap_table",
    "perturbation_table", "radius_label", "radius_value", "segmentation_table", "sensitivity_table",
    "split_key",
]
