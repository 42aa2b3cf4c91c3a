"""Tightness and soundness of the certificates, measured by attacking them.

For every image with a certified radius R, attack at factor * R for each factor (default 0.9, 1.0,
1.5, 2.0; the paper reports 1.5 and 2: 23% and 64% success), with the strongest attack fvit has for
each property:

* ``prediction``: PGD on the smoothed (DDS) classifier through the expectation-over-noise forward
  ``fvit.attacks.expectation_forward`` (log of the mean softmax over m differentiable DDS samples;
  exact gradients through the denoiser via ``dds.denoise_differentiable``, or BPDA around
  ``dds.denoise`` when `TightnessConfig.gradient` says 'bpda');
* ``topk``: the ``topk`` explanation attack (``fvit.attacks.explanation``) on the DDS explanation
  (mean fusion of the m samples' maps, ``eot`` draws per step, gradients through the denoiser and
  the method's differentiable path), minimising the share of the map's mass on the certified set S.

Success is judged on ``check_samples`` FRESH DDS samples of the adversarial image, two ways:

* ``success`` (point estimate, as the paper): the majority vote changed / the top-k of the
  family's smoothed map loses >= k0 members of S;
* ``confirmed`` (statistically): bounds at ``alpha_check`` separate the change: the certified
  class's upper bound (Clopper-Pearson) is below another class's lower bound; for top-k, the k0-th
  smallest upper bound on S is below the k0-th largest lower bound off S (simultaneous over the
  patches).

Each certificate family is judged by the property it certifies (`TOPK_PROPERTY`): ``gaussian``
by the top-k of the smoothed top-k MEMBERSHIP (Clopper-Pearson bounds), the Rényi families by the
top-k of the MEAN map (empirical-Bernstein bounds, as certification uses).

Settings: a `fvit.certify.config.CertifyConfig` (how the certificates are, or were, computed; its
``norm`` is the attack norm) and a `fvit.certify.config.TightnessConfig` (how they are attacked),
both recorded whole in the report's ``config``.

A confirmed success with ||delta|| < R for a radius flagged as a certificate is a SOUNDNESS VIOLATION:
it is listed in ``report["violations"]`` and :func:`raise_on_violations` (called by ``fvit bench
certify`` and ``fvit demo``) fails the run. (A sound certificate at confidence 1 - alpha can still
fail with probability alpha per image, and a confirmation errs with probability alpha_check: both are
reported so a reader can weigh a rare violation.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fvit.attacks import expectation_forward, get_attack
from fvit.certify.config import GRADIENT_MODES, CertifyConfig, TightnessConfig
from fvit.certify.core import CertificationResult, certify as certify_images, resolve_attention, sample_statistics
from fvit.certify.stats import bernstein_bounds, clopper_pearson_lower, clopper_pearson_upper, membership_bounds
from fvit.dds import Smoother, as_smoother
from fvit.errors import FvitError, InputError
from fvit.seeding import stable_seed
from fvit.utils import seeded_generator

#: The paper's reported attack success rates at factor * R (section 6.2).
PAPER_SUCCESS_RATES = {1.5: 0.23, 2.0: 0.64}
#: Attack name and step preset per norm (prediction property).
ATTACK_FOR_NORM = {"l2": ("pgd-l2", "reference"), "linf": ("pgd", "scaled")}
#: Seed offset of the fresh samples that judge an attack (by position: seed + offset + i).
CHECK_SEED_OFFSET = 2
#: The noise stream of those fresh samples (certification uses its own two, `fvit.certify.core`).
CHECK_STREAM = "tightness-check"
#: The smoothed map whose top-k each certificate family certifies: 'membership' (the per-patch
#: frequency of being in a sample's top-k) or 'mean' (the mean map).
TOPK_PROPERTY = {"gaussian": "membership", "renyi": "mean", "renyi-re": "mean", "renyi-hu": "mean"}
#: Certificate fields that must agree with the `CertifyConfig` when certificates are given.
CONSISTENT_FIELDS = (("norm", "norm"), ("k", "k"), ("beta", "beta"), ("alpha_conf", "alpha"), ("n", "n"),
                     ("protocol", "protocol"), ("certificate", "certificate"))


class SoundnessViolation(FvitError):
    """An attack succeeded (statistically confirmed) strictly inside a certified radius."""


def smoothed_sample_fn(dds: Smoother, *, gradient: str = "auto", seed: int = 0) -> Callable[[Tensor], Tensor]:
    """images01 (B, 3, H, W) -> differentiable DDS samples (B, m, 3, H, W): exact gradients through
    ``dds.denoise_differentiable`` ('auto', 'exact') or the straight-through (BPDA) estimator around
    ``dds.denoise`` ('bpda'). One generator per device, seeded by ``seed``, advances across calls."""
    if gradient not in GRADIENT_MODES:
        raise InputError(f"gradient must be one of {', '.join(GRADIENT_MODES)}, got {gradient!r}",
                         params=("gradient",))
    generators: dict[str, torch.Generator] = {}

    def generator_for(device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in generators:
            generators[key] = seeded_generator(seed, device)
        return generators[key]

    if gradient != "bpda":
        return lambda x: dds.denoise_differentiable(x, generator_for(x.device))

    def straight_through(x: Tensor) -> Tensor:
        with torch.no_grad():
            denoised = dds.denoise(x.detach(), generator_for(x.device)).clone()
        base = x.unsqueeze(1)
        return base + (denoised - base).detach()

    return straight_through


def prediction_changed(counts: np.ndarray, cls: int, alpha: float) -> tuple[bool, bool]:
    """(majority changed, change confirmed at ``alpha``) from class counts (C,) of fresh samples."""
    n = int(counts.sum())
    others = np.delete(np.arange(counts.size), cls)
    changed = bool(counts[others].max() > counts[cls]) if others.size else False
    upper = float(clopper_pearson_upper(counts[cls], n, alpha / 2))
    lower = float(clopper_pearson_lower(counts[others], n, alpha / (2 * max(others.size, 1))).max()) \
        if others.size else 0.0
    return changed, upper < lower


def topk_broken(membership: np.ndarray, n: int, topk: Sequence[int], k0: int, alpha: float) -> tuple[bool, bool]:
    """(S lost >= k0 members in the sampled frequencies, loss confirmed at ``alpha``) from per-patch
    membership counts (T,) of ``n`` fresh samples (the gaussian family's property)."""
    lower, upper = membership_bounds(membership[None], n, alpha)
    return _set_broken(membership, lower[0], upper[0], topk, k0)


def mean_topk_broken(total: np.ndarray, total_sq: np.ndarray, n: int, topk: Sequence[int], k0: int,
                     alpha: float) -> tuple[bool, bool]:
    """(S lost >= k0 members in the top-k of the sampled mean map, loss confirmed at ``alpha``) from
    per-patch sums and sums of squares (T,) of the maps of ``n`` fresh samples (the Rényi families'
    property: the top-k of the smoothed, i.e. mean, attention). Confirmation uses the
    empirical-Bernstein bounds of certification, which need entries in [0, 1]."""
    lower, upper = bernstein_bounds(total[None], total_sq[None], n, alpha)
    return _set_broken(total / n, lower[0], upper[0], topk, k0)


def _set_broken(values: np.ndarray, lower: np.ndarray, upper: np.ndarray, topk: Sequence[int],
                k0: int) -> tuple[bool, bool]:
    in_s = np.zeros(values.size, dtype=bool)
    in_s[list(topk)] = True
    order = np.argsort(-values, kind="stable")[:len(topk)]
    broken = int(np.sum(~in_s[order])) >= k0
    weakest_in = np.sort(upper[in_s])[k0 - 1]
    strongest_out = -np.sort(-lower[~in_s])[k0 - 1] if (~in_s).sum() >= k0 else -np.inf
    return broken, bool(weakest_in < strongest_out)


def _radius(cert: CertificationResult, prop: str, radius: str) -> float | None:
    if radius == "region":
        return cert.region
    return cert.radius_pred if prop == "prediction" else cert.radius_topk


def _eligible(cert: CertificationResult, prop: str, label: int, r: float | None) -> bool:
    if r is None or not 0 < r < math.inf:
        return False
    if prop == "prediction":
        return not cert.abstained and cert.predicted_class == label
    return True


def _norm_of(delta: Tensor, norm: str) -> float:
    flat = delta.flatten()
    return float(flat.norm() if norm == "l2" else flat.abs().max())


def run_tightness(model, dds: Smoother, images: Tensor, labels, *, certify: CertifyConfig | None = None,
                  tightness: TightnessConfig | None = None, seed: int = 0,
                  certificates: list[CertificationResult] | None = None,
                  ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Attack certified images at factor * R per property; see the module docstring.

    ``certify``: how the certificates are computed (``certificates`` given: how they were; their
    norm, k, beta, alpha, n, protocol and family must agree); ``tightness``: how they are attacked.
    ``ids`` (one per image, e.g. data set ids): the images' noise keys for certification, and the
    attacks and their checks are then seeded by (``seed``, id) instead of the image's position, so a
    subset of the images (a shard, a resumed batch) gives the numbers of the full run. Returns a
    JSON-ready dict: ``config`` (both settings whole, and what they resolved to), ``images`` (per
    image and property: radius, per factor eps / success / confirmed / achieved norm), ``summary``
    (per property and factor: attacked, successes, confirmed, rates, paper rate), ``violations``
    and ``certificates``.
    """
    certify = _settings(certify, CertifyConfig, "certify")
    tightness = _settings(tightness, TightnessConfig, "tightness")
    dds = as_smoother(dds)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise FvitError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    if ids is not None:
        ids = [str(key) for key in ids]
        if len(ids) != images.shape[0]:
            raise FvitError(f"{len(ids)} ids for {images.shape[0]} images", params=("ids",))
    if certificates is None:
        certificates = certify_images(model, dds, images, certify, seed=seed, keys=ids)
    attention_fn, source = resolve_attention(certify.attention)
    _check_certificates(certificates, images.shape[0], certify, source)
    attacker = _Attacker(model, dds, certify, tightness, seed, check_n=int(tightness.check_samples or certificates[0].n),
                         attention_fn=attention_fn)
    records, violations = [], []
    tallies = {p: {f: [0, 0, 0] for f in tightness.factors} for p in tightness.properties}
    for i, cert in enumerate(certificates):
        record, found = attacker.image(i, images[i:i + 1], int(labels[i]), cert, None if ids is None else ids[i],
                                       tallies)
        records.append(record)
        violations.extend(found)
    summary = {prop: {str(f): {"attacked": a, "successes": s, "confirmed": c,
                               "rate": (s / a) if a else None, "confirmed_rate": (c / a) if a else None,
                               "paper_rate": PAPER_SUCCESS_RATES.get(f) if prop == "prediction" else None}
                      for f, (a, s, c) in per.items()}
               for prop, per in tallies.items()}
    config = {"certify": {**certify.to_dict(), "attention": source}, "tightness": tightness.to_dict(),
              "seed": int(seed), "gradient": tightness.gradient_mode, "check_samples": attacker.check_n,
              "prediction_attack": ATTACK_FOR_NORM[certify.norm][0], "topk_attack": "topk explanation attack (EOT)",
              "sigma": certificates[0].sigma, "noise_std": certificates[0].noise_std,
              "topk_property": TOPK_PROPERTY[certify.certificate], "seeded_by": "id" if ids is not None else "position"}
    return {"config": config, "images": records, "summary": summary, "violations": violations,
            "certificates": [c.to_dict() for c in certificates]}


def _settings(value, kind: type, name: str):
    """``value`` (an instance of ``kind``), or ``kind()`` when None."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise InputError(f"{name} must be a {kind.__name__}, got {type(value).__name__}", params=(name,))
    return value


def _check_certificates(certificates: list[CertificationResult], count: int, certify: CertifyConfig,
                        source: str) -> None:
    """One certificate per image, computed with the settings ``certify`` records."""
    if len(certificates) != count:
        raise FvitError(f"{len(certificates)} certificates for {count} images")
    for cert in certificates:
        for cert_field, config_field in CONSISTENT_FIELDS:
            if getattr(cert, cert_field) != getattr(certify, config_field):
                raise FvitError(f"certificate {cert.index}: {cert_field} {getattr(cert, cert_field)!r} differs from "
                                f"the CertifyConfig's {config_field} {getattr(certify, config_field)!r}",
                                params=(config_field,))
        if cert.attention_source != source:
            raise FvitError(f"certificate {cert.index} certifies the maps of {cert.attention_source!r}, "
                            f"the CertifyConfig names {source!r}", params=("attention",))


@dataclass
class _Attacker:
    """The attacks of one run, image by image (`run_tightness`)."""

    model: Any
    dds: Smoother
    certify: CertifyConfig
    tightness: TightnessConfig
    seed: int
    check_n: int
    attention_fn: Callable

    def __post_init__(self) -> None:
        self.shared_forward = self.forward(self.seed)
        self.topk_explainer = (_topk_explainer(self.certify.attention, self.dds)
                               if "topk" in self.tightness.properties else None)

    def forward(self, seed: int):
        """The smoothed classifier's differentiable forward (`fvit.attacks.expectation_forward`),
        its DDS noise drawn from one generator seeded by ``seed``."""
        sample_fn = smoothed_sample_fn(self.dds, gradient=self.tightness.gradient, seed=seed)
        return expectation_forward(sample_fn, self.model, max_batch=self.certify.max_batch)

    def seeds(self, i: int, key: str | None) -> tuple[int, int]:
        """(attack seed, check seed) of image ``i``: by position, or by (seed, id) when ids are given
        (the check's noise is then keyed by the adversarial image's content, `fvit.seeding`)."""
        if key is None:
            return self.seed + i, self.seed + CHECK_SEED_OFFSET + i
        return stable_seed(self.seed, f"tightness-attack|{key}") % 2 ** 31, self.seed + CHECK_SEED_OFFSET

    def image(self, i: int, x: Tensor, label: int, cert: CertificationResult, key: str | None,
              tallies: dict) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Attack image ``i`` at every factor of every property; (its record, its violations)."""
        record: dict[str, Any] = {"index": i, "label": label, "predicted_class": cert.predicted_class,
                                  "abstained": cert.abstained, "properties": {}}
        if key is not None:
            record["id"] = key
        attack_seed, check_seed = self.seeds(i, key)
        # by position: one noise stream for the whole run (as always); by id: one per image
        forward = self.shared_forward if key is None else self.forward(attack_seed)
        violations = []
        for prop in self.tightness.properties:
            r = _radius(cert, prop, self.tightness.radius)
            entry: dict[str, Any] = {"radius": r if r is None or math.isfinite(r) else "inf",
                                     "eligible": _eligible(cert, prop, label, r), "attacks": {}}
            record["properties"][prop] = entry
            if not entry["eligible"]:
                continue
            for f in self.tightness.factors:
                outcome = self.attack(prop, forward, x, cert, f * r, attack_seed, check_seed)
                tally = tallies[prop][f]
                tally[0] += 1
                tally[1] += int(outcome["success"])
                tally[2] += int(outcome["confirmed"])
                entry["attacks"][str(f)] = outcome
                if outcome["confirmed"] and outcome["perturbation_norm"] < r * (1 - 1e-9) and cert.is_certificate:
                    violations.append({"index": i, "property": prop, "factor": f, "radius": r,
                                       "perturbation_norm": outcome["perturbation_norm"],
                                       "certificate": cert.certificate, **({} if key is None else {"id": key})})
        return record, violations

    def attack(self, prop: str, forward, x: Tensor, cert: CertificationResult, eps: float, attack_seed: int,
               check_seed: int) -> dict[str, Any]:
        """One attack at radius ``eps``, judged on ``check_n`` fresh samples of the adversarial image."""
        t, norm = self.tightness, self.certify.norm
        adv = _attack(prop, forward, self.topk_explainer, self.model, x, cert, eps, norm=norm,
                      steps=t.attack_steps, step_size=t.step_size, eot=t.eot, seed=attack_seed)
        stats = sample_statistics(self.model, self.dds, adv, n0=0, n=self.check_n, attention_fn=self.attention_fn,
                                  k=cert.k, max_batch=self.certify.max_batch or self.dds.max_batch, seed=check_seed,
                                  streams=("unused", CHECK_STREAM))
        if prop == "prediction":
            success, confirmed = prediction_changed(stats.estimation[0], cert.predicted_class, t.alpha_check)
        elif TOPK_PROPERTY[cert.certificate] == "membership":
            success, confirmed = topk_broken(stats.membership[0], self.check_n, cert.topk_indices, cert.k0,
                                             t.alpha_check)
        else:
            success, confirmed = mean_topk_broken(stats.attention_sum[0], stats.attention_sq_sum[0], self.check_n,
                                                  cert.topk_indices, cert.k0, t.alpha_check)
        return {"eps": eps, "success": success, "confirmed": confirmed, "perturbation_norm": _norm_of(adv - x, norm)}


def _topk_explainer(attention: Any, dds: Smoother):
    """The DDS explanation (mean fusion) of the certificate's method, for the top-k attack."""
    from fvit.dds import DDSExplainer
    from fvit.explain import ExplanationMethod

    if not isinstance(attention, (str, ExplanationMethod)):
        raise FvitError("the top-k tightness attack needs an explanation method (a registered name or a method "
                        "instance) as attention", params=("attention",))
    return DDSExplainer(attention, dds, fuse="mean")


def _attack(prop: str, forward, topk_explainer, model, x: Tensor, cert: CertificationResult, eps: float, *,
            norm: str, steps: int, step_size, eot: int, seed: int) -> Tensor:
    if prop == "prediction":
        name, preset = ATTACK_FOR_NORM[norm]
        attack = get_attack(name, eps, steps=steps, step_size=preset if step_size is None else step_size,
                            norm=norm, seed=seed)
        return attack(forward, x, torch.tensor([cert.predicted_class], device=x.device))
    from fvit.attacks.explanation import get_explanation_attack

    attack = get_explanation_attack("topk", eps, norm=norm, steps=steps, k=cert.k, eot=eot, keep_weight=0.0,
                                    select="last", seed=seed, **({} if step_size is None else
                                                                 {"step_size": step_size}))
    reference = torch.zeros(math.prod(cert.map_shape))  # the certified set S carries all the mass
    reference[cert.topk_indices] = torch.tensor(cert.topk_membership, dtype=reference.dtype) + 1.0
    reference = reference.view(1, *cert.map_shape).to(x.device)
    return attack(topk_explainer, model, x, target=torch.tensor([cert.predicted_class], device=x.device),
                  clean_maps=reference)


def raise_on_violations(report: dict[str, Any]) -> None:
    """Fail loudly when an attack broke a certificate inside its radius (a soundness bug)."""
    violations = report.get("violations") or []
    if violations:
        where = "; ".join(f"image {v['index']} {v['property']} at {v['factor']}R "
                          f"(||delta|| {v['perturbation_norm']:.4g} < R {v['radius']:.4g})" for v in violations)
        raise SoundnessViolation(f"SOUNDNESS VIOLATION: {len(violations)} attack(s) succeeded inside a certified "
                                 f"radius: {where}")


def tightness_markdown(report: dict[str, Any]) -> str:
    """A Markdown table per property: attack success per factor (point estimate and confirmed)."""
    lines = ["| property | factor | attacked | successes | rate | confirmed | paper |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for prop, per in report["summary"].items():
        for factor, row in per.items():
            rate = "-" if row["rate"] is None else f"{100 * row['rate']:.1f}%"
            paper = "-" if row["paper_rate"] is None else f"{100 * row['paper_rate']:.0f}%"
            lines.append(f"| {prop} | {factor} | {row['attacked']} | {row['successes']} | {rate} | "
                         f"{row['confirmed']} | {paper} |")
    cfg = report["config"]
    cert, tight = cfg["certify"], cfg["tightness"]
    lines.append("")
    lines.append(f"norm {cert['norm']}, radius {tight['radius']} ({cert['certificate']} certificate), "
                 f"{tight['attack_steps']} steps ({cfg['gradient']} gradients, {tight['eot']} EOT draws for top-k), "
                 f"judged on {cfg['check_samples']} fresh samples (confirmed at alpha {tight['alpha_check']:g}), "
                 f"sigma {cfg['sigma']} (noise std of the radii {cfg.get('noise_std', cfg['sigma'])}), "
                 f"top-k judged on the {cfg.get('topk_property', 'membership')} map, "
                 f"n0 {cert['n0']}, n {cert['n']}, alpha {cert['alpha']}")
    n_viol = len(report.get("violations") or [])
    lines.append(f"soundness: {n_viol} confirmed success(es) inside a certified radius"
                 + (" -- a BUG" if n_viol else ""))
    return "\n".join(lines) + "\n"
