"""``certify(model, dds, images01, ...)``: the faithful region with sound, honest certificates.

Per image:

1. selection: n0 DDS samples -> predictions -> class counts (two-stage protocols only);
2. estimation: n fresh DDS samples -> predictions (class counts) and one map per sample from an
   explanation method (default ``raw_attention``: last-block CLS attention averaged over heads, the
   paper's Z). Per patch we keep the sum and the sum of squares of the map (for the Rényi
   certificates) and in how many samples it was among the map's top k (the smoothed top-k
   membership, for the Gaussian certificate). The attention row is NOT renormalised: the mass on
   the CLS / prefix tokens is an outcome of its own;
3. statistics (:mod:`fvit.certify.stats`), one alpha split in halves: Clopper-Pearson bounds of
   p_(1) / p_(2) at alpha/2 (abstention when they do not separate) and simultaneous per-patch bounds
   at alpha/2 (Clopper-Pearson on the memberships, empirical Bernstein on the attention means);
4. radii per family, all returned side by side:
   * ``gaussian`` (default, a certificate): Cohen et al.'s sigma/2 (Phi^-1(pA_lower) -
     Phi^-1(pB_upper)) and the Lipschitz top-k membership radius (:mod:`fvit.certify.gaussian`);
   * ``renyi`` (a certificate): Li et al.'s Rényi prediction radius from the same bounds and the
     exact minimum top-k divergence at the worst vector of the attention bounds
     (:mod:`fvit.certify.topk`); only for map sources that are distributions by construction
     (`declares_distribution`: raw attention, rollout, attribution rollout with its clamp) and whose
     sampled maps were sub-probability vectors; None (n/a) for every other source;
   * ``renyi-re`` / ``renyi-hu`` (the papers, as published; NOT certificates): raw frequencies and
     the [Re] pooled / Hu et al.'s original closed forms on the renormalised mean attention.
   region = min(prediction, top-k) in every family.

Settings: one `fvit.certify.config.CertifyConfig`, recorded whole in every result (``config``).
The DDS is a `fvit.dds.Smoother` (checked once by `fvit.dds.as_smoother`); certification uses
``dds.denoise(images01, generator) -> (B, m, 3, H, W)`` (each call one batch of m = ``dds.samples``
samples; n0 and n need not be multiples of m; the generator, a ``fvit.seeding.PerImageGenerator``,
advances so every call has fresh noise), ``dds.noise_std`` (pixel units: the std of the noise
added, the sigma of the radii; ``dds.sigma`` for a smoother without it, `smoothing_std`) and
``dds.max_batch`` (unless ``config.max_batch`` is set). Votes are counted by `fvit.dds.class_counts`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from fvit.certify.config import CERTIFICATES, CertifyConfig, attention_name
from fvit.certify.gaussian import certified_membership, gaussian_prediction_radius, gaussian_topk_radius
from fvit.certify.radius import (
    convert_radius,
    prediction_radius,
    topk_indices,
    topk_radius,
    topk_radius_bounds,
)
from fvit.certify.stats import bernstein_bounds, bound_top_two, membership_bounds
from fvit.dds import DDS, Smoother, as_smoother, class_counts
from fvit.dds.fusion import topk_membership
from fvit.errors import FvitError, InputError
from fvit.seeding import PerImageGenerator, noise_keys
from fvit.settings import json_ready
from fvit.utils import check_images01

AttentionFn = Callable[[torch.nn.Module, Tensor], Any]
"""(model, images01 (N, 3, H, W)) -> Explanation-like (``.patch`` (N, gh, gw), optional ``.logits``)
or a tensor (N, ...) of attention maps."""


#: What each family's radii are, for tables and JSON.
CERTIFICATE_NOTES = {
    "gaussian": "certificate: Cohen et al. prediction radius + Lipschitz top-k membership radius, "
                "Clopper-Pearson bounds",
    "renyi": "certificate: Rényi prediction radius + exact minimum top-k divergence at the worst vector "
             "of empirical-Bernstein bounds (sources that are distributions by construction only)",
    "renyi-re": "as published ([Re]): raw frequencies, pooled closed form, renormalised attention; "
                "NOT a certificate (no confidence; too large for k0 >= 2)",
    "renyi-hu": "as published (Hu et al.): raw frequencies, original top-k expression; NOT a certificate",
}
#: Radii (multiples of sigma, l_2) at which the certified top-k membership fraction is reported.
MEMBERSHIP_RADII = (0.1, 0.25, 0.5, 1.0)
#: Tolerance on "a per-sample attention row sums to at most 1".
SUM_TOL = 1e-5
#: Noise stream names (`stream_keys`): each stream's per-image generator is seeded by
#: ``stable_seed(seed, '<stream>|<key>')``, so no two (seed, stream) pairs share samples (``seed``
#: and ``seed + 1`` are unrelated hashes).
SELECTION_STREAM = "certify-selection"
ESTIMATION_STREAM = "certify-estimation"


@dataclass
class CertificationResult:
    """The certificate of one image. Radii are in ``norm`` units (pixel space [0, 1]); the
    certified set is the OPEN ball of that radius (strict inequality).

    ``radius_pred`` / ``radius_topk`` / ``region`` are those of the family ``certificate``;
    ``is_certificate`` says whether they hold at confidence 1 - alpha_conf. ``radii`` holds every
    family (``gaussian``, ``renyi``, ``renyi-re``, ``renyi-hu``) side by side, each with its
    ``certificate`` flag; None = not applicable (Rényi top-k of a source that is not a distribution
    by construction). ``certified_patches``: the patch indices (row-major in ``map_shape``) of the set
    S whose top-k overlap is certified, [] when nothing is (no certificate or radius 0).
    ``config``: the whole `CertifyConfig` of the run (``to_dict()``, ``attention`` = this source).
    """

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
    abstained: bool
    reason: str | None
    certificate: str
    is_certificate: bool
    radius_pred: float
    radius_topk: float | None        # None: not applicable (Rényi top-k of a map that is not a distribution)
    region: float | None
    radii: dict[str, dict[str, Any]]
    topk_indices: list[int]          # S of the headline family's top-k certificate
    certified_patches: list[int]     # S (sorted) when its top-k radius is a certificate > 0, else []
    topk_membership: list[float]     # smoothed top-k membership frequency of S (gaussian family)
    membership_map: list[float]      # that frequency for every patch (row-major in map_shape): the
                                     # 'membership' fusion of fvit.dds, whose top-k is the gaussian S
    topk_indices_attention: list[int]  # S of the Rényi families (top-k of the mean attention)
    membership_certified: dict[str, float]  # l_2 radius -> fraction of patches certified in/out
    map_shape: list[int]             # shape of one per-sample map (the patch grid)
    sigma: float                     # the nominal sigma of the smoother
    noise_std: float                 # the std of the noise actually added: the sigma of every radius
    norm: str
    linf_conversion: str | None
    dims: int
    k: int
    beta: float
    k0: int
    alpha_conf: float
    alpha_split: dict[str, float]
    protocol: str
    attention_source: str
    seed: int
    noise_key: str                   # the image's noise key (with seed: reproduces its samples)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats become the strings 'inf' / '-inf' / 'nan'."""
        return {key: json_ready(value, nonfinite="string") for key, value in asdict(self).items()}


def resolve_attention(attention: str | AttentionFn) -> tuple[AttentionFn, str]:
    """(map function, results key) of a registered explanation method name (via
    ``fvit.explain.get_method``), a method instance or a callable (`attention_name`)."""
    if callable(attention):
        return attention, attention_name(attention)
    from fvit.explain import get_method

    return get_method(attention), str(attention)


def _attention_and_predictions(attention_fn: AttentionFn, model, x: Tensor) -> tuple[Tensor, Tensor, tuple]:
    """(attention (N, T) float64 on CPU, predicted classes (N,), one map's shape) for a flat batch."""
    out = attention_fn(model, x)
    maps = getattr(out, "patch", out)
    logits = getattr(out, "logits", None)
    if logits is None:
        with torch.inference_mode():
            logits = model(x)
    maps = torch.as_tensor(maps).detach()
    if maps.shape[0] != x.shape[0]:
        raise FvitError(f"attention source returned {maps.shape[0]} maps for {x.shape[0]} images")
    return (maps.reshape(maps.shape[0], -1).to("cpu", torch.float64), logits.detach().argmax(-1).cpu(),
            tuple(maps.shape[1:]))


def _predictions(model, x: Tensor) -> Tensor:
    with torch.inference_mode():
        return model(x).argmax(-1).cpu()


def _sample_chunks(dds: Smoother, images01: Tensor, total: int, generator: PerImageGenerator) -> Iterator[Tensor]:
    """Yield (B, m_i, 3, H, W) chunks of fresh DDS samples, sum m_i = total.

    ``generator`` is passed to ``dds.denoise`` and advances across calls, so every chunk has fresh
    noise (fvit.dds.DDS re-seeds from its own seed when called without one: same samples every
    call). A smoother that ignores the generator would repeat its samples: the first two chunks
    are compared and a repetition is rejected.
    """
    remaining, first, calls = total, None, 0
    while remaining > 0:
        with torch.no_grad():  # not inference_mode: gradient-based methods explain these samples
            samples = dds.denoise(images01, generator)
        if samples.ndim != 5 or samples.shape[0] != images01.shape[0]:
            raise FvitError(f"dds.denoise must return (B, m, 3, H, W), got {tuple(samples.shape)}")
        calls += 1
        if calls == 1:
            first = samples
        elif calls == 2:
            if torch.equal(first, samples):
                raise FvitError("dds.denoise returned identical samples on two calls; certification needs "
                                "fresh noise per call (the smoother must draw from the generator it is given)")
            first = None
        take = min(remaining, samples.shape[1])
        remaining -= take
        yield samples[:, :take]


def _flat_batches(chunk: Tensor, max_batch: int | None) -> Iterator[Tensor]:
    flat = chunk.reshape(-1, *chunk.shape[2:])
    yield from flat.split(max_batch or flat.shape[0])


def _counts(stage: Tensor, n_classes: int) -> np.ndarray:
    """(B, m) predicted classes -> (B, n_classes) int64 counts (`fvit.dds.class_counts`), as numpy
    for the statistics."""
    return class_counts(stage, n_classes).numpy()


@dataclass
class SampleStatistics:
    """What the Monte-Carlo sampling of one batch of images gives (arrays over the batch).

    ``attention_sum`` / ``attention_sq_sum`` (B, T): sums over the n estimation samples of the
    per-sample map and of its square; ``membership`` (B, T): in how many samples each patch was in
    the map's top-k; ``unit_range``: every per-sample entry in [0, 1]; ``sub_probability``: also
    every per-sample map sums to <= 1 (a token distribution's patch part: Rényi top-k applies).
    """

    selection: np.ndarray | None
    estimation: np.ndarray
    attention_sum: np.ndarray
    attention_sq_sum: np.ndarray
    membership: np.ndarray
    unit_range: bool
    sub_probability: bool
    map_shape: tuple[int, ...]


def stream_keys(keys: list[str], stream: str) -> list[str]:
    """The generator keys of one noise stream: ``'<stream>|<key>'`` per image (`fvit.seeding.stable_seed`
    hashes them with the seed, so streams and seeds never share a generator)."""
    return [f"{stream}|{key}" for key in keys]


def smoothing_std(dds: Smoother) -> float:
    """The pixel-space std of the Gaussian noise the smoother actually adds, the sigma of every
    radius: ``dds.noise_std`` where the smoother has it (`fvit.dds.DDS`: sigma with
    ``noise='paper'``, sqrt(1 - abar_t*) / (2 sqrt(abar_t*)) with ``noise='q-sample'``, which can be
    far below sigma for a coarse timestep mapping), else ``dds.sigma``."""
    std = getattr(dds, "noise_std", None)
    return float(dds.sigma) if std is None else float(std)


def declares_distribution(attention_fn: AttentionFn) -> bool:
    """Whether a map source declares that every per-sample map it returns is a sub-probability
    vector for EVERY input, by construction (`fvit.explain.ExplanationMethod.distribution`; a
    callable may set ``fn.distribution = True``). The Rényi top-k certificate needs it: checking the
    maps drawn at x says nothing about the maps at x' (docs/CERTIFICATES.md)."""
    return getattr(attention_fn, "distribution", False) is True


def _topk_membership(maps: Tensor, k: int) -> Tensor:
    """(B, m, T) maps -> (B, T) counts of samples in which each patch is among the k largest
    (ties broken by the lower index; `fvit.dds.fusion.topk_membership`, the 'membership' fusion)."""
    return topk_membership(maps, k)


def sample_statistics(model, dds: Smoother, images01: Tensor, *, n0: int, n: int, attention_fn: AttentionFn,
                      k: int, max_batch: int | None = None, seed: int = 0,
                      keys: list[str] | None = None,
                      streams: tuple[str, str] = (SELECTION_STREAM, ESTIMATION_STREAM)) -> SampleStatistics:
    """Run the sampling of Algorithm 2 steps 2-5 for one map source (see `sample_statistics_many`)."""
    return sample_statistics_many(model, dds, images01, n0=n0, n=n, attention_fns=[attention_fn], k=k,
                                  max_batch=max_batch, seed=seed, keys=keys, streams=streams)[0]


def sample_statistics_many(model, dds: Smoother, images01: Tensor, *, n0: int, n: int,
                           attention_fns: list[AttentionFn], k: int, max_batch: int | None = None,
                           seed: int = 0, keys: list[str] | None = None,
                           streams: tuple[str, str] = (SELECTION_STREAM, ESTIMATION_STREAM)
                           ) -> list[SampleStatistics]:
    """Run the sampling of Algorithm 2 steps 2-5 once and explain every sample with each map
    source (one denoising pass for all of them). Each image draws its selection and estimation
    noise from its own generators, seeded by ``fvit.seeding.stable_seed(seed, '<stream>|<key>')``
    with the stream names ``streams`` (`stream_keys`), key = ``keys[i]`` or the image's content
    hash: an image's statistics do not depend on the other images in the batch, and no two seeds
    or streams share samples. The class counts have one column
    per class of the model (``model.num_classes``), more if a sample predicts beyond."""
    batch = images01.shape[0]
    keys = noise_keys(images01, keys)
    selection: list[Tensor] = []  # (B, m_chunk) predictions per chunk
    if n0 > 0:
        sel_gen = PerImageGenerator.from_keys(seed, stream_keys(keys, streams[0]), images01.device)
        for chunk in _sample_chunks(dds, images01, n0, sel_gen):
            preds = torch.cat([_predictions(model, x) for x in _flat_batches(chunk, max_batch)])
            selection.append(preds.view(batch, chunk.shape[1]))
    estimation: list[Tensor] = []
    sums: list[list[Tensor]] = [[] for _ in attention_fns]
    unit_range = [True] * len(attention_fns)
    sub_probability = [True] * len(attention_fns)
    shapes: list[tuple] = [()] * len(attention_fns)
    est_gen = PerImageGenerator.from_keys(seed, stream_keys(keys, streams[1]), images01.device)
    for chunk in _sample_chunks(dds, images01, n, est_gen):
        for j, attention_fn in enumerate(attention_fns):
            parts = [_attention_and_predictions(attention_fn, model, x) for x in _flat_batches(chunk, max_batch)]
            maps = torch.cat([p[0] for p in parts]).view(batch, chunk.shape[1], -1)
            if j == 0:
                estimation.append(torch.cat([p[1] for p in parts]).view(batch, chunk.shape[1]))
            unit_range[j] &= bool((maps >= 0).all() and (maps <= 1).all())
            sub_probability[j] &= unit_range[j] and bool((maps.sum(-1) <= 1 + SUM_TOL).all())
            sums[j].append(torch.stack([maps.sum(1), (maps * maps).sum(1), _topk_membership(maps, k)]))
            shapes[j] = parts[0][2]
    stages = [torch.cat(s, dim=1) for s in (selection, estimation) if s]
    # both count tables share one width: the model's classes, or more if a sample predicts beyond
    n_classes = max(getattr(model, "num_classes", None) or 0, *(int(s.max()) + 1 for s in stages))
    counts = [_counts(s, n_classes) for s in stages]
    out = []
    for j in range(len(attention_fns)):
        total = torch.stack(sums[j]).sum(0).numpy()
        out.append(SampleStatistics(counts[0] if selection else None, counts[-1], total[0], total[1],
                                    np.rint(total[2]).astype(np.int64), unit_range[j], sub_probability[j],
                                    shapes[j]))
    return out


def _family_radii(stats: SampleStatistics, bounds, *, k: int, beta: float, sigma: float,
                  alpha_topk: float, distribution: bool
                  ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """l_2 radii per family (module docstring) and the top-k sets / membership they certify.
    The Rényi top-k radius needs ``distribution`` (`declares_distribution`) and maps that were
    sub-probability vectors on every sample; NaN (not applicable) otherwise."""
    n = int(stats.estimation.sum(axis=1)[0])
    p2_upper = np.minimum(bounds.p2_upper, 1 - bounds.p1_lower)
    mem_lower, mem_upper = membership_bounds(stats.membership, n, alpha_topk)
    s_gauss = topk_indices(stats.membership / n, k)
    mean = np.clip(stats.attention_sum / n, 0.0, None)
    s_att = topk_indices(mean, k)
    families = {
        "gaussian": {"prediction": np.where(bounds.abstain, 0.0,
                                            gaussian_prediction_radius(bounds.p1_lower, p2_upper, sigma)),
                     "topk": gaussian_topk_radius(mem_lower, mem_upper, s_gauss, k, beta, sigma)},
        "renyi": {"prediction": np.where(bounds.abstain, 0.0, prediction_radius(bounds.p1_lower, p2_upper, sigma))},
    }
    nan = np.full(mean.shape[0], np.nan)
    if distribution and stats.sub_probability and n >= 2:
        lower, upper = bernstein_bounds(stats.attention_sum, stats.attention_sq_sum, n, alpha_topk)
        families["renyi"]["topk"] = topk_radius_bounds(lower, upper, s_att, k, beta, sigma)
    else:
        families["renyi"]["topk"] = nan
    raw = prediction_radius(bounds.p1_raw, bounds.p2_raw, sigma)
    usable = mean.sum(axis=1) > 0
    safe = np.where(usable[:, None], mean, 1.0)
    for name, variant in (("renyi-re", "renyi-re"), ("renyi-hu", "renyi-hu")):
        families[name] = {"prediction": raw,
                          "topk": np.where(usable, topk_radius(safe, k, beta, sigma, variant=variant), np.nan)}
    for radii in families.values():
        radii["region"] = np.minimum(radii["prediction"], radii["topk"])  # NaN stays NaN
    membership = certified_membership(mem_lower, mem_upper, s_gauss, k,
                                      [f * sigma for f in MEMBERSHIP_RADII], sigma)
    extra = {"s_gauss": s_gauss, "s_att": s_att, "membership": stats.membership / n,
             "membership_certified": membership}
    return families, extra


def certify_config(config: CertifyConfig | None = None, **changes: Any) -> CertifyConfig:
    """``config`` (default `CertifyConfig()`) with ``changes`` (validated): the one construction
    path of the settings of `certify` / `certify_methods`."""
    config = CertifyConfig() if config is None else config
    if not isinstance(config, CertifyConfig):
        raise InputError(f"config must be a CertifyConfig, got {type(config).__name__}", params=("config",))
    return config.replace(**changes) if changes else config


def certify(model, dds: Smoother, images01: Tensor, config: CertifyConfig | None = None, *, seed: int = 0,
            keys: list[str] | None = None, **changes: Any) -> list[CertificationResult]:
    """Certify each image with the map source ``config.attention``; see :func:`certify_methods`.
    Keyword ``changes`` are `CertifyConfig` fields applied to ``config`` (or the defaults)."""
    config = certify_config(config, **changes)
    return next(iter(certify_methods(model, dds, images01, config, seed=seed, keys=keys).values()))


def certify_methods(model, dds: Smoother, images01: Tensor, config: CertifyConfig | None = None, *,
                    attentions: list[str | AttentionFn] | None = None, seed: int = 0,
                    keys: list[str] | None = None, **changes: Any) -> dict[str, list[CertificationResult]]:
    """Certify the faithful region of each image for every map source in ``attentions`` (default:
    ``[config.attention]``; module docstring), from ONE set of DDS samples explained by each source:
    {source name: results}. Every source sees the same samples, so the prediction radii agree.

    ``config`` (`CertifyConfig`, keyword ``changes`` applied): one ``alpha`` for the whole
    certificate, split in halves: the prediction bounds at alpha / 2 and the top-k bounds
    (membership or attention) at alpha / 2, so prediction AND top-k hold together with probability
    >= 1 - alpha. ``certificate`` picks the headline family; every family is computed and returned
    in ``radii``. The radii use the std of the noise the smoother adds (`smoothing_std`:
    ``dds.noise_std``, not the nominal ``dds.sigma``); ``dds`` must add Gaussian noise. The Rényi
    top-k radius is computed only for sources that `declares_distribution` (n/a otherwise). ``seed`` and
    ``keys`` (one per image, e.g. data set ids; default: content hashes) seed each image's noise,
    so a certificate does not depend on the other images in the batch.
    """
    config = certify_config(config, **changes)
    images01 = check_images01(images01)
    dds = as_smoother(dds)
    _check_noise(dds)
    n_patches = _num_patches(model)
    if n_patches is not None and not 1 <= config.k < n_patches:
        raise FvitError(f"k must be in [1, {n_patches - 1}] for a model with {n_patches} patches, got {config.k}",
                        params=("k",))
    resolved = [resolve_attention(a) for a in (attentions if attentions is not None else [config.attention])]
    if not resolved or len({source for _, source in resolved}) != len(resolved):
        raise FvitError(f"attention sources must be a non-empty list of distinct names, "
                        f"got {[source for _, source in resolved]}", params=("attentions",))
    alpha_split = {"prediction": config.alpha / 2, "topk": config.alpha / 2}
    keys = noise_keys(images01, keys)
    all_stats = sample_statistics_many(
        model, dds, images01, n0=config.n0 if config.uses_selection else 0, n=config.n,
        attention_fns=[fn for fn, _ in resolved], k=config.k, max_batch=config.max_batch or dds.max_batch,
        seed=seed, keys=keys)
    bounds = bound_top_two(all_stats[0].estimation, all_stats[0].selection, alpha=alpha_split["prediction"],
                           protocol=config.protocol)
    run = _Run(config, sigma=float(dds.sigma), noise_std=smoothing_std(dds), seed=int(seed),
               dims=int(np.prod(images01.shape[1:])), alpha_split=alpha_split)
    return {source: _results(stats, bounds, keys, source, run, declares_distribution(fn))
            for (fn, source), stats in zip(resolved, all_stats)}


def _check_noise(dds: Smoother) -> None:
    """Certification needs Gaussian noise: sigma > 0, a finite positive `smoothing_std` and, for a
    `fvit.dds.DDS`, a variant that adds it."""
    if not float(dds.sigma) > 0:
        raise FvitError(f"certification needs Gaussian noise: the smoother's sigma is {dds.sigma}, "
                        f"so no radius would hold", params=("sigma",))
    std = smoothing_std(dds)
    if not (std > 0 and math.isfinite(std)):
        raise FvitError(f"certification needs Gaussian noise: the smoother adds noise of std {std}, "
                        f"so no radius would hold", params=("sigma",))
    if isinstance(dds, DDS) and not dds.variant.noise:
        raise FvitError(f"certification needs Gaussian noise: the DDS variant {dds.variant_name!r} adds none, "
                        f"so no radius would hold", params=("variant",))


@dataclass(frozen=True)
class _Run:
    """What every result of one `certify_methods` call shares."""

    config: CertifyConfig
    sigma: float       # the nominal sigma (recorded)
    noise_std: float   # the std of the noise added: every radius uses it
    seed: int
    dims: int
    alpha_split: dict[str, float]

    @property
    def n0(self) -> int:
        return self.config.n0 if self.config.uses_selection else 0


def _results(stats: SampleStatistics, bounds, keys: list[str], source: str, run: _Run,
             distribution: bool) -> list[CertificationResult]:
    """One source's certificates from its statistics and the shared class bounds."""
    c, sigma = run.config, run.noise_std
    family, norm = c.certificate, c.norm
    families, extra = _family_radii(stats, bounds, k=c.k, beta=c.beta, sigma=sigma,
                                    alpha_topk=run.alpha_split["topk"], distribution=distribution)
    converted = {fam: {part: convert_radius(r, norm, run.dims, c.linf_conversion) for part, r in radii.items()}
                 for fam, radii in families.items()}
    notes = [f"certified set: the open ball ||delta||_{norm[1:]} < radius, pixel units [0, 1]",
             f"alpha split: prediction {run.alpha_split['prediction']:g}, top-k {run.alpha_split['topk']:g}",
             CERTIFICATE_NOTES[family],
             f"radii use the std of the noise added, {sigma:.6g} (nominal sigma {run.sigma:.6g})",
             f"noise: per-image generators seeded by stable_seed(seed, '{SELECTION_STREAM}|<noise_key>') and "
             f"stable_seed(seed, '{ESTIMATION_STREAM}|<noise_key>')"]
    if not distribution:
        notes.append(f"renyi top-k: n/a ({source} is not declared a distribution by construction)")
    elif not stats.sub_probability:
        notes.append(f"renyi top-k: n/a (a sample's map of {source} was not a sub-probability vector)")
    recorded = {**c.to_dict(), "attention": source}
    results = []
    for i in range(len(keys)):
        radii = {fam: {**{part: _radius_value(r[i]) for part, r in parts.items()},
                       "certificate": CERTIFICATES.get(fam) and not math.isnan(float(parts["region"][i]))}
                 for fam, parts in converted.items()}
        head = radii[family]
        s_gauss = extra["s_gauss"][i]
        s_head = s_gauss if family == "gaussian" else extra["s_att"][i]
        certified = bool(head["certificate"]) and (head["topk"] or 0.0) > 0
        results.append(CertificationResult(
            index=i, predicted_class=int(bounds.top_class[i]), counts=stats.estimation[i].tolist(),
            selection_counts=None if stats.selection is None else stats.selection[i].tolist(),
            n0=run.n0, n=c.n,
            p1_raw=float(bounds.p1_raw[i]), p2_raw=float(bounds.p2_raw[i]),
            p1_lower=float(bounds.p1_lower[i]), p2_upper=float(bounds.p2_upper[i]),
            abstained=bool(bounds.abstain[i]), reason=bounds.reason[i],
            certificate=family, is_certificate=bool(head["certificate"]),
            radius_pred=head["prediction"], radius_topk=head["topk"], region=head["region"], radii=radii,
            topk_indices=s_head.tolist(),
            certified_patches=sorted(int(j) for j in s_head) if certified else [],
            topk_membership=extra["membership"][i, s_gauss].tolist(),
            membership_map=extra["membership"][i].tolist(),
            topk_indices_attention=extra["s_att"][i].tolist(),
            membership_certified={f"{f * sigma:.6g}": float(extra["membership_certified"][i, j])
                                  for j, f in enumerate(MEMBERSHIP_RADII)},
            map_shape=list(stats.map_shape),
            sigma=run.sigma, noise_std=sigma, norm=norm, linf_conversion=c.linf_conversion if norm == "linf" else None, dims=run.dims,
            k=c.k, beta=c.beta, k0=c.k0, alpha_conf=c.alpha, alpha_split=dict(run.alpha_split),
            protocol=c.protocol, attention_source=source, seed=run.seed, noise_key=keys[i],
            notes=list(notes), config=dict(recorded)))
    return results


def _radius_value(r) -> float | None:
    """A radius for the results: a float (inf stays inf), None where not applicable (NaN)."""
    r = float(r)
    return None if math.isnan(r) else r


def _num_patches(model) -> int | None:
    grid = getattr(model, "grid_size", None)
    return int(grid[0]) * int(grid[1]) if grid is not None else None
