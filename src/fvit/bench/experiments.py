"""The papers' experiments as in-memory runners (used by `fvit bench ...` and `fvit demo`).

Every runner takes a model, a data set (items: image, label, mask?, id), method names, an optional
`DDS`, an attack spec and an optional `ResultsStore`; it runs batched over images (see
`fvit.bench.runner`: resumable, sharded) and returns plain dicts that `fvit.viz` renders.

Protocol choices (documented, shared by all runners):
- The attack (if any) is applied first, against the plain model's clean prediction (the papers);
  every method, with or without DDS, then explains the attacked image.
- Explanation target: `target="prediction"` (default; Chefer et al.'s evaluation): each method
  explains its own prediction on the image it sees (the plain model's for plain methods, the
  smoothed prediction for DDS). `target="clean"`: the plain model's clean prediction.
- Method keys: the canonical method name, `+dds` when wrapped by `DDSExplainer`. When `dds` is
  given and no name carries `+dds`, every method runs both without and with DDS ([Re] Table 3).
- Perturbation test: hits against the true label, classified by the plain model, AUC = trapezoid
  over p = 0, 0.1, ..., 0.9 (x100) of the accuracy over *all* images (Chefer et al. / FACTS);
  `only_correct=True` gives the [Re] study's variant (AUC over the images whose prediction on the
  attacked image was correct).
- Accuracy for unlabelled sets (ImageNet-segmentation has no labels): segmentation reports
  `agreement` (attacked prediction == clean prediction) and leaves clean/robust accuracy empty;
  ablation and sensitivity measure accuracy against the clean prediction and say so (`reference`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from fvit.bench.distributed import DistContext
from fvit.bench.runner import BatchContext, RunOutput, run_rows
from fvit.bench.store import ResultsStore
from fvit.data import subsample
from fvit.errors import FvitError
from fvit.metrics.perturbation import DEFAULT_FRACTIONS
from fvit.registry import canonical
from fvit.utils import parse_number
from fvit.viz.names import DDS_SUFFIX, method_key, radius_label, split_key

TARGET_MODES = ("prediction", "clean")


# ------------------------------------------------------------------------------------------------
# Specs
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackSpec:
    """An attack by name with its options; `build(seed, eps)` makes the `fvit.attacks` object."""

    name: str = "pgd"
    eps: float = 8 / 255
    steps: int | None = None
    step_size: str | float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, seed: int, eps: float | None = None):
        from fvit.attacks import get_attack

        return get_attack(self.name, self.eps if eps is None else eps, steps=self.steps,
                          step_size=self.step_size, seed=seed, **dict(self.options))

    def as_config(self) -> dict:
        return {"name": canonical(self.name), "eps": self.eps, "steps": self.steps,
                "step_size": self.step_size, **dict(self.options)}


def as_attack(attack: AttackSpec | str | Mapping | None) -> AttackSpec | None:
    if attack is None or isinstance(attack, AttackSpec):
        return attack
    if isinstance(attack, str):
        return AttackSpec(attack)
    if isinstance(attack, Mapping):
        a = dict(attack)
        known = {f.name for f in dataclasses.fields(AttackSpec)} - {"options"}
        return AttackSpec(**{k: a.pop(k) for k in list(a) if k in known}, options=a)
    raise FvitError(f"attack must be a name, an AttackSpec or a dict, got {type(attack).__name__}")


Explainer = Callable[..., Any]  # (model, images01, target=None) -> Explanation


MethodItem = Any  # a name ('ta', 'ta+dds'), an ExplanationMethod, or (ExplanationMethod, with_dds)


def resolve_methods(methods: Sequence[MethodItem], dds: Any = None) -> dict[str, Any]:
    """Method key -> the (parameterised) method instance it runs. Items are names (`ta` ->
    'transformer_attribution', 'ta+dds' for the DDS-wrapped one), method instances (key: their
    ``spec``, e.g. 'rollout:start_layer=1') or ``(instance, with_dds)`` pairs. '+dds' twins are added
    when dds is given and no item asks for DDS explicitly (see module doc)."""
    from fvit.explain import ExplanationMethod, get_method

    pairs = []
    for m in methods:
        if isinstance(m, tuple):
            inst, with_dds = m
        elif isinstance(m, ExplanationMethod):
            inst, with_dds = m, False
        else:
            base, with_dds = split_key(canonical(m))
            inst = get_method(base)
        pairs.append((method_key(inst.spec, with_dds), inst))
    keys = [k for k, _ in pairs]
    if any(split_key(k)[1] for k in keys):
        if dds is None:
            raise FvitError(f"methods {', '.join(k for k in keys if k.endswith(DDS_SUFFIX))} need a DDS "
                            f"(a denoiser); none was given")
        return dict(pairs)
    if dds is not None:
        pairs = [p for k, inst in pairs for p in ((k, inst), (method_key(k, True), inst))]
    return dict(pairs)


def method_keys(methods: Sequence[MethodItem], dds: Any = None) -> list[str]:
    """The result keys of `resolve_methods` (method spec, '+dds' when DDS wraps it)."""
    return list(resolve_methods(methods, dds))


def method_settings(resolved: Mapping[str, Any]) -> dict[str, dict]:
    """{key: {name, params}}: every resolved method parameter, for results files."""
    return {k: {"name": m.name, "params": dict(m.params)} for k, m in resolved.items()}


def build_explainers(keys: "Sequence[str] | Mapping[str, Any]", dds: Any = None,
                     fuse: str = "max-drop10") -> dict[str, Explainer]:
    """Explainers per key: ``keys`` are default-parameter keys ('rollout', 'ta+dds'), or the mapping
    `resolve_methods` returns (key -> method instance)."""
    from fvit.explain import get_method

    out: dict[str, Explainer] = {}
    for key in keys:
        base, with_dds = split_key(key)
        method = keys[key] if isinstance(keys, Mapping) else get_method(base)
        if with_dds:
            from fvit.dds import DDSExplainer

            method = DDSExplainer(method, dds, fuse=fuse)
        out[key] = method
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _prepare(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    return subsample(dataset, limit, seed) if limit is not None else dataset


def _check_target(target: str) -> str:
    if target not in TARGET_MODES:
        raise FvitError(f"target must be one of {', '.join(TARGET_MODES)}, got {target!r}")
    return target


def _predict(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(dim=1)


def _smoothed_predict(model, dds, images, bctx: BatchContext) -> torch.Tensor:
    return dds.smoothed_predict(model, images, keys=_dds_keys(bctx, images))


def _attacked(attack: AttackSpec | None, model, images, labels, bctx: BatchContext, eps: float | None = None):
    """Images under the attack (against `labels`, the clean prediction), or the images themselves."""
    e = attack.eps if (attack is not None and eps is None) else eps
    if attack is None or not e:
        return images
    with bctx.timed("attack"):
        return attack.build(bctx.seed, e)(model, images, labels)


def _dds_keys(bctx: BatchContext, images) -> list[str] | None:
    """Per-image DDS noise keys: the data-set ids (so an image's noise depends only on the DDS seed
    and its id, not on the batch; clean and attacked versions share it). None (content hashes) when
    the context carries no ids."""
    ids = list(bctx.ids)
    return ids if len(ids) == images.shape[0] else None


def _explain(explainer, model, images, target_mode: str, clean_pred, bctx, key):
    tgt = None if target_mode == "prediction" else clean_pred
    with bctx.timed(key):
        dds = getattr(explainer, "dds", None)
        if dds is not None:
            return explainer(model, images, target=tgt, keys=_dds_keys(bctx, images))
        return explainer(model, images, target=tgt)


def _labels_known(batch) -> bool:
    return bool((batch["label"] >= 0).all())


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------------
# Segmentation (FViT Table 1, [Re] Tables 1, 3, 5)
# ------------------------------------------------------------------------------------------------

def run_segmentation(model, dataset: Dataset, methods: Sequence[str], *, dds=None, attack=None,
                     store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None,
                     seed: int = 0, progress: bool = True, topk: int = 0, target: str = "prediction",
                     fuse: str = "max-drop10", ctx: DistContext | None = None,
                     max_batches: int | None = None, with_clean: bool = False) -> dict[str, dict]:
    """Chefer et al.'s segmentation test, optionally under attack, per method key.

    Returns {method_key: {pixel_acc, miou, map, n, clean_acc, robust_acc, agreement,
    topk_overlap (when topk > 0 and an attack is given), seconds}}.

    with_clean (with an attack): also score the explanations of the clean images, which the top-k
    overlap computes anyway, under the keys '<method_key>@clean' (the rows a run with attack=None
    gives, at no extra explanation cost).
    """
    from fvit.metrics import segmentation_rows, topk_overlap

    _check_target(target)
    attack = as_attack(attack)
    resolved = resolve_methods(methods, dds)
    keys = list(resolved)
    explainers = build_explainers(resolved, dds, fuse)
    dataset = _prepare(dataset, limit, seed)
    device = _device(model)
    attacked_run = attack is not None and attack.eps > 0
    want_overlap = topk > 0 and attacked_run
    with_clean = with_clean and attacked_run
    settings = keys + [_clean_key(k) for k in keys] if with_clean else keys

    def compute(batch: dict, bctx: BatchContext) -> list[dict]:
        if "mask" not in batch:
            raise FvitError("segmentation needs a data set with masks (imagenet-seg, masks:…, world)")
        x, masks = batch["image"].to(device), batch["mask"].to(device)
        clean_pred = _predict(model, x)
        adv = _attacked(attack, model, x, clean_pred, bctx)
        smooth_clean = (_smoothed_predict(model, dds, x, bctx)
                        if any(split_key(k)[1] for k in keys) else None)
        plain_adv = _predict(model, adv)

        def scored(setting: str, e, plain_pred, with_dds: bool, overlap=None) -> list[dict]:
            seg = segmentation_rows(e.pixel.detach().float(), masks)
            pred = (e.target if target == "prediction" else e.prediction) if with_dds else plain_pred
            pred_clean = smooth_clean if with_dds else clean_pred
            out = []
            for i, id_ in enumerate(batch["id"]):
                row = {"id": id_, "setting": setting, **seg[i], "label": int(batch["label"][i]),
                       "pred_clean": int(pred_clean[i]), "pred_adv": int(pred[i])}
                if overlap is not None:
                    row["overlap"] = overlap[i]
                out.append(row)
            return out

        rows = []
        for key, explainer in explainers.items():
            with_dds = split_key(key)[1]
            e = _explain(explainer, model, adv, target, clean_pred, bctx, key)
            e_clean = (_explain(explainer, model, x, target, clean_pred, bctx, key)
                       if want_overlap or with_clean else None)
            overlap = None
            if want_overlap:
                k = min(int(topk), e.patch[0].numel())
                overlap = topk_overlap(e_clean.patch.detach().float(), e.patch.detach().float(), k).tolist()
            rows += scored(key, e, plain_adv, with_dds, overlap)
            if with_clean:
                rows += scored(_clean_key(key), e_clean, clean_pred, with_dds)
        return rows

    out = run_rows(dataset, settings, compute, store=store, batch_size=batch_size, seed=seed, progress=progress,
                   ctx=ctx, desc="segmentation", max_batches=max_batches)
    return summarise_segmentation(out, settings, topk)


CLEAN_SUFFIX = "@clean"  # run_segmentation(with_clean=True): settings scored on the clean images


def _clean_key(key: str) -> str:
    return f"{key}{CLEAN_SUFFIX}"


def summarise_segmentation(out: RunOutput, keys: Sequence[str], topk: int = 0) -> dict[str, dict]:
    from fvit.metrics import aggregate_segmentation

    result = {}
    for key in keys:
        rows = [r for r in out.rows if r["setting"] == key]
        if not rows:
            continue
        agg = aggregate_segmentation(rows)
        labelled = [r for r in rows if r["label"] >= 0]
        res = {"pixel_acc": agg["pixel_acc"], "miou": agg["miou"], "map": agg["map"], "n": len(rows),
               "clean_acc": _mean(r["pred_clean"] == r["label"] for r in labelled),
               "robust_acc": _mean(r["pred_adv"] == r["label"] for r in labelled),
               "agreement": _mean(r["pred_adv"] == r["pred_clean"] for r in rows),
               "seconds": out.timings.get(key)}
        if any("overlap" in r for r in rows):
            res["topk_overlap"] = _mean(r["overlap"] for r in rows if "overlap" in r)
            res["k"] = topk
        result[key] = res
    return result


# ------------------------------------------------------------------------------------------------
# Perturbation test against attack radius (FViT Fig. 3a-b, [Re] Fig. 1)
# ------------------------------------------------------------------------------------------------

def _radii(radii: Sequence[float | str]) -> list[tuple[str, float]]:
    vals = [(radius_label(r), parse_number(r, "radius")) for r in radii]
    if not vals or any(v < 0 for _, v in vals):
        raise FvitError(f"radii must be a non-empty list of values >= 0, got {list(radii)}")
    return list(dict(vals).items())


def _setting(key: str, radius: str) -> str:
    return f"{key}@{radius}"


def run_perturbation(model, dataset: Dataset, methods: Sequence[str], *, dds=None,
                     radii: Sequence[float | str] = (0, 8 / 255), attack="pgd",
                     positive: bool = True, negative: bool = True, only_correct: bool = False,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, store: ResultsStore | None = None,
                     batch_size: int = 8, limit: int | None = None, seed: int = 0, progress: bool = True,
                     target: str = "prediction", fuse: str = "max-drop10", ctx: DistContext | None = None,
                     max_batches: int | None = None) -> dict[str, dict[str, dict]]:
    """Positive / negative perturbation AUC per method key and attack radius (0 = clean).

    Returns {method_key: {radius_label: {pos_auc, neg_auc, acc, n}}} (see module doc for the AUC
    convention and `only_correct`).
    """
    from fvit.metrics import perturbation_hits

    if not (positive or negative):
        raise FvitError("run_perturbation: enable positive and/or negative")
    _check_target(target)
    attack = as_attack(attack) or AttackSpec()
    resolved = resolve_methods(methods, dds)
    keys = list(resolved)
    explainers = build_explainers(resolved, dds, fuse)
    radii_ = _radii(radii)
    dataset = _prepare(dataset, limit, seed)
    device = _device(model)
    settings = [_setting(k, r) for k in keys for r, _ in radii_]

    def compute(batch: dict, bctx: BatchContext) -> list[dict]:
        if not _labels_known(batch):
            raise FvitError("the perturbation test needs class labels (e.g. imagenet-val:DIR, world)")
        x, labels = batch["image"].to(device), batch["label"].to(device)
        clean_pred = _predict(model, x)
        rows = []
        for r_label, r in radii_:
            adv = _attacked(attack, model, x, clean_pred, bctx, eps=r)
            plain_adv = _predict(model, adv)
            for key, explainer in explainers.items():
                e = _explain(explainer, model, adv, target, clean_pred, bctx, key)
                pred = e.target if (split_key(key)[1] and target == "prediction") else plain_adv
                pixel = e.pixel.detach().float()
                with bctx.timed(key):
                    pos = perturbation_hits(model, adv, pixel, labels, fractions, True) if positive else None
                    neg = perturbation_hits(model, adv, pixel, labels, fractions, False) if negative else None
                for i, id_ in enumerate(batch["id"]):
                    rows.append({"id": id_, "setting": _setting(key, r_label), "method": key, "radius": r_label,
                                 "label": int(labels[i]), "pred": int(pred[i]),
                                 "pos": None if pos is None else pos[i].tolist(),
                                 "neg": None if neg is None else neg[i].tolist()})
        return rows

    out = run_rows(dataset, settings, compute, store=store, batch_size=batch_size, seed=seed, progress=progress,
                   ctx=ctx, desc="perturbation", max_batches=max_batches)
    return summarise_perturbation(out, keys, [r for r, _ in radii_], fractions, only_correct)


def _auc(rows: list[dict], field_: str, fractions) -> float | None:
    from fvit.metrics import perturbation_auc

    hits = [r[field_] for r in rows if r.get(field_) is not None]
    return perturbation_auc(torch.tensor(hits, dtype=torch.bool), fractions) if hits else None


def summarise_perturbation(out: RunOutput, keys, radii: Sequence[str], fractions=DEFAULT_FRACTIONS,
                           only_correct: bool = False) -> dict[str, dict[str, dict]]:
    result: dict[str, dict[str, dict]] = {}
    for key in keys:
        per = {}
        for r in radii:
            rows = [row for row in out.rows if row["setting"] == _setting(key, r)]
            if not rows:
                continue
            used = [row for row in rows if row["pred"] == row["label"]] if only_correct else rows
            per[r] = {"pos_auc": _auc(used, "pos", fractions), "neg_auc": _auc(used, "neg", fractions),
                      "acc": _mean(row["pred"] == row["label"] for row in rows), "n": len(used)}
        if per:
            per_key = dict(sorted(per.items(), key=lambda kv: parse_number(kv[0])))
            result[key] = per_key
    return result


# ------------------------------------------------------------------------------------------------
# Ablation (FViT Table 2)
# ------------------------------------------------------------------------------------------------

ABLATION_VARIANTS = ("full", "no_smoothing", "no_denoising", "no_both")


# our variant names -> fvit.dds VARIANTS names
DDS_VARIANT = {"full": "full", "no_smoothing": "no-noise", "no_denoising": "no-denoise", "no_both": "none"}


def dds_copy(dds, **changes):
    """`dds.replace(**changes)` (kept for callers of the old helper)."""
    return dds.replace(**changes)


def ablation_dds(dds, variant: str):
    """The DDS for an ablation variant: full, no_smoothing (denoise without added noise),
    no_denoising (noise, no denoiser: plain randomized smoothing), no_both (None: the plain model)."""
    if variant not in DDS_VARIANT:
        raise FvitError(f"unknown ablation variant {variant!r}; use {', '.join(ABLATION_VARIANTS)}")
    if variant == "no_both":
        return None
    return dds_copy(dds, variant=DDS_VARIANT[variant])


def run_ablation(model, dataset: Dataset, method: str = "transformer_attribution", *, dds, attack="pgd",
                 variants: Sequence[str] = ABLATION_VARIANTS, store: ResultsStore | None = None,
                 batch_size: int = 8, limit: int | None = None, seed: int = 0, progress: bool = True,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS, fuse: str = "max-drop10",
                 ctx: DistContext | None = None, max_batches: int | None = None) -> dict[str, dict]:
    """Table 2: per DDS variant, robust accuracy, segmentation (when the set has masks) and pos / neg
    perturbation AUC (when it has labels), all under the attack.

    Returns {variant: {robust_acc, reference, pixel_acc, miou, map, pos_auc, neg_auc, n}}.
    """
    from fvit.explain import ExplanationMethod, get_method
    from fvit.metrics import perturbation_hits, segmentation_rows

    if dds is None:
        raise FvitError("the ablation needs a DDS (a denoiser)")
    attack = as_attack(attack)
    base = method if isinstance(method, ExplanationMethod) else get_method(method)
    from fvit.dds import DDSExplainer

    explainers = {}
    for v in variants:
        vd = ablation_dds(dds, v)
        explainers[v] = base if vd is None else DDSExplainer(base, vd, fuse=fuse)
    dataset = _prepare(dataset, limit, seed)
    device = _device(model)

    def compute(batch: dict, bctx: BatchContext) -> list[dict]:
        x = batch["image"].to(device)
        labels = batch["label"].to(device)
        clean_pred = _predict(model, x)
        adv = _attacked(attack, model, x, clean_pred, bctx)
        has_labels = _labels_known(batch)
        reference = labels if has_labels else clean_pred
        rows = []
        for v, explainer in explainers.items():
            e = _explain(explainer, model, adv, "prediction", clean_pred, bctx, v)
            pixel = e.pixel.detach().float()
            seg = segmentation_rows(pixel, batch["mask"].to(device)) if "mask" in batch else None
            with bctx.timed(v):
                pos = perturbation_hits(model, adv, pixel, labels, fractions, True) if has_labels else None
                neg = perturbation_hits(model, adv, pixel, labels, fractions, False) if has_labels else None
            for i, id_ in enumerate(batch["id"]):
                row = {"id": id_, "setting": v, "hit": bool(e.target[i] == reference[i]),
                       "reference": "label" if has_labels else "clean prediction"}
                if seg is not None:
                    row.update(seg[i])
                if pos is not None:
                    row.update(pos=pos[i].tolist(), neg=neg[i].tolist())
                rows.append(row)
        return rows

    out = run_rows(dataset, list(variants), compute, store=store, batch_size=batch_size, seed=seed,
                   progress=progress, ctx=ctx, desc="ablation", max_batches=max_batches)
    return summarise_ablation(out, variants, fractions)


def summarise_ablation(out: RunOutput, variants, fractions=DEFAULT_FRACTIONS) -> dict[str, dict]:
    from fvit.metrics import aggregate_segmentation

    result = {}
    for v in variants:
        rows = [r for r in out.rows if r["setting"] == v]
        if not rows:
            continue
        res = {"robust_acc": _mean(r["hit"] for r in rows),
               "reference": ", ".join(sorted({r["reference"] for r in rows})), "n": len(rows),
               "pos_auc": _auc(rows, "pos", fractions), "neg_auc": _auc(rows, "neg", fractions),
               "seconds": out.timings.get(v)}
        if all("ap" in r for r in rows):
            agg = aggregate_segmentation(rows)
            res.update(pixel_acc=agg["pixel_acc"], miou=agg["miou"], map=agg["map"])
        result[v] = res
    return result


# ------------------------------------------------------------------------------------------------
# Sensitivity: sigma x attack radius (FViT Fig. 3c)
# ------------------------------------------------------------------------------------------------

def dds_with_sigma(dds, sigma: float):
    """A copy of `dds` with another noise level (t* follows from the sigma)."""
    return dds_copy(dds, sigma=sigma)


def run_sensitivity(model, dataset: Dataset, *, dds=None, sigmas: Sequence[float | str] = (4 / 255, 8 / 255),
                    radii: Sequence[float | str] = (0, 2 / 255, 4 / 255, 8 / 255), attack="pgd",
                    dds_for_sigma: Callable[[float], Any] | None = None, store: ResultsStore | None = None,
                    batch_size: int = 8, limit: int | None = None, seed: int = 0, progress: bool = True,
                    ctx: DistContext | None = None, max_batches: int | None = None) -> dict[str, dict[str, float]]:
    """Robust accuracy of the smoothed classifier per sigma and attack radius, plus the unsmoothed
    baseline. The attack targets the plain model (the papers). Returns
    {"baseline" | sigma_label: {radius_label: accuracy}} (accuracy vs labels, or vs the clean
    prediction for unlabelled sets)."""
    attack = as_attack(attack) or AttackSpec()
    if dds_for_sigma is None:
        if dds is None:
            raise FvitError("the sensitivity analysis needs a DDS (or dds_for_sigma)")
        dds_for_sigma = lambda s: dds_with_sigma(dds, s)  # noqa: E731
    sig = [(radius_label(s), parse_number(s, "sigma")) for s in sigmas]
    smoothers = {label: dds_for_sigma(value) for label, value in sig}
    radii_ = _radii(radii)
    dataset = _prepare(dataset, limit, seed)
    device = _device(model)
    groups = ["baseline", *smoothers]
    settings = [_setting(g, r) for g in groups for r, _ in radii_]

    def compute(batch: dict, bctx: BatchContext) -> list[dict]:
        x = batch["image"].to(device)
        clean_pred = _predict(model, x)
        reference = batch["label"].to(device) if _labels_known(batch) else clean_pred
        rows = []
        for r_label, r in radii_:
            adv = _attacked(attack, model, x, clean_pred, bctx, eps=r)
            preds = {"baseline": _predict(model, adv)}
            for s_label, smoother in smoothers.items():
                with bctx.timed(s_label):
                    preds[s_label] = _smoothed_predict(model, smoother, adv, bctx)
            for g, p in preds.items():
                hit = (p == reference).tolist()
                rows += [{"id": id_, "setting": _setting(g, r_label), "hit": bool(hit[i])}
                         for i, id_ in enumerate(batch["id"])]
        return rows

    out = run_rows(dataset, settings, compute, store=store, batch_size=batch_size, seed=seed, progress=progress,
                   ctx=ctx, desc="sensitivity", max_batches=max_batches)
    result: dict[str, dict[str, float]] = {}
    for g in groups:
        per = {r: _mean(row["hit"] for row in out.rows if row["setting"] == _setting(g, r)) for r, _ in radii_}
        result[g] = {r: v for r, v in per.items() if v is not None}
    return result


# ------------------------------------------------------------------------------------------------
# Explanation attacks (Ghorbani et al. 2019, Dombrowski et al. 2019), ± DDS, vs the classifier PGD
# ------------------------------------------------------------------------------------------------

CLASSIFIER_ATTACK = "pgd"  # the papers' attack, as the comparison row ('<key>/pgd@<radius>')
CLEAN_ATTACK = "clean"  # the clean explanations' segmentation ('<key>/clean@0')


@dataclass(frozen=True)
class ExplanationAttackSpec:
    """The explanation attacks of `run_explanation_attack` (see `fvit.attacks.explanation`).

    `objectives`: names ('topk', 'target-map'); `steps`; `step_size` (None: eps * `step_fraction`,
    default eps/4); `k` (also the
    k of the reported top-k overlap); `eot`: DDS draws per step; `attack_samples`: DDS samples per
    draw inside the attack (None: the DDS's own m; fewer is cheaper, the evaluation always uses m).
    """

    objectives: tuple[str, ...] = ("topk", "target-map")
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    step_fraction: float = 1 / 4
    k: int = 10
    keep_weight: float = 1.0
    margin: float = 1.0
    eot: int = 1
    attack_samples: int | None = None
    surrogate: float | None = 10.0
    target_map: str = "roll"

    def __post_init__(self) -> None:
        from fvit.attacks.explanation import EXPLANATION_ATTACKS

        if not self.objectives:
            raise FvitError("explanation attack: give at least one objective (topk, target-map)")
        for name in self.objectives:
            EXPLANATION_ATTACKS.resolve(name)
        if self.attack_samples is not None and self.attack_samples < 1:
            raise FvitError(f"attack_samples must be >= 1, got {self.attack_samples}")
        self.build(self.objectives[0], 1 / 255, 0)  # validates every other field

    def names(self) -> list[str]:
        from fvit.attacks.explanation import EXPLANATION_ATTACKS

        return [EXPLANATION_ATTACKS.resolve(n).replace("_", "-") for n in self.objectives]

    def build(self, objective: str, eps: float, seed: int):
        from fvit.attacks import get_explanation_attack

        return get_explanation_attack(objective, eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                                      step_fraction=self.step_fraction, k=self.k, keep_weight=self.keep_weight, margin=self.margin, eot=self.eot,
                                      surrogate=self.surrogate, target_map=self.target_map, seed=seed)

    def as_config(self) -> dict:
        return {"objectives": self.names(), "norm": self.norm, "steps": self.steps, "step_size": self.step_size,
                "step_fraction": self.step_fraction, "k": self.k, "keep_weight": self.keep_weight, "margin": self.margin, "eot": self.eot,
                "attack_samples": self.attack_samples, "surrogate": self.surrogate, "target_map": self.target_map}


def _attack_explainers(explainers: dict[str, Explainer], dds, spec: ExplanationAttackSpec, fuse: str):
    """The explainers the attack differentiates: the evaluation ones, except that DDS keys use a DDS
    with `spec.attack_samples` samples per draw when that is set."""
    if dds is None or spec.attack_samples is None or spec.attack_samples == dds.samples:
        return explainers
    from fvit.dds import DDS, DDSExplainer

    cheap = DDS(dds.denoiser, dds.config.replace(samples=spec.attack_samples))
    return {k: (DDSExplainer(e.method, cheap, fuse=fuse) if split_key(k)[1] else e) for k, e in explainers.items()}


def _attack_seed(bctx: BatchContext) -> int:
    """The attack's own seed (its DDS draws are independent of the evaluation's DDS noise)."""
    return (bctx.seed * 7919 + 104_729) & 0x7FFFFFFF


def run_explanation_attack(model, dataset: Dataset, methods: Sequence[str], *, dds=None,
                           radii: Sequence[float | str] = (2 / 255, 4 / 255, 8 / 255),
                           spec: ExplanationAttackSpec | None = None, compare="pgd",
                           store: ResultsStore | None = None, batch_size: int = 8, limit: int | None = None,
                           seed: int = 0, progress: bool = True, fuse: str = "max-drop10",
                           ctx: DistContext | None = None, max_batches: int | None = None) -> dict[str, dict]:
    """Explanation attacks per method key (± DDS) and radius, next to the classifier attack.

    For every image, method key and radius: the clean explanation (each method's own prediction, the
    smoothed one for DDS) is the reference; the attacked image is made by each explanation attack of
    `spec` (against that key's explainer, adaptive through DDS for '+dds' keys: EOT over `spec.eot`
    draws, gradients through the denoiser, the clean target class kept) and by the classifier
    attack `compare` (AttackSpec / name, against the plain model's clean prediction, the papers'
    protocol; None to skip); the attacked image is explained again (DDS: the same evaluation noise
    as the clean explanation) and scored: top-k overlap with the clean map (k = `spec.k`), Spearman
    rank correlation of the patch maps, segmentation of the attacked pixel map (when the set has
    masks), and whether the explained prediction changed.

    Returns {"methods": {method_key: {attack: {radius_label: {topk_overlap, rank_corr, changed,
    pixel_acc, miou, map, objective, clean_objective, n, seconds}}}}, "protocol": {...}} with attack in
    ('clean', 'pgd', 'topk', 'target-map'); 'clean' has the single radius '0' (the clean maps'
    segmentation); "protocol" records the attack settings, steps, DDS draws and samples used.
    """
    from fvit.metrics import rank_correlation, segmentation_rows, topk_overlap

    spec = spec or ExplanationAttackSpec()
    compare = as_attack(compare)
    keys = method_keys(methods, dds)
    explainers = build_explainers(keys, dds, fuse)
    attack_explainers = _attack_explainers(explainers, dds, spec, fuse)
    radii_ = [(label, value) for label, value in _radii(radii) if value > 0]
    if not radii_:
        raise FvitError(f"explanation attack: give at least one radius > 0, got {list(radii)}")
    objectives = spec.names()
    attacks = ([CLASSIFIER_ATTACK] if compare is not None else []) + objectives
    dataset = _prepare(dataset, limit, seed)
    device = _device(model)
    settings = [_setting(f"{k}/{CLEAN_ATTACK}", "0") for k in keys]
    settings += [_setting(f"{k}/{a}", r) for k in keys for a in attacks for r, _ in radii_]

    def compute(batch: dict, bctx: BatchContext) -> list[dict]:
        x = batch["image"].to(device)
        masks = batch["mask"].to(device) if "mask" in batch else None
        clean_pred = _predict(model, x)
        clean = {key: _explain(e, model, x, "prediction", clean_pred, bctx, key) for key, e in explainers.items()}
        k = min(int(spec.k), clean[keys[0]].patch[0].numel())
        rows: list[dict] = []

        def scored(key: str, attack: str, radius: str, e, extra: dict | None = None) -> None:
            ref = clean[key]
            seg = segmentation_rows(e.pixel.detach().float(), masks) if masks is not None else None
            overlap = topk_overlap(ref.patch.float(), e.patch.detach().float(), k).tolist()
            rho = [_finite(v) for v in rank_correlation(ref.patch, e.patch.detach()).tolist()]
            changed = (_explained_class(key, e) != _explained_class(key, ref)).tolist()
            for i, id_ in enumerate(batch["id"]):
                row = {"id": id_, "setting": _setting(f"{key}/{attack}", radius), "overlap": overlap[i],
                       "rank_corr": rho[i], "changed": bool(changed[i])}
                if seg is not None:
                    row.update(seg[i])
                if extra:
                    row.update({name: _finite(values[i]) for name, values in extra.items()})
                rows.append(row)

        for key in keys:
            scored(key, CLEAN_ATTACK, "0", clean[key])
        for r_label, r in radii_:
            if compare is not None:
                adv = _attacked(compare, model, x, clean_pred, bctx, eps=r)
                for key, e in explainers.items():
                    scored(key, CLASSIFIER_ATTACK, r_label, _explain(e, model, adv, "prediction", clean_pred, bctx, key))
            for objective in objectives:
                atk = spec.build(objective, r, _attack_seed(bctx))
                for key, e in explainers.items():
                    with bctx.timed(f"{key}/{objective}"):
                        res = atk.run(attack_explainers[key], model, x, target=clean[key].target,
                                      clean_maps=clean[key].patch)
                    e_adv = _explain(e, model, res.adv, "prediction", clean_pred, bctx, key)
                    scored(key, objective, r_label, e_adv, {"objective": res.objective.tolist(),
                                                            "clean_objective": res.clean_objective.tolist()})
        return rows

    out = run_rows(dataset, settings, compute, store=store, batch_size=batch_size, seed=seed, progress=progress,
                   ctx=ctx, desc="explanation attack", max_batches=max_batches)
    with_dds = any(split_key(k)[1] for k in keys)
    protocol = {**spec.as_config(), "compare": compare.as_config() if compare else None,
                "radii": [r for r, _ in radii_], "evaluations_per_attack": spec.steps + 1,
                "dds_draws_per_step": spec.eot if with_dds else None,
                "dds_samples_per_draw": (spec.attack_samples or dds.samples) if with_dds else None,
                "dds_samples_evaluation": dds.samples if with_dds else None}
    return {"methods": summarise_explanation_attack(out, keys, attacks, [r for r, _ in radii_]),
            "protocol": protocol}


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _explained_class(key: str, e) -> torch.Tensor:
    """The class a map explains: the plain model's prediction, or DDS's smoothed one (its target)."""
    return e.target if split_key(key)[1] else e.prediction


def summarise_explanation_attack(out: RunOutput, keys: Sequence[str], attacks: Sequence[str],
                                 radii: Sequence[str]) -> dict[str, dict]:
    from fvit.metrics import aggregate_segmentation

    def summary(rows: list[dict], seconds) -> dict:
        res = {"topk_overlap": _mean(r["overlap"] for r in rows),
               "rank_corr": _mean(r["rank_corr"] for r in rows if r["rank_corr"] is not None),
               "changed": _mean(r["changed"] for r in rows), "n": len(rows), "seconds": seconds}
        if all("ap" in r for r in rows):
            agg = aggregate_segmentation(rows)
            res.update(pixel_acc=agg["pixel_acc"], miou=agg["miou"], map=agg["map"])
        if all("objective" in r for r in rows):
            res.update(objective=_mean(r["objective"] for r in rows if r["objective"] is not None),
                       clean_objective=_mean(r["clean_objective"] for r in rows if r["clean_objective"] is not None))
        return res

    by_setting: dict[str, list[dict]] = {}
    for row in out.rows:
        by_setting.setdefault(row["setting"], []).append(row)
    result: dict[str, dict] = {}
    for key in keys:
        per: dict[str, dict] = {}
        pairs = [(CLEAN_ATTACK, "0")] + [(a, r) for a in attacks for r in radii]
        for attack, radius in pairs:
            rows = by_setting.get(_setting(f"{key}/{attack}", radius))
            if rows:
                per.setdefault(attack, {})[radius] = summary(rows, out.timings.get(f"{key}/{attack}"))
        if per:
            result[key] = per
    return result
