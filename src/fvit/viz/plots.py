"""Matplotlib (Agg) plots of the benchmark results: AUC vs attack radius, sensitivity curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - headless everywhere
import matplotlib.pyplot as plt  # noqa: E402

from fvit.viz.names import display, radius_value, split_key  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _radius_axis(ax, labels: list[str]) -> None:
    ax.set_xticks([radius_value(r) for r in labels])
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0)
    ax.set_xlabel("attack radius (l_inf, [0,1] pixels)")


def plot_auc_vs_radius(results: dict[str, dict[str, dict]], path: str | Path,
                       title: str = "Perturbation test under attack") -> Path:
    """Two panels (positive: lower is better; negative: higher is better), one line per method key,
    solid without DDS and dashed with it, same colour for a method ± DDS (paper Fig. 3a-b)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bases = list(dict.fromkeys(split_key(k)[0] for k in results))
    colours = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    all_radii: set[str] = set()
    for key, per_radius in results.items():
        base, dds = split_key(key)
        radii = sorted(per_radius, key=radius_value)
        all_radii |= set(radii)
        xs = [radius_value(r) for r in radii]
        for ax, metric in zip(axes, ("pos_auc", "neg_auc")):
            ys = [per_radius[r].get(metric) for r in radii]
            ys = [float("nan") if y is None else y for y in ys]
            ax.plot(xs, ys, marker="o", color=colours[base], linestyle="--" if dds else "-", label=display(key))
    labels = sorted(all_radii, key=radius_value)
    for ax, name in zip(axes, ("Positive perturbation AUC (lower is better)", "Negative perturbation AUC (higher is better)")):
        ax.set_title(name)
        ax.set_ylabel("AUC (x100)")
        _radius_axis(ax, labels)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def plot_sensitivity(results: dict[str, dict[str, float]], path: str | Path,
                     title: str = "Robust accuracy of the smoothed classifier (paper Fig. 3c)") -> Path:
    """One line per sigma (and the unsmoothed baseline), accuracy against attack radius."""
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = (["baseline"] if "baseline" in results else []) + sorted(
        (k for k in results if k != "baseline"), key=radius_value)
    all_radii: set[str] = set()
    for k in keys:
        radii = sorted(results[k], key=radius_value)
        all_radii |= set(radii)
        ax.plot([radius_value(r) for r in radii], [results[k][r] for r in radii], marker="o",
                color="k" if k == "baseline" else None, linestyle=":" if k == "baseline" else "-",
                label="no smoothing" if k == "baseline" else f"σ = {k}")
    _radius_axis(ax, sorted(all_radii, key=radius_value))
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def plot_overlap_vs_radius(results: dict[str, dict], path: str | Path,
                           title: str = "Top-k overlap (clean vs attacked map) against attack radius") -> Path:
    """One panel per attack (classifier PGD, then the explanation attacks), one line per method key
    (solid without DDS, dashed with it, one colour per method), top-k overlap against radius, with
    the clean point (radius 0, the map against itself) first.

    results: `run_explanation_attack(...)["methods"]`: {method_key: {attack: {radius: {...}}}}.
    """
    attacks = list(dict.fromkeys(a for per in results.values() for a in per if a != "clean"))
    fig, axes = plt.subplots(1, max(1, len(attacks)), figsize=(4.6 * max(1, len(attacks)), 4), squeeze=False)
    bases = list(dict.fromkeys(split_key(k)[0] for k in results))
    colours = {b: f"C{i % 10}" for i, b in enumerate(bases)}
    for ax, attack in zip(axes[0], attacks):
        labels: set[str] = {"0"}
        for key, per in results.items():
            base, dds = split_key(key)
            points = {**{r: v for r, v in per.get("clean", {}).items()}, **per.get(attack, {})}
            radii = sorted(points, key=radius_value)
            labels |= set(radii)
            ys = [points[r].get("topk_overlap") for r in radii]
            ax.plot([radius_value(r) for r in radii], [float("nan") if y is None else y for y in ys], marker="o",
                    color=colours[base], linestyle="--" if dds else "-", label=display(key))
        ax.set_title(attack)
        ax.set_ylabel("top-k overlap")
        ax.set_ylim(-0.02, 1.02)
        _radius_axis(ax, sorted(labels, key=radius_value))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def plot_frontier(results: dict, path: str | Path, x: str = "miou", y: str = "topk_overlap",
                  title: str = "The smoothing frontier") -> Path:
    """Clean faithfulness (``x``, default mIoU of the clean DDS map) against robustness (``y``,
    the top-k overlap under the strongest adaptive explanation attack), one colour per method, one
    marker per fusion, marker area growing with the certified top-k radius, each point labelled with
    its sigma; the method without DDS as a black-edged square."""
    from fvit.viz.names import radius_label

    fig, ax = plt.subplots(figsize=(7, 5))
    cells = results.get("cells", [])
    methods = list(dict.fromkeys([c["method"] for c in cells] + list(results.get("plain", {}))))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    markers = {f: mk for f, mk in zip(dict.fromkeys(c["fusion"] for c in cells), "o^sDvP")}
    radii = [c.get("topk_radius") or 0.0 for c in cells]
    top = max(radii + [1e-12])
    for c, r in zip(cells, radii):
        if c.get(x) is None or c.get(y) is None:
            continue
        ax.scatter(c[x], c[y], s=30 + 300 * r / top, color=colours[c["method"]], marker=markers[c["fusion"]],
                   alpha=0.8, edgecolors="none")
        ax.annotate(radius_label(c["sigma"]), (c[x], c[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for m, v in results.get("plain", {}).items():
        if v.get(x) is not None and v.get(y) is not None:
            ax.scatter(v[x], v[y], s=60, color=colours[m], marker="s", edgecolors="black", linewidths=1.2)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=display(m)) for m in methods]
    handles += [plt.Line2D([], [], color="grey", marker=mk, linestyle="", label=f"fusion {f}") for f, mk in markers.items()]
    handles += [plt.Line2D([], [], color="grey", marker="s", markeredgecolor="black", linestyle="", label="no DDS")]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel("clean faithfulness (mIoU of the clean map vs the object mask)")
    ax.set_ylabel("top-k overlap under the strongest adaptive attack")
    ax.grid(alpha=0.3)
    ax.set_title(title + " (marker area: certified top-k radius)")
    return _save(fig, path)
