"""Result tables in the papers' layouts, rendered as Markdown, CSV or JSON.

Builders take the plain dicts returned by `fvit.bench.experiments` (never import bench):
- `segmentation_table`  Table 1 (FViT paper): method x pix acc, mIoU, mAP (+ clean / robust acc).
- `dds_table`           Table 3 ([Re]): method x DDS ✗/✓ with pix acc, mIoU, mAP.
- `perturbation_table`  AUC (pos / neg) per method and attack radius (the data of Fig. 3a-b).
- `ablation_table`      Table 2 (FViT paper): full DDS, -smoothing, -denoising, -both.
- `sensitivity_table`   Fig. 3c: robust accuracy per sigma (rows) and attack radius (columns).
- `cost_table`          Table 8 ([Re]): runtime, energy, CO2 per method ± DDS.
- `overlap_table`       top-k overlap and accuracy, clean vs attacked.
- `explanation_attack_table`  top-k overlap / segmentation under explanation attacks vs classifier PGD.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from fvit.viz.names import display, radius_value, split_key

MISSING = "—"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    digits: int | list[int] = 2
    notes: list[str] = field(default_factory=list)

    def _digits(self, j: int) -> int:
        return self.digits[j] if isinstance(self.digits, list) else self.digits

    def cells(self) -> list[list[str]]:
        return [[fmt(v, self._digits(j)) for j, v in enumerate(r)] for r in self.rows]

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" if j == 0 else "---:" for j in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.cells()]
        if self.notes:
            lines += [""] + [f"_{n}_" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow(["" if v is None else v for v in r])
        return buf.getvalue()

    def to_json(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=float)


def _order(keys) -> list[str]:
    """Method keys in insertion order, each base method's '+dds' right after it."""
    keys = list(keys)
    bases = list(dict.fromkeys(split_key(k)[0] for k in keys))
    return [k for b in bases for k in (b, b + "+dds") if k in keys]


def segmentation_table(results: dict[str, dict], title: str = "Segmentation (ImageNet-segmentation protocol)") -> Table:
    """Table 1 layout. results: {method_key: {pixel_acc, miou, map, n, clean_acc?, robust_acc?}}."""
    keys = _order(results)
    with_acc = any("clean_acc" in results[k] or "robust_acc" in results[k] for k in keys)
    cols = ["Method", "Pix. Acc.", "mIoU", "mAP"] + (["Clean Acc.", "Rob. Acc."] if with_acc else []) + ["n"]
    rows = []
    for k in keys:
        r = results[k]
        row = [display(k), r.get("pixel_acc"), r.get("miou"), r.get("map")]
        if with_acc:
            row += [r.get("clean_acc"), r.get("robust_acc")]
        rows.append(row + [r.get("n")])
    return Table(title, cols, rows, digits=4)


def dds_table(results: dict[str, dict], model: str | None = None,
              title: str = "Segmentation with and without DDS ([Re] Table 3 layout)") -> Table:
    """[Re] Table 3 layout: one row per method and DDS ✗/✓."""
    cols = (["Model"] if model else []) + ["Method", "DDS", "Pix. Acc.", "mIoU", "mAP"]
    rows = []
    for k in _order(results):
        base, dds = split_key(k)
        r = results[k]
        rows.append(([model] if model else []) + [display(base), dds, r.get("pixel_acc"), r.get("miou"), r.get("map")])
    return Table(title, cols, rows, digits=4)


def _sorted_radii(labels) -> list[str]:
    return sorted(labels, key=radius_value)


def perturbation_table(results: dict[str, dict[str, dict]],
                       title: str = "Perturbation test AUC (x100) against attack radius") -> Table:
    """results: {method_key: {radius_label: {pos_auc, neg_auc, acc, n}}} -> long format rows."""
    cols = ["Method", "DDS", "Radius", "Pos. AUC ↓", "Neg. AUC ↑", "Acc.", "n"]
    rows = []
    for k in _order(results):
        base, dds = split_key(k)
        for rad in _sorted_radii(results[k]):
            r = results[k][rad]
            rows.append([display(base), dds, rad, r.get("pos_auc"), r.get("neg_auc"), r.get("acc"), r.get("n")])
    return Table(title, cols, rows, digits=[0, 0, 0, 2, 2, 4, 0],
                 notes=["AUC: trapezoid over removed fractions 0, 0.1, ..., 0.9 of top-1 hits vs the true label, x100."])


ABLATION_ORDER = ("full", "no_smoothing", "no_denoising", "no_both")
ABLATION_NAMES = {"full": "Ours (DDS)", "no_smoothing": "-smoothing", "no_denoising": "-denoising",
                  "no_both": "-both"}


def ablation_table(results: dict[str, dict], title: str = "Ablation (FViT paper Table 2 layout)") -> Table:
    """results: {variant: {robust_acc, pixel_acc, miou, map, pos_auc, neg_auc}}."""
    cols = ["Variant", "Cls. Rob. Acc.", "Seg. Pix. Acc.", "Seg. mIoU", "Seg. mAP", "Pos. AUC ↓", "Neg. AUC ↑"]
    keys = [k for k in ABLATION_ORDER if k in results] + [k for k in results if k not in ABLATION_ORDER]
    rows = [[ABLATION_NAMES.get(k, k), results[k].get("robust_acc"), results[k].get("pixel_acc"),
             results[k].get("miou"), results[k].get("map"), results[k].get("pos_auc"), results[k].get("neg_auc")]
            for k in keys]
    return Table(title, cols, rows, digits=[0, 4, 4, 4, 4, 2, 2])


def sensitivity_table(results: dict[str, dict[str, float]],
                      title: str = "Sensitivity: robust accuracy per noise sigma and attack radius") -> Table:
    """results: {sigma_label or 'baseline': {radius_label: acc}}."""
    radii = _sorted_radii({r for v in results.values() for r in v})
    keys = (["baseline"] if "baseline" in results else []) + sorted(
        (k for k in results if k != "baseline"), key=radius_value)
    rows = [[("no smoothing" if k == "baseline" else f"σ = {k}")] + [results[k].get(r) for r in radii] for k in keys]
    return Table(title, ["σ \\ radius"] + radii, rows, digits=4)


def cost_table(costs: dict[str, dict], title: str = "Cost per method ([Re] Table 8 layout)") -> Table:
    """costs: {method_key: Cost.as_dict()}; energy / CO2 None -> '—' and a note."""
    cols = ["Method", "DDS", "Time (s)", "s / image", "Energy (J)", "CO2 (g)"]
    rows, notes = [], []
    for k in _order(costs):
        base, dds = split_key(k)
        c = costs[k]
        rows.append([display(base), dds, c.get("seconds"), c.get("seconds_per_image"), c.get("energy_j"), c.get("co2_g")])
        if c.get("note") and c["note"] not in notes:
            notes.append(c["note"])
    if any(r[4] is None for r in rows):
        notes.append("Energy and CO2 not measured (—): install codecarbon, `pip install 'fvit[energy]'`.")
    return Table(title, cols, rows, digits=[0, 0, 1, 3, 0, 2], notes=notes)


def overlap_table(results: dict[str, dict], title: str = "Clean vs attacked: top-k overlap and accuracy") -> Table:
    """results: {method_key: {topk_overlap, clean_acc, robust_acc, k}}."""
    cols = ["Method", "Top-k overlap", "k", "Clean Acc.", "Rob. Acc."]
    rows = [[display(k), results[k].get("topk_overlap"), results[k].get("k"), results[k].get("clean_acc"),
             results[k].get("robust_acc")] for k in _order(results)]
    return Table(title, cols, rows, digits=[0, 4, 0, 4, 4])


ATTACK_NAMES = {"clean": "none (clean)", "pgd": "classifier PGD", "topk": "top-k (expl.)",
                "target-map": "target map (expl.)", "soft-topk": "soft top-k (expl.)",
                "warm-start": "warm start from PGD (expl.)", "suite": "strongest (expl. suite)"}


def _with_interval(v: dict | None, digits: int = 3):
    """The mean with its confidence interval when the result has one (``topk_overlap_ci``)."""
    from fvit.metrics.intervals import format_interval

    if not v:
        return None
    ci = v.get("topk_overlap_ci")
    return format_interval(ci, digits) if ci and ci.get("n", 0) > 1 else v.get("topk_overlap")


def explanation_attack_table(results: dict[str, dict], title: str = "Explanation attacks ± DDS") -> Table:
    """One row per method key and attack; top-k overlap and mIoU per radius, then rank correlation,
    mAP and the prediction-change rate at the largest radius.

    results: `run_explanation_attack(...)["methods"]`: {method_key: {attack: {radius: {...}}}}.
    """
    radii = _sorted_radii({r for per in results.values() for a, rs in per.items() if a != "clean" for r in rs})
    top = radii[-1] if radii else None
    cols = (["Method", "DDS", "Attack"] + [f"Top-k ov. {r}" for r in radii] + [f"mIoU {r}" for r in radii]
            + [f"Rank corr. {top}", f"mAP {top}", f"Pred. changed {top}"])
    rows = []
    for key in _order(results):
        base, dds = split_key(key)
        clean = results[key].get("clean", {}).get("0", {})
        for attack, per in results[key].items():
            if attack == "clean":
                continue
            last = per.get(top, {})
            rows.append([display(base), dds, ATTACK_NAMES.get(attack, attack)]
                        + [_with_interval(per.get(r)) for r in radii]
                        + [per.get(r, {}).get("miou") for r in radii]
                        + [last.get("rank_corr"), last.get("map"), last.get("changed")])
        if clean:
            rows.append([display(base), dds, ATTACK_NAMES["clean"]] + [None] * len(radii)
                        + [clean.get("miou")] * len(radii) + [None, clean.get("map"), None])
    digits = [0, 0, 0] + [3] * (2 * len(radii)) + [3, 3, 3]
    notes = ["top-k overlap of the clean vs the attacked patch map (Definition 4.1); mIoU / mAP of the attacked "
             "pixel map vs the object mask; 'pred. changed': share of images whose explained class (DDS: the "
             "smoothed prediction) changed; the clean row repeats the clean maps' mIoU in every radius column.",
             "[lo, hi]: 95 % percentile bootstrap interval of the mean over images (fvit.metrics.mean_interval)."]
    return Table(title, cols, rows, digits=digits, notes=notes)


def dds_effect_table(comparisons: dict, radius: str, attacks: tuple[str, ...] = ("pgd", "suite"),
                     title: str | None = None) -> Table:
    """Per method and attack at ``radius``: the paired difference of the top-k overlap, with DDS
    minus without, over the same images, its interval and the verdict it allows
    (`fvit.metrics.verdict`: "DDS keeps more of the map" only when the interval lies above 0).

    comparisons: `run_explanation_attack(...)["comparisons"]`."""
    from fvit.metrics.intervals import format_interval, verdict

    rows = []
    for base, per in comparisons.get("dds", {}).items():
        for attack in attacks:
            d = per.get(attack, {}).get(radius)
            if d is None:
                continue
            word = verdict(d, higher="DDS keeps more of the map", lower="DDS keeps less of the map")
            rows.append([display(base), ATTACK_NAMES.get(attack, attack), format_interval(d), d["n"],
                         word.split(" (")[0]])
    return Table(title or f"Effect of DDS on the top-k overlap at ε={radius} (with − without, paired)",
                 ["Method", "Attack", "Δ overlap [95 % CI]", "n", "Verdict"], rows, digits=[0, 0, 0, 0, 0],
                 notes=["Δ > 0: the DDS map keeps more of its clean top-k under the attack. Paired percentile "
                        "bootstrap over the images; a verdict is stated only when the interval excludes 0."])


def adversary_table(results: dict[str, dict], comparisons: dict, radius: str,
                    title: str | None = None) -> Table:
    """Is the explanation adversary at least as strong as classifier PGD? Per method key at
    ``radius``: the overlap under PGD and under the suite, the paired difference (suite − PGD, < 0:
    the suite moves the map more), PGD's prediction-change rate and the share of images whose
    prediction the suite kept."""
    from fvit.metrics.intervals import format_interval

    rows = []
    for key in _order(results):
        base, dds = split_key(key)
        per = results[key]
        pgd, suite = per.get("pgd", {}).get(radius), per.get("suite", {}).get(radius)
        if not pgd or not suite:
            continue
        d = comparisons.get("vs_pgd", {}).get(key, {}).get("suite", {}).get(radius)
        stronger = None if d is None else ("yes" if d["hi"] < 0 else "at least as strong" if d["mean"] <= 0
                                           else "no (significant)" if d["lo"] > 0 else "no significant difference")
        rows.append([display(base), dds, pgd.get("topk_overlap"), suite.get("topk_overlap"), format_interval(d),
                     pgd.get("changed"), suite.get("changed"), stronger])
    return Table(title or f"Strongest explanation attack vs classifier PGD at ε={radius}",
                 ["Method", "DDS", "Overlap PGD", "Overlap suite", "Δ suite − PGD [95 % CI]", "PGD pred. changed",
                  "Suite pred. changed", "Suite stronger?"], rows, digits=[0, 0, 3, 3, 0, 3, 3, 0],
                 notes=["suite: per image the worst kept map of the explanation attacks (chosen by what the attacker "
                        "sees: the exact map, or its own DDS draws); PGD attacks the plain model's prediction and may "
                        "change it (then the map explains another class)."])


def frontier_table(results: dict, title: str = "The smoothing frontier: faithfulness, robustness, certificates") -> Table:
    """One row per method without DDS and per (sigma, m, fusion, method) cell of
    `fvit bench frontier` (results: its ``results`` dict)."""
    from fvit.metrics.intervals import format_interval
    from fvit.viz.names import radius_label

    radii = []
    for c in results.get("cells", []):
        radii = list(c.get("certified_accuracy", {}))
        if radii:
            break
    cols = (["Method", "σ", "m", "Fusion", "Pixel acc", "mIoU", "mAP", "Pos. AUC", "Attacked overlap [95 % CI]",
             "Smoothed acc clean", "Smoothed acc attacked", "Top-k radius"]
            + [f"Cert. acc R={r}" for r in radii])
    rows = []
    for method, v in results.get("plain", {}).items():
        rows.append([display(method), "—", "—", "no DDS", v["pixel_acc"], v["miou"], v["map"], v["pos_auc"],
                     format_interval(v["topk_overlap_ci"]), None, None, None] + [None] * len(radii))
    front = set(results.get("pareto", []))
    for i, c in enumerate(results.get("cells", [])):
        rows.append([display(c["method"]) + (" *" if i in front else ""), radius_label(c["sigma"]), c["samples"],
                     c["fusion"], c["pixel_acc"], c["miou"], c["map"], c["pos_auc"],
                     format_interval(c["topk_overlap_ci"]), c["smoothed_clean_acc"], c["smoothed_attacked_acc"],
                     c.get("topk_radius")] + [c.get("certified_accuracy", {}).get(r) for r in radii])
    p = results.get("protocol", {})
    notes = ["* on the Pareto front of its method (no other cell has both a higher clean mIoU and a higher "
             "attacked overlap). Attacked overlap: top-k overlap of the clean and the attacked map under the "
             f"strongest adaptive explanation attack (l_inf ε={radius_label(p['eps']) if 'eps' in p else '?'}, per "
             "image the worst kept map of the objectives); smoothed accuracy under the classifier attack run "
             "adaptively through DDS. Radii: " + str(p.get("radius_units", "")) + "."]
    return Table(title, cols, rows, digits=[0, 0, 0, 0, 3, 3, 3, 2, 0, 3, 3, 4] + [3] * len(radii), notes=notes)
