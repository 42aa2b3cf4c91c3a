"""``certify(model, dds, images01, ...)``: Algorithm 2 (corrected) with honest statistics.

Per image:

1. selection: n0 DDS samples -> predictions -> class counts (two-stage protocols only);
2. estimation: n fresh DDS samples -> predictions (class counts) and one attention vector per
   sample from an explanation method (default ``raw_attention``: last-block CLS attention averaged
   over heads, the paper's Z); the attention vectors are averaged (Algorithm 2 step 5), negative
   entries clipped to 0 and the mean normalised to a probability vector;
3. statistics (:mod:`fvit.certify.stats`): lower bound of p_(1), upper bound of p_(2), abstention;
4. radii (:mod:`fvit.certify.radius`): certified prediction radius from the bounds, the same from
   raw frequencies (Algorithm 2 as printed, no statistics), top-k radius from the mean attention
   (corrected [Re] form, and Hu et al.'s original form for comparison), region = min.

The mean attention vector is a POINT ESTIMATE: no confidence bound on the top-k radius is
available without further assumptions. We report, as a cheap honest diagnostic, the two-sided
Hoeffding half-width (union bound over the T coordinates, level alpha_conf) of the unnormalised
mean when every per-sample entry lies in [0, 1] (true for attention probabilities), and whether the
top-k set is identified at that confidence (w_(k) - w_(k+1) > 2 eps).

DDS contract used: ``dds.denoise(images01, generator) -> (B, m, 3, H, W)`` (each call one batch of
m samples; n0 and n need not be multiples of m; the generator advances so every call has fresh
noise), ``dds.sigma`` (pixel units, the sigma of the radii), optional ``dds.max_batch``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from fvit.certify.radius import (
    NORMS,
    LINF_CONVERSIONS,
    convert_radius,
    prediction_radius,
    topk_k0,
    topk_radius,
)
from fvit.certify.stats import PROTOCOLS, bound_top_two, hoeffding_halfwidth, protocol_uses_selection
from fvit.errors import FvitError
from fvit.utils import check_images01, seeded_generator

#: Default explanation method giving the attention vector (the paper's Z: CLS attention, last block).
DEFAULT_ATTENTION = "raw_attention"

AttentionFn = Callable[[torch.nn.Module, Tensor], Any]
"""(model, images01 (N, 3, H, W)) -> Explanation-like (``.patch`` (N, gh, gw), optional ``.logits``)
or a tensor (N, ...) of attention maps."""


@dataclass
class CertificationResult:
    """The certificate of one image. Radii are in ``norm`` units (pixel space [0, 1]); the
    certified set is the OPEN ball of that radius (strict inequality, [Re] Theorem 5.1)."""

    index: int
    predicted_class: int
    counts: list[int]
    selection_counts: list[int] | None
    n0: int
    n: int
    p1_raw: float
    p2_raw: float
    p1_lower: float
    p2_upper: float
    radius_pred: float          # certified from (p1_lower, p2_upper); 0 when abstained
    radius_pred_raw: float      # from raw frequencies (Algorithm 2 as printed; not a certificate)
    radius_topk: float          # corrected top-k radius from the mean attention (point estimate)
    radius_topk_original: float  # Hu et al.'s original (uncorrected) top-k expression, comparison only
    region: float               # min(radius_pred, radius_topk); 0 when abstained
    region_raw: float           # min(radius_pred_raw, radius_topk)
    abstained: bool
    reason: str | None
    alpha_pred: float           # maximising Rényi order of the certified prediction radius
    alpha_topk: float
    topk_indices: list[int]     # top-k token indices of the mean attention (descending)
    attention_hoeffding_eps: float | None
    topk_set_confident: bool | None
    sigma: float
    norm: str
    linf_conversion: str | None
    dims: int
    k: int
    beta: float
    k0: int
    alpha_conf: float
    protocol: str
    attention_source: str
    attention_is_point_estimate: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become the strings 'inf' / '-inf' / 'nan'."""
        return {key: _jsonable(value) for key, value in asdict(self).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def resolve_attention(attention: str | AttentionFn) -> tuple[AttentionFn, str]:
    """A registered explanation method name (via ``fvit.explain.get_method``) or a callable."""
    if callable(attention):
        return attention, getattr(attention, "__name__", type(attention).__name__)
    try:
        from fvit.explain import get_method
    except ImportError as e:  # pragma: no cover - depends on the concurrent explain module
        raise FvitError(f"attention source {attention!r} needs fvit.explain ({e})") from None
    return get_method(attention), str(attention)


def _attention_and_predictions(attention_fn: AttentionFn, model, x: Tensor) -> tuple[Tensor, Tensor]:
    """(attention (N, T) float64 on CPU, predicted classes (N,)) for a flat batch of samples."""
    out = attention_fn(model, x)
    maps = getattr(out, "patch", out)
    logits = getattr(out, "logits", None)
    if logits is None:
        with torch.inference_mode():
            logits = model(x)
    maps = torch.as_tensor(maps).detach()
    if maps.shape[0] != x.shape[0]:
        raise FvitError(f"attention source returned {maps.shape[0]} maps for {x.shape[0]} images")
    return maps.reshape(maps.shape[0], -1).to("cpu", torch.float64), logits.detach().argmax(-1).cpu()


def _predictions(model, x: Tensor) -> Tensor:
    with torch.inference_mode():
        return model(x).argmax(-1).cpu()


def accepts_generator(fn) -> bool:
    """Whether ``fn`` takes a ``generator`` argument (the DDS contract's optional second argument)."""
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _sample_chunks(dds, images01: Tensor, total: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Yield (B, m_i, 3, H, W) chunks of fresh DDS samples, sum m_i = total.

    ``generator`` is passed to ``dds.denoise`` and advances across calls, so every chunk has fresh
    noise (fvit.dds.DDS re-seeds from its own seed when called without one: same samples every
    call). A DDS without a generator argument must draw fresh noise itself; a repeated first chunk
    is detected and rejected.
    """
    pass_generator = accepts_generator(dds.denoise)
    remaining, first = total, None
    while remaining > 0:
        with torch.inference_mode():
            samples = dds.denoise(images01, generator) if pass_generator else dds.denoise(images01)
        if samples.ndim != 5 or samples.shape[0] != images01.shape[0]:
            raise FvitError(f"dds.denoise must return (B, m, 3, H, W), got {tuple(samples.shape)}")
        if not pass_generator:
            if first is not None and torch.equal(first, samples):
                raise FvitError("dds.denoise returned identical samples on two calls; certification "
                                "needs fresh noise per call (pass a DDS whose denoise takes a generator)")
            first = samples if first is None else first
        take = min(remaining, samples.shape[1])
        remaining -= take
        yield samples[:, :take]


def _flat_batches(chunk: Tensor, max_batch: int | None) -> Iterator[Tensor]:
    flat = chunk.reshape(-1, *chunk.shape[2:])
    yield from flat.split(max_batch or flat.shape[0])


def _num_classes(model, default: int | None) -> int | None:
    return getattr(model, "num_classes", None) or default


def _count(preds: Tensor, batch: int, m: int, n_classes: int) -> np.ndarray:
    """(B, m) (or image-major (B*m,)) predictions -> (B, n_classes) counts (one bincount, no class loop)."""
    flat = preds.reshape(batch, m).numpy().astype(np.int64) + (np.arange(batch)[:, None] * n_classes)
    return np.bincount(flat.ravel(), minlength=batch * n_classes).reshape(batch, n_classes)


def sample_statistics(model, dds, images01: Tensor, *, n0: int, n: int, attention_fn: AttentionFn,
                      num_classes: int | None = None, max_batch: int | None = None, seed: int = 0):
    """Run the sampling of Algorithm 2 steps 2-5 (selection and estimation noise from two
    generators seeded ``seed`` and ``seed + 1``, on the images' device).

    Returns (selection_counts (B, C) or None, estimation_counts (B, C), attention_sum (B, T),
    attention_in_unit_range (bool)).
    """
    batch = images01.shape[0]
    selection: list[Tensor] = []  # (B, m_chunk) predictions per chunk
    if n0 > 0:
        sel_gen = seeded_generator(seed, images01.device)
        for chunk in _sample_chunks(dds, images01, n0, sel_gen):
            preds = torch.cat([_predictions(model, x) for x in _flat_batches(chunk, max_batch)])
            selection.append(preds.view(batch, chunk.shape[1]))
    estimation: list[Tensor] = []
    attention_sum, unit_range = None, True
    est_gen = seeded_generator(seed + 1, images01.device)
    for chunk in _sample_chunks(dds, images01, n, est_gen):
        parts = [_attention_and_predictions(attention_fn, model, x) for x in _flat_batches(chunk, max_batch)]
        maps = torch.cat([p[0] for p in parts]).view(batch, chunk.shape[1], -1)
        estimation.append(torch.cat([p[1] for p in parts]).view(batch, chunk.shape[1]))
        unit_range &= bool((maps >= 0).all() and (maps <= 1).all())
        attention_sum = maps.sum(1) if attention_sum is None else attention_sum + maps.sum(1)
    stages = [torch.cat(s, dim=1) for s in (selection, estimation) if s]
    # both count tables share one width: the model's classes, or more if a sample predicts beyond
    n_classes = max(_num_classes(model, num_classes) or 0, *(int(s.max()) + 1 for s in stages))
    counts = [_count(s, batch, s.shape[1], n_classes) for s in stages]
    return (counts[0] if selection else None), counts[-1], attention_sum.numpy(), unit_range


def _validate(k, beta, alpha_conf, n0, n, norm, protocol, linf_conversion):
    topk_k0(k, beta)
    if not 0 < alpha_conf < 1:
        raise FvitError(f"alpha_conf must be in (0, 1), got {alpha_conf}")
    if n < 1:
        raise FvitError(f"n (estimation samples) must be >= 1, got {n}")
    if norm not in NORMS:
        raise FvitError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    name = PROTOCOLS.resolve(protocol)
    if protocol_uses_selection(name) and n0 < 1:
        raise FvitError(f"protocol {name!r} needs n0 >= 1 selection samples (or use one_stage)")
    if norm == "linf":
        LINF_CONVERSIONS.resolve(linf_conversion)
    return name


def certify(model, dds, images01: Tensor, *, k: int = 10, beta: float = 0.8, alpha_conf: float = 0.001,
            n0: int = 100, n: int = 1000, sigma: float | None = None, norm: str = "l2",
            linf_conversion: str = "paper", attention: str | AttentionFn = DEFAULT_ATTENTION,
            protocol: str = "two_stage", num_classes: int | None = None,
            max_batch: int | None = None, seed: int = 0) -> list[CertificationResult]:
    """Certify the faithful region of each image (Algorithm 2 corrected; module docstring).

    ``sigma`` defaults to ``dds.sigma`` (giving a different one is an error: the radius is only
    valid for the noise actually used). ``protocol``: ``two_stage`` (Cohen, default),
    ``two_stage_bonferroni``, ``one_stage`` (n0 ignored). ``norm``: ``l2`` or ``linf`` (with
    ``linf_conversion`` ``paper`` = R/d or ``sqrt_d`` = R/sqrt(d), d = 3 H W). ``attention``: a
    registered explanation method name or a callable (model, images) -> Explanation / maps.
    ``max_batch`` (default ``dds.max_batch``) bounds samples per forward; ``seed`` seeds the noise.
    """
    images01 = check_images01(images01)
    name = _validate(k, beta, alpha_conf, n0, n, norm, protocol, linf_conversion)
    dds_sigma = getattr(dds, "sigma", None)
    if sigma is None:
        if dds_sigma is None:
            raise FvitError("sigma not given and the DDS object has no .sigma")
        sigma = float(dds_sigma)
    elif dds_sigma is not None and not math.isclose(float(sigma), float(dds_sigma), rel_tol=1e-9):
        raise FvitError(f"sigma {sigma} differs from the DDS noise level {dds_sigma}")
    attention_fn, source = resolve_attention(attention)
    uses_selection = protocol_uses_selection(name)
    selection, estimation, attention_sum, unit_range = sample_statistics(
        model, dds, images01, n0=n0 if uses_selection else 0, n=n, attention_fn=attention_fn,
        num_classes=num_classes, max_batch=max_batch or getattr(dds, "max_batch", None), seed=seed)
    bounds = bound_top_two(estimation, selection, alpha=alpha_conf, protocol=name)

    mean_attention = attention_sum / n
    w = np.clip(mean_attention, 0.0, None)
    r_pred_l2, a_pred = prediction_radius(bounds.p1_lower, np.minimum(bounds.p2_upper, 1 - bounds.p1_lower),
                                          sigma, return_alpha=True)
    r_pred_l2 = np.where(bounds.abstain, 0.0, r_pred_l2)
    r_raw_l2 = prediction_radius(bounds.p1_raw, bounds.p2_raw, sigma)
    r_topk_l2, a_topk = topk_radius(w, k, beta, sigma, return_alpha=True)
    r_topk_orig_l2 = topk_radius(w, k, beta, sigma, variant="original")

    dims = int(np.prod(images01.shape[1:]))
    conv = (lambda r: convert_radius(r, norm, dims, linf_conversion))
    r_pred, r_raw, r_topk, r_orig = conv(r_pred_l2), conv(r_raw_l2), conv(r_topk_l2), conv(r_topk_orig_l2)
    region, region_raw = np.minimum(r_pred, r_topk), np.minimum(r_raw, r_topk)

    n_tokens = w.shape[1]
    eps = hoeffding_halfwidth(n, n_tokens, alpha_conf) if unit_range else None
    order = np.argsort(-mean_attention, axis=1, kind="stable")
    sorted_w = np.take_along_axis(mean_attention, order, axis=1)
    notes = ["radius_topk is a point estimate from the mean attention over the samples "
             "(no confidence bound); radius_pred uses Clopper-Pearson bounds",
             "certified set is the open ball ||delta|| < radius"]
    results = []
    for i in range(images01.shape[0]):
        confident = None
        if eps is not None and k < n_tokens:
            confident = bool(sorted_w[i, k - 1] - sorted_w[i, k] > 2 * eps)
        results.append(CertificationResult(
            index=i, predicted_class=int(bounds.top_class[i]), counts=estimation[i].tolist(),
            selection_counts=None if selection is None else selection[i].tolist(),
            n0=n0 if uses_selection else 0, n=n,
            p1_raw=float(bounds.p1_raw[i]), p2_raw=float(bounds.p2_raw[i]),
            p1_lower=float(bounds.p1_lower[i]), p2_upper=float(bounds.p2_upper[i]),
            radius_pred=float(r_pred[i]), radius_pred_raw=float(r_raw[i]),
            radius_topk=float(r_topk[i]), radius_topk_original=float(r_orig[i]),
            region=float(region[i]), region_raw=float(region_raw[i]),
            abstained=bool(bounds.abstain[i]), reason=bounds.reason[i],
            alpha_pred=float(a_pred[i]), alpha_topk=float(a_topk[i]),
            topk_indices=order[i, :k].tolist(), attention_hoeffding_eps=eps,
            topk_set_confident=confident, sigma=float(sigma), norm=norm,
            linf_conversion=LINF_CONVERSIONS.resolve(linf_conversion) if norm == "linf" else None,
            dims=dims, k=int(k), beta=float(beta), k0=topk_k0(k, beta), alpha_conf=float(alpha_conf),
            protocol=name, attention_source=source, notes=list(notes)))
    return results
