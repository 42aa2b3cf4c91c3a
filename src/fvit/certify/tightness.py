"""Tightness of the certified faithful region (Hu et al. section 6.2 "Verifying faithful region").

For every image whose smoothed prediction is certified AND correct with radius R (default: the
region R = min(P, Q) of Algorithm 2, as the paper), run PGD on the smoothed (DDS) classifier within
factor * R for each factor (paper: 1.5 and 2) and count how often the smoothed prediction changes.
Paper (ImageNet): 23% at 1.5R, 64% at 2R.

* Attack: ``fvit.attacks.get_attack`` (``pgd-l2`` for l_2; ``pgd`` with step preset ``scaled`` =
  eps/4 for l_inf), untargeted on the true label, through the expectation-over-noise forward
  ``fvit.attacks.expectation_forward`` (log of the mean softmax over m differentiable DDS samples).
* Differentiable samples: ``dds.denoise_differentiable(images01, generator)`` when the DDS has it
  (``gradient="exact"``); otherwise (``gradient="bpda"``) a straight-through estimate
  x + (denoise(x) - x).detach() (BPDA, Athalye et al. 2018): the denoiser is treated as the identity
  in the backward pass. ``gradient="auto"`` picks exact when available.
* Success: the smoothed prediction (majority vote of ``dds.predict_counts`` on fresh samples) of the
  adversarial image differs from the label.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from fvit.attacks import expectation_forward, get_attack
from fvit.certify.core import DEFAULT_ATTENTION, CertificationResult, accepts_generator, certify
from fvit.errors import FvitError
from fvit.utils import seeded_generator

#: The paper's reported attack success rates at factor * R (section 6.2).
PAPER_SUCCESS_RATES = {1.5: 0.23, 2.0: 0.64}
#: Attack name and step preset per norm.
ATTACK_FOR_NORM = {"l2": ("pgd-l2", "reference"), "linf": ("pgd", "scaled")}
GRADIENT_MODES = ("auto", "exact", "bpda")
RADIUS_CHOICES = ("region", "prediction")
#: Seed offsets: certify uses seed (selection) and seed + 1 (estimation); the attack's EOT noise
#: uses seed; the votes on adversarial images use seed + VOTE_SEED_OFFSET (fresh noise).
VOTE_SEED_OFFSET = 2


def smoothed_sample_fn(dds, *, gradient: str = "auto", seed: int = 0):
    """images01 (B, 3, H, W) -> differentiable DDS samples (B, m, 3, H, W) (module docstring)."""
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


def smoothed_prediction(model, dds, images01: Tensor, generator: torch.Generator | None = None) -> np.ndarray:
    """Majority vote of the DDS class counts on fresh samples (from ``generator``), (B,)."""
    if generator is not None and accepts_generator(dds.predict_counts):
        counts = dds.predict_counts(model, images01, generator)
    else:
        counts = dds.predict_counts(model, images01)
    return torch.as_tensor(counts).argmax(-1).cpu().numpy()


def _attack_radius(result: CertificationResult, radius: str) -> float:
    return result.region if radius == "region" else result.radius_pred


def run_tightness(model, dds, images: Tensor, labels, *, factors: Sequence[float] = (1.5, 2.0),
                  attack_steps: int = 20, step_size: str | float | None = None, k: int = 10,
                  beta: float = 0.8, alpha_conf: float = 0.001, n0: int = 100, n: int = 1000,
                  norm: str = "l2", linf_conversion: str = "paper",
                  attention: Any = DEFAULT_ATTENTION, protocol: str = "two_stage",
                  radius: str = "region", gradient: str = "auto", seed: int = 0,
                  certificates: list[CertificationResult] | None = None,
                  max_batch: int | None = None) -> dict[str, Any]:
    """Attack certified-correct images at factor * R; see the module docstring.

    ``certificates`` (from :func:`fvit.certify.certify` on the same images) skips certification.
    Returns a JSON-ready dict: ``config``, ``images`` (per image: label, certificate summary, per
    factor eps / success / adversarial class) and ``summary`` (per factor: attacked, successes,
    rate, paper rate).
    """
    if radius not in RADIUS_CHOICES:
        raise FvitError(f"radius must be one of {', '.join(RADIUS_CHOICES)}, got {radius!r}")
    if not factors or any(f <= 0 for f in factors):
        raise FvitError(f"factors must be positive, got {list(factors)}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise FvitError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    if certificates is None:
        certificates = certify(model, dds, images, k=k, beta=beta, alpha_conf=alpha_conf, n0=n0, n=n,
                               norm=norm, linf_conversion=linf_conversion, attention=attention,
                               protocol=protocol, max_batch=max_batch, seed=seed)
    if len(certificates) != images.shape[0]:
        raise FvitError(f"{len(certificates)} certificates for {images.shape[0]} images")
    if any(c.norm != norm for c in certificates):
        raise FvitError(f"certificates must be in the attack norm {norm!r}")
    if norm not in ATTACK_FOR_NORM:
        raise FvitError(f"norm must be one of {', '.join(ATTACK_FOR_NORM)}, got {norm!r}")
    attack_name, preset = ATTACK_FOR_NORM[norm]
    sample_fn, grad_mode = smoothed_sample_fn(dds, gradient=gradient, seed=seed)
    forward = expectation_forward(sample_fn, model, max_batch=max_batch)
    vote_generator = seeded_generator(seed + VOTE_SEED_OFFSET, images.device)

    records, tallies = [], {float(f): [0, 0] for f in factors}
    for i, cert in enumerate(certificates):
        label = int(labels[i])
        r = _attack_radius(cert, radius)
        eligible = (not cert.abstained) and cert.predicted_class == label and 0 < r < math.inf
        record: dict[str, Any] = {"index": i, "label": label, "predicted_class": cert.predicted_class,
                                  "abstained": cert.abstained, "radius": r if math.isfinite(r) else "inf",
                                  "certified_correct": eligible, "attacks": {}}
        if eligible:
            x = images[i:i + 1]
            y = labels[i:i + 1].to(x.device)
            for f in factors:
                eps = float(f) * r
                attack = get_attack(attack_name, eps, steps=attack_steps,
                                    step_size=preset if step_size is None else step_size,
                                    norm=norm, seed=seed + i)
                adv = attack(forward, x, y)
                adv_class = int(smoothed_prediction(model, dds, adv, vote_generator)[0])
                success = adv_class != label
                tallies[float(f)][0] += 1
                tallies[float(f)][1] += int(success)
                delta = (adv - x).flatten()
                achieved = float(delta.norm() if norm == "l2" else delta.abs().max())
                record["attacks"][str(float(f))] = {"eps": eps, "success": success,
                                                     "adversarial_class": adv_class,
                                                     "perturbation_norm": achieved}
        records.append(record)
    summary = {str(f): {"attacked": a, "successes": s, "rate": (s / a) if a else None,
                        "paper_rate": PAPER_SUCCESS_RATES.get(f)} for f, (a, s) in tallies.items()}
    first = certificates[0] if certificates else None
    config = {"factors": [float(f) for f in factors], "attack": attack_name, "attack_steps": attack_steps,
              "step_size": preset if step_size is None else step_size, "norm": norm, "radius": radius,
              "gradient": grad_mode, "seed": seed}
    if first is not None:  # the certificate's own settings (they may come from the caller)
        config.update(k=first.k, beta=first.beta, alpha_conf=first.alpha_conf, n0=first.n0, n=first.n,
                      protocol=first.protocol, sigma=first.sigma, linf_conversion=first.linf_conversion,
                      certificate_norm=first.norm, attention=first.attention_source)
    return {"config": config, "images": records, "summary": summary,
            "certificates": [c.to_dict() for c in certificates]}


def tightness_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of the tightness summary (attack success rate per factor vs the paper)."""
    lines = ["| factor | certified-correct attacked | successes | rate | paper |",
             "|---:|---:|---:|---:|---:|"]
    for factor, row in report["summary"].items():
        rate = "-" if row["rate"] is None else f"{100 * row['rate']:.1f}%"
        paper = "-" if row["paper_rate"] is None else f"{100 * row['paper_rate']:.0f}%"
        lines.append(f"| {factor} | {row['attacked']} | {row['successes']} | {rate} | {paper} |")
    cfg = report["config"]
    lines.append("")
    lines.append(f"norm {cfg['norm']}, radius {cfg['radius']}, attack {cfg['attack']} x{cfg['attack_steps']} "
                 f"({cfg['gradient']} gradients), sigma {cfg.get('sigma')}, n0 {cfg.get('n0')}, "
                 f"n {cfg.get('n')}, alpha {cfg.get('alpha_conf')}, protocol {cfg.get('protocol')}")
    return "\n".join(lines) + "\n"
