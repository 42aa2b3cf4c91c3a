"""Tightness and soundness of the certificates, measured by attacking them.

For every image with a certified radius R, attack at factor * R for each factor (default 0.9, 1.0,
1.5, 2.0; the paper reports 1.5 and 2: 23% and 64% success), with the strongest attack fvit has for
each property:

* ``prediction``: PGD on the smoothed (DDS) classifier through the expectation-over-noise forward
  ``fvit.attacks.expectation_forward`` (log of the mean softmax over m differentiable DDS samples;
  exact gradients through the denoiser via ``dds.denoise_differentiable``, BPDA otherwise);
* ``topk``: the ``topk`` explanation attack (``fvit.attacks.explanation``) on the DDS explanation
  (mean fusion of the m samples' maps, ``eot`` draws per step, gradients through the denoiser and
  the method's differentiable path), minimising the share of the map's mass on the certified set S.

Success is judged on ``check_samples`` FRESH DDS samples of the adversarial image, two ways:

* ``success`` (point estimate, as the paper): the majority vote changed / the sampled top-k
  membership frequencies lose >= k0 members of S;
* ``confirmed`` (statistically): Clopper-Pearson bounds at ``alpha_check`` separate the change: the
  certified class's upper bound is below another class's lower bound; for top-k, the k0-th smallest
  upper bound on S is below the k0-th largest lower bound off S (simultaneous over the patches).

A confirmed success with ||delta|| < R for a radius flagged as a certificate is a SOUNDNESS VIOLATION:
it is listed in ``report["violations"]`` and :func:`raise_on_violations` (called by ``fvit bench
certify`` and ``fvit demo``) fails the run. (A sound certificate at confidence 1 - alpha can still
fail with probability alpha per image, and a confirmation errs with probability alpha_check: both are
reported so a reader can weigh a rare violation.)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from fvit.attacks import expectation_forward, get_attack
from fvit.certify.core import (
    DEFAULT_ATTENTION,
    CertificationResult,
    accepts_generator,
    certify,
    resolve_attention,
    sample_statistics,
)
from fvit.certify.stats import clopper_pearson_lower, clopper_pearson_upper, membership_bounds
from fvit.errors import FvitError
from fvit.utils import seeded_generator

#: The paper's reported attack success rates at factor * R (section 6.2).
PAPER_SUCCESS_RATES = {1.5: 0.23, 2.0: 0.64}
#: Default attack radii as multiples of the certified radius.
FACTORS = (0.9, 1.0, 1.5, 2.0)
PROPERTIES = ("prediction", "topk")
#: Attack name and step preset per norm (prediction property).
ATTACK_FOR_NORM = {"l2": ("pgd-l2", "reference"), "linf": ("pgd", "scaled")}
GRADIENT_MODES = ("auto", "exact", "bpda")
#: "own": each property is attacked at its own certified radius (the soundness check);
#: "region": both at the region radius min(prediction, top-k) (the paper's protocol).
RADIUS_CHOICES = ("own", "region")
#: Seed offset of the fresh samples that judge an attack (certify uses seed and seed + 1).
CHECK_SEED_OFFSET = 2


class SoundnessViolation(FvitError):
    """An attack succeeded (statistically confirmed) strictly inside a certified radius."""


def smoothed_sample_fn(dds, *, gradient: str = "auto", seed: int = 0):
    """images01 (B, 3, H, W) -> differentiable DDS samples (B, m, 3, H, W), and the mode used."""
    if gradient not in GRADIENT_MODES:
        raise FvitError(f"gradient must be one of {', '.join(GRADIENT_MODES)}, got {gradient!r}")
    exact = hasattr(dds, "denoise_differentiable")
    if gradient == "exact" and not exact:
        raise FvitError("gradient='exact' needs dds.denoise_differentiable; use 'bpda'")
    generators: dict[str, torch.Generator] = {}

    def generator_for(device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in generators:
            generators[key] = seeded_generator(seed, device)
        return generators[key]

    if exact and gradient != "bpda":
        return lambda x: dds.denoise_differentiable(x, generator_for(x.device)), "exact"

    def straight_through(x: Tensor) -> Tensor:
        with torch.no_grad():
            if accepts_generator(dds.denoise):
                denoised = dds.denoise(x.detach(), generator_for(x.device)).clone()
            else:
                denoised = dds.denoise(x.detach()).clone()
        base = x.unsqueeze(1)
        return base + (denoised - base).detach()

    return straight_through, "bpda"


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
    membership counts (T,) of ``n`` fresh samples."""
    in_s = np.zeros(membership.size, dtype=bool)
    in_s[list(topk)] = True
    order = np.argsort(-membership, kind="stable")[:len(topk)]
    broken = int(np.sum(~in_s[order])) >= k0
    lower, upper = membership_bounds(membership[None], n, alpha)
    weakest_in = np.sort(upper[0][in_s])[k0 - 1]
    strongest_out = -np.sort(-lower[0][~in_s])[k0 - 1] if (~in_s).sum() >= k0 else -np.inf
    return broken, bool(weakest_in < strongest_out)


def _radius(cert: CertificationResult, prop: str, radius: str) -> float:
    if radius == "region":
        return cert.region
    return cert.radius_pred if prop == "prediction" else cert.radius_topk


def _eligible(cert: CertificationResult, prop: str, label: int, r: float) -> bool:
    if not 0 < r < math.inf:
        return False
    if prop == "prediction":
        return not cert.abstained and cert.predicted_class == label
    return True


def _norm_of(delta: Tensor, norm: str) -> float:
    flat = delta.flatten()
    return float(flat.norm() if norm == "l2" else flat.abs().max())


def run_tightness(model, dds, images: Tensor, labels, *, factors: Sequence[float] = FACTORS,
                  properties: Sequence[str] = PROPERTIES, attack_steps: int = 20,
                  step_size: str | float | None = None, eot: int = 2, k: int = 10, beta: float = 0.8,
                  alpha_conf: float = 0.001, n0: int = 100, n: int = 1000, check_samples: int | None = None,
                  alpha_check: float = 0.001, norm: str = "l2", linf_conversion: str = "sqrt_d",
                  attention: Any = DEFAULT_ATTENTION, protocol: str = "two_stage",
                  certificate: str = "gaussian", radius: str = "own", gradient: str = "auto", seed: int = 0,
                  certificates: list[CertificationResult] | None = None,
                  max_batch: int | None = None) -> dict[str, Any]:
    """Attack certified images at factor * R per property; see the module docstring.

    ``certificates`` (from :func:`fvit.certify.certify` on the same images) skips certification.
    Returns a JSON-ready dict: ``config``, ``images`` (per image and property: radius, per factor
    eps / success / confirmed / achieved norm), ``summary`` (per property and factor: attacked,
    successes, confirmed, rates, paper rate) and ``violations``.
    """
    if radius not in RADIUS_CHOICES:
        raise FvitError(f"radius must be one of {', '.join(RADIUS_CHOICES)}, got {radius!r}")
    if not factors or any(f <= 0 for f in factors):
        raise FvitError(f"factors must be positive, got {list(factors)}")
    bad = [p for p in properties if p not in PROPERTIES]
    if bad or not properties:
        raise FvitError(f"properties must be among {', '.join(PROPERTIES)}, got {list(properties)}")
    if norm not in ATTACK_FOR_NORM:
        raise FvitError(f"norm must be one of {', '.join(ATTACK_FOR_NORM)}, got {norm!r}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise FvitError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    if certificates is None:
        certificates = certify(model, dds, images, k=k, beta=beta, alpha_conf=alpha_conf, n0=n0, n=n,
                               norm=norm, linf_conversion=linf_conversion, attention=attention,
                               protocol=protocol, certificate=certificate, max_batch=max_batch, seed=seed)
    if len(certificates) != images.shape[0]:
        raise FvitError(f"{len(certificates)} certificates for {images.shape[0]} images")
    if any(c.norm != norm for c in certificates):
        raise FvitError(f"certificates must be in the attack norm {norm!r}")
    first = certificates[0]
    check_n = int(check_samples or first.n)
    attention_fn, source = resolve_attention(attention)
    sample_fn, grad_mode = smoothed_sample_fn(dds, gradient=gradient, seed=seed)
    forward = expectation_forward(sample_fn, model, max_batch=max_batch)
    topk_explainer = _topk_explainer(attention, dds) if "topk" in properties else None

    records, violations = [], []
    tallies = {p: {float(f): [0, 0, 0] for f in factors} for p in properties}
    for i, cert in enumerate(certificates):
        label = int(labels[i])
        x = images[i:i + 1]
        record: dict[str, Any] = {"index": i, "label": label, "predicted_class": cert.predicted_class,
                                  "abstained": cert.abstained, "properties": {}}
        for prop in properties:
            r = _radius(cert, prop, radius)
            entry: dict[str, Any] = {"radius": r if math.isfinite(r) else "inf",
                                     "eligible": _eligible(cert, prop, label, r), "attacks": {}}
            record["properties"][prop] = entry
            if not entry["eligible"]:
                continue
            for f in factors:
                eps = float(f) * r
                adv = _attack(prop, forward, topk_explainer, model, x, cert, eps, norm=norm, steps=attack_steps,
                              step_size=step_size, eot=eot, seed=seed + i)
                stats = sample_statistics(model, dds, adv, n0=0, n=check_n, attention_fn=attention_fn, k=cert.k,
                                          max_batch=max_batch or getattr(dds, "max_batch", None),
                                          seed=seed + CHECK_SEED_OFFSET + i)
                if prop == "prediction":
                    success, confirmed = prediction_changed(stats.estimation[0], cert.predicted_class, alpha_check)
                else:
                    success, confirmed = topk_broken(stats.membership[0], check_n, cert.topk_indices, cert.k0,
                                                     alpha_check)
                achieved = _norm_of(adv - x, norm)
                tally = tallies[prop][float(f)]
                tally[0] += 1
                tally[1] += int(success)
                tally[2] += int(confirmed)
                entry["attacks"][str(float(f))] = {"eps": eps, "success": success, "confirmed": confirmed,
                                                   "perturbation_norm": achieved}
                if confirmed and achieved < r * (1 - 1e-9) and cert.is_certificate:
                    violations.append({"index": i, "property": prop, "factor": float(f), "radius": r,
                                       "perturbation_norm": achieved, "certificate": cert.certificate})
        records.append(record)
    summary = {prop: {str(f): {"attacked": a, "successes": s, "confirmed": c,
                               "rate": (s / a) if a else None, "confirmed_rate": (c / a) if a else None,
                               "paper_rate": PAPER_SUCCESS_RATES.get(f) if prop == "prediction" else None}
                      for f, (a, s, c) in per.items()}
               for prop, per in tallies.items()}
    config = {"factors": [float(f) for f in factors], "properties": list(properties),
              "prediction_attack": ATTACK_FOR_NORM[norm][0], "topk_attack": "topk explanation attack (EOT)",
              "attack_steps": attack_steps, "eot": eot, "step_size": step_size, "norm": norm, "radius": radius,
              "gradient": grad_mode, "seed": seed, "check_samples": check_n, "alpha_check": alpha_check,
              "k": first.k, "beta": first.beta, "alpha_conf": first.alpha_conf, "n0": first.n0, "n": first.n,
              "protocol": first.protocol, "sigma": first.sigma, "linf_conversion": first.linf_conversion,
              "certificate": first.certificate, "attention": source}
    return {"config": config, "images": records, "summary": summary, "violations": violations,
            "certificates": [c.to_dict() for c in certificates]}


def _topk_explainer(attention: Any, dds):
    """The DDS explanation (mean fusion) of the certificate's method, for the top-k attack."""
    from fvit.dds import DDSExplainer
    from fvit.explain import get_method

    if not isinstance(attention, str):
        raise FvitError("the top-k tightness attack needs a registered explanation method name as attention")
    return DDSExplainer(get_method(attention), dds, fuse="mean")


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
    lines.append("")
    lines.append(f"norm {cfg['norm']}, radius {cfg['radius']} ({cfg['certificate']} certificate), "
                 f"{cfg['attack_steps']} steps ({cfg['gradient']} gradients, {cfg['eot']} EOT draws for top-k), "
                 f"judged on {cfg['check_samples']} fresh samples (confirmed at alpha {cfg['alpha_check']:g}), "
                 f"sigma {cfg.get('sigma')}, n0 {cfg.get('n0')}, n {cfg.get('n')}, alpha {cfg.get('alpha_conf')}")
    n_viol = len(report.get("violations") or [])
    lines.append(f"soundness: {n_viol} confirmed success(es) inside a certified radius"
                 + (" -- a BUG" if n_viol else ""))
    return "\n".join(lines) + "\n"
