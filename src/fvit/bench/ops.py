"""Per-batch steps shared by the experiment entries (`fvit.bench.engine`): the plain prediction,
the attack, the explanation call with per-image DDS noise keys, and small reductions.

Protocol choices (shared by every entry):
- The attack (if any) is applied first, against the plain model's clean prediction (the papers);
  every method, with or without DDS, then explains the attacked image.
- Explanation target: 'prediction' (default; Chefer et al.'s evaluation): each explainer explains
  its own prediction on the image it sees (`Explainer.predict`: the plain model's argmax, or the
  smoothed vote for DDS). 'clean': the plain model's clean prediction.
- DDS noise is keyed by the data-set ids: an image's noise depends only on the DDS seed and its id,
  not on the batch; clean and attacked versions share it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fvit.bench.runner import BatchContext
from fvit.errors import FvitError, InputError
from fvit.keys import radius_label
from fvit.settings import check_number


def predict(model, images) -> torch.Tensor:
    """(B,) the plain model's prediction."""
    with torch.no_grad():
        return model(images).argmax(dim=1)


def dds_keys(bctx: BatchContext, images) -> list[str] | None:
    """Per-image DDS noise keys: the batch's data-set ids (None, i.e. content hashes, when the
    context carries no ids)."""
    ids = list(bctx.ids)
    return ids if len(ids) == images.shape[0] else None


def attacked(attack, model, images, labels, bctx: BatchContext, eps: float | None = None):
    """``images`` under ``attack`` (an AttackSpec; against ``labels``, the clean prediction) at
    ``eps`` (default the spec's), or the images themselves without attack or at radius 0. An attack
    that draws per image (PGD's random start) is seeded with the run seed and keyed by the data-set
    ids, so an image's attacked version does not depend on its batch; others (AutoAttack) get the
    batch's seed."""
    e = attack.eps if (attack is not None and eps is None) else eps
    if attack is None or not e:
        return images
    with bctx.timed("attack"):
        keys = dds_keys(bctx, images)
        atk = attack.build(bctx.run_seed if keys is not None else bctx.seed, e)
        if keys is None or not atk.per_image:
            atk = attack.build(bctx.seed, e)
            return atk(model, images, labels)
        return atk(model, images, labels, keys=keys)


def attack_is_per_image(attack) -> bool:
    """Whether the classifier attack ``attack`` (an AttackSpec or None) draws its randomness per
    image (no attack: trivially)."""
    return attack is None or bool(attack.build(0, attack.eps or 1 / 255).per_image)


def explain(explainer, model, images, target_mode: str, clean_pred, bctx: BatchContext, key: str):
    """``explainer``'s explanation of ``images`` (timed under ``key``): its own prediction
    ('prediction') or the plain clean prediction ('clean'); DDS noise keyed by the ids."""
    tgt = None if target_mode == "prediction" else clean_pred
    with bctx.timed(key):
        return explainer(model, images, target=tgt, keys=dds_keys(bctx, images))


def labels_known(batch) -> bool:
    return bool((batch["label"] >= 0).all())


def mean(values) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def numbers(values: Sequence[float], what: str, *, positive: bool = False) -> tuple[float, ...]:
    """A Params field of numbers (radii, sigmas), checked (not parsed: strings are refused)."""
    out = tuple(check_number("Params", what, v, lo=0.0, open_lo=positive) for v in values)
    if not out:
        raise InputError(f"{what}: give at least one value", params=(what,))
    return out


def labelled(values: Sequence[float], what: str = "radii") -> list[tuple[str, float]]:
    """[(label, value)] of radii / sigmas (`fvit.keys.radius_label`), duplicates merged."""
    vals = [(radius_label(v), float(v)) for v in values]
    if not vals or any(v < 0 for _, v in vals):
        raise FvitError(f"{what} must be a non-empty list of values >= 0, got {list(values)}")
    return list(dict(vals).items())


def attack_seed(bctx: BatchContext) -> int:
    """An attack's own seed (its DDS draws are independent of the evaluation's DDS noise)."""
    return (bctx.seed * 7919 + 104_729) & 0x7FFFFFFF


def image_attack_seed(bctx: BatchContext) -> int:
    """The seed of attacks that draw per image (keyed by the data-set ids): from the run's seed, so
    an image's attack does not depend on its batch (`attack_seed` is the batch's)."""
    return (bctx.run_seed * 7919 + 104_729) & 0x7FFFFFFF
