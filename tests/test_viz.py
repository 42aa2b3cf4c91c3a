"""fvit.viz: tables from hand-made result dicts, plots and grids as non-empty PNGs."""

import json

import torch

from fvit.viz import (
    ablation_table, cost_table, dds_table, perturbation_table, radius_label, segmentation_table,
    sensitivity_table, split_key,
)
from fvit.viz.report import write_report

SEG = {
    "transformer_attribution": {"pixel_acc": 0.7312, "miou": 0.5201, "map": 0.8213, "n": 10,
                                "clean_acc": 0.9, "robust_acc": 0.1},
    "rollout": {"pixel_acc": 0.72, "miou": 0.52, "map": 0.82, "n": 10, "clean_acc": 0.9, "robust_acc": 0.1},
    "transformer_attribution+dds": {"pixel_acc": 0.77, "miou": 0.58, "map": 0.85, "n": 10,
                                    "clean_acc": 0.88, "robust_acc": 0.6},
}


def test_keys_and_radius_labels():
    assert split_key("lrp+dds") == ("lrp", True) and split_key("lrp") == ("lrp", False)
    assert radius_label(8 / 255) == "8/255" and radius_label("0") == "0" and radius_label(0.5) == "0.5"


def test_segmentation_table_layout():
    t = segmentation_table(SEG)
    assert t.columns == ["Method", "Pix. Acc.", "mIoU", "mAP", "Clean Acc.", "Rob. Acc.", "n"]
    assert [r[0] for r in t.rows] == ["TA", "TA + DDS", "Rollout"]  # +DDS right after its base
    md = t.to_markdown()
    assert "| TA | 0.7312 | 0.5201 | 0.8213 | 0.9000 | 0.1000 | 10 |" in md
    csv = t.to_csv().splitlines()
    assert csv[0] == "Method,Pix. Acc.,mIoU,mAP,Clean Acc.,Rob. Acc.,n" and csv[2].startswith("TA + DDS,0.77,0.58")


def test_dds_table_re_layout():
    t = dds_table(SEG, model="ViT")
    assert t.columns == ["Model", "Method", "DDS", "Pix. Acc.", "mIoU", "mAP"]
    cells = t.cells()
    assert cells[0][:3] == ["ViT", "TA", "✗"] and cells[1][:3] == ["ViT", "TA", "✓"] and cells[1][3] == "0.7700"


def test_perturbation_ablation_sensitivity_cost_tables():
    pert = {"rollout": {"8/255": {"pos_auc": 20.5, "neg_auc": 40.0, "acc": 0.5, "n": 4},
                        "0": {"pos_auc": 30.25, "neg_auc": 50.0, "acc": 1.0, "n": 4}}}
    t = perturbation_table(pert)
    assert [r[2] for r in t.rows] == ["0", "8/255"] and t.cells()[0][3] == "30.25"
    ab = ablation_table({"no_both": {"robust_acc": 0.1}, "full": {"robust_acc": 0.9, "pos_auc": 15.29}})
    assert [r[0] for r in ab.rows] == ["Ours (DDS)", "-both"] and ab.cells()[0][5] == "15.29"
    assert ab.cells()[1][2] == "—"
    sen = sensitivity_table({"8/255": {"0": 0.9, "2/255": 0.8}, "baseline": {"0": 1.0, "2/255": 0.2},
                             "4/255": {"0": 0.95, "2/255": 0.5}})
    assert sen.columns == ["σ \\ radius", "0", "2/255"]
    assert [r[0] for r in sen.rows] == ["no smoothing", "σ = 4/255", "σ = 8/255"]
    cost = cost_table({"lrp": {"seconds": 12.0, "seconds_per_image": 1.2, "energy_j": None, "co2_g": None,
                               "note": "runtime only"}})
    md = cost.to_markdown()
    assert "| LRP | ✗ | 12.0 | 1.200 | — | — |" in md and "codecarbon" in md


def test_write_report(tmp_path):
    p = write_report(tmp_path, [("segmentation", segmentation_table(SEG))], title="T")
    assert p.read_text().startswith("# T") and (tmp_path / "segmentation.csv").exists()
    data = json.loads((tmp_path / "segmentation.json").read_text())
    assert data["rows"][0][1] == 0.7312


def test_plots_and_grid_write_pngs(tmp_path):
    from fvit.viz.grid import heatmap_grid
    from fvit.viz.plots import plot_auc_vs_radius, plot_sensitivity

    pert = {k: {"0": {"pos_auc": 30.0, "neg_auc": 50.0}, "4/255": {"pos_auc": 35.0, "neg_auc": None}}
            for k in ("rollout", "rollout+dds")}
    for p in (plot_auc_vs_radius(pert, tmp_path / "auc.png"),
              plot_sensitivity({"baseline": {"0": 1.0, "2/255": 0.3}, "8/255": {"0": 0.9, "2/255": 0.8}},
                               tmp_path / "sens.png")):
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 2000
    x = torch.rand(2, 3, 16, 16)
    g = heatmap_grid({"clean": x, "attacked": x.flip(-1)},
                     {"clean / TA": torch.rand(2, 4, 4), "attacked / TA + DDS": torch.rand(2, 16, 16)},
                     tmp_path / "grid.png", row_labels=["a", "b"])
    assert g.read_bytes()[:4] == b"\x89PNG" and g.stat().st_size > 2000
