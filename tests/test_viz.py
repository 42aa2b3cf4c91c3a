"""fvit.viz: tables from hand-made result dicts; plots checked through their figure data and decoded PNGs."""

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


def _png(path):
    import numpy as np
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)


def test_plots_draw_the_given_numbers(tmp_path, monkeypatch):
    import math

    import matplotlib.colors as mcolors

    import fvit.viz.plots as plots

    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    pert = {"rollout": {"4/255": {"pos_auc": 35.0, "neg_auc": None}, "0": {"pos_auc": 30.0, "neg_auc": 50.0}},
            "rollout+dds": {"0": {"pos_auc": 20.0, "neg_auc": 60.0}, "4/255": {"pos_auc": 22.0, "neg_auc": 58.0}}}
    auc_png = _png(plots.plot_auc_vs_radius(pert, tmp_path / "auc.png"))
    pos_ax, neg_ax = figures[-1].axes[:2]
    lines = {ln.get_label(): ln for ln in pos_ax.get_lines()}
    assert len(lines) == 2
    plain, dds = (next(ln for label, ln in lines.items() if ("DDS" in label) == d) for d in (False, True))
    assert list(plain.get_xdata()) == [0, 4 / 255] and list(plain.get_ydata()) == [30.0, 35.0]  # sorted by radius
    assert list(dds.get_ydata()) == [20.0, 22.0]
    assert plain.get_linestyle() == "-" and dds.get_linestyle() == "--"
    assert mcolors.same_color(plain.get_color(), dds.get_color())  # one colour per method, ± DDS
    neg = {("DDS" in ln.get_label()): list(ln.get_ydata()) for ln in neg_ax.get_lines()}
    assert neg[True] == [60.0, 58.0] and neg[False][0] == 50.0 and math.isnan(neg[False][1])  # None -> gap
    # the PNG: about 11 x 4 inches at 120 dpi (tight box), not blank
    h, w, _ = auc_png.shape
    assert 0.8 * 1320 < w < 1.1 * 1320 and 0.8 * 480 < h < 1.2 * 480 and auc_png.std() > 10

    sens = {"8/255": {"2/255": 0.8, "0": 0.9}, "baseline": {"0": 1.0, "2/255": 0.3}}
    sens_png = _png(plots.plot_sensitivity(sens, tmp_path / "sens.png"))
    got = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()), ln.get_linestyle())
           for ln in figures[-1].axes[0].get_lines()}
    assert got == {"no smoothing": ([0, 2 / 255], [1.0, 0.3], ":"), "σ = 8/255": ([0, 2 / 255], [0.9, 0.8], "-")}
    h, w, _ = sens_png.shape
    assert 0.8 * 720 < w < 1.1 * 720 and 0.8 * 480 < h < 1.2 * 480 and sens_png.std() > 10


def test_heatmap_grid_draws_images_and_overlays(tmp_path):
    """Row a: a red image, row b: a green one; one image column and one overlay column whose map
    is 1 on the left half and 0 on the right: overlays 0.5 image + 0.5 jet(1 | 0)."""
    import matplotlib
    import numpy as np

    from fvit.viz.grid import heatmap_grid

    x = torch.zeros(2, 3, 16, 16)
    x[0, 0], x[1, 1] = 1.0, 1.0
    heat = torch.zeros(2, 4, 4)
    heat[:, :, :2] = 1.0
    png = _png(heatmap_grid({"clean": x}, {"clean / TA": heat}, tmp_path / "grid.png", row_labels=["a", "b"]))
    jet = matplotlib.colormaps["jet"]

    def count(rgb01):
        target = np.round(np.asarray(rgb01) * 255)
        return int((np.abs(png - target).max(-1) <= 3).sum())

    red, green = count([1, 0, 0]), count([0, 1, 0])
    assert red > 5000 and abs(red - green) < 0.05 * red  # two equal image cells
    for base in ([1, 0, 0], [0, 1, 0]):
        hot = count(0.5 * np.array(base) + 0.5 * np.array(jet(1.0)[:3]))
        cold = count(0.5 * np.array(base) + 0.5 * np.array(jet(0.0)[:3]))
        # each overlay cell: half hot, half cold (the bilinear seam aside), each half about half a cell
        assert 0.3 * red < hot < 0.55 * red and 0.3 * red < cold < 0.55 * red, (base, hot, cold, red)
