"""Explanation attacks: perturb the image to change the *heat map* while keeping the prediction.

Ghorbani et al. 2019 ("Interpretation of neural networks is fragile": top-k attack) and Dombrowski
et al. 2019 ("Explanations can be manipulated and geometry is to blame": target-map attack). The
classifier attacks of this package aim at the prediction; these aim at the explanation, which is
what DDS claims to protect.

``get_explanation_attack("topk", eps=8/255, ...)`` -> an `ExplanationAttack`;
``attack(explainer, model, images01, target=None, clean_maps=None) -> adv01 (B, 3, H, W)`` in [0, 1]
(``attack.run(...)`` also returns the objective values and whether each prediction was kept).
`explainer` is any registered explanation method (``fvit.explain.get_method(name)``) or a
``fvit.dds.DDSExplainer`` (the adaptive attack through DDS). Both expose
``explainer.differentiable(model, images, target, surrogate=...)`` (DDS also ``generator=``), the
map on the autograd graph of the images.

Objectives, minimised over the threat model ``{x' : ||x' - x|| <= eps} ∩ [0, 1]^d`` on the patch map
``h(x')`` flattened to ``N`` entries, with ``mass(h) = h - min h`` and ``p(h) = mass / sum mass`` (the
map as a distribution; both invariant to shifting and positively scaling the map, like top-k):

- ``topk``: ``sum_{i in T_k(h(x))} p(h(x'))_i``, the share of the attacked map's mass on the clean
  map's top-k patches (a smooth surrogate of the top-k overlap: it is 0 only when the attacked map
  puts no mass there);
- ``target-map``: ``N * sum_i (p(h(x'))_i - p(h_t)_i)^2`` towards a target map ``h_t``: given by the
  caller (``target_maps=``), or built from the clean map by ``target_map`` = ``roll`` (the clean
  map cyclically shifted by half the patch grid in both directions: the evidence moved away from
  the object) or ``other`` (the next image's clean map in the batch, Dombrowski et al.'s choice;
  batch-dependent by construction).

Keeping the prediction: the loss adds ``keep_weight * relu(max_{c != y} z_c - z_y + margin)`` on the
logits ``z`` of the explained forward (DDS: mean logits over the samples), ``y`` the explained class
(default: the clean prediction, for DDS the smoothed one), and with ``select='best-kept'`` (default)
the attack returns, per image, the iterate with the lowest objective among those whose prediction
(argmax ``z``) is still ``y`` (the clean image if none is; for a plain model the returned prediction
therefore never changes; for DDS it is checked on the draws of the attack, so a fresh DDS draw can
still change it). ``select='last'`` returns the last iterate.

Iteration (projected gradient descent, no random start by default; ``x_0 = x``)::

    x_{t+1} = Proj(x_t - alpha * d(grad_x L(x_t)))    d = sign (l_inf), g / ||g||_2 (l_2)

Gradients: the exact map for attention-only methods, double backpropagation for gradient-based ones,
the LRP rules on a tape kept on the graph; the methods' final ReLU / clamp is replaced by the
softplus surrogate `fvit.explain.rectify` with sharpness ``surrogate`` (default 10; None = exact),
during the attack only: every evaluation uses the exact maps.

Adaptive attack through DDS (EOT): each step averages the loss over ``eot`` independent DDS draws
(each draw: m = ``dds.samples`` noisy, denoised samples, explained and fused), batched as
``B * eot`` images; gradients go through the one-shot (or any) denoiser via
``DDS.denoise_differentiable``. Reported cost: ``steps + 1`` evaluations of ``eot`` draws of m samples.

Seeding: the random start (if any) and the DDS noise come from one ``torch.Generator`` seeded with
``seed`` on the images' device. Without DDS and without a random start the attack is deterministic and
per-image (a batch gives each image the result it gets alone).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fvit.attacks.norms import NORMS, get_norm, project_to_threat_model
from fvit.errors import FvitError, InputError
from fvit.registry import Registry
from fvit.settings import check_number
from fvit.seeding import PerImageGenerator
from fvit.utils import check_images01, seeded_generator

MASS_FLOOR = 1e-12
"""Added to the total mass so that a constant map gives p = 0 instead of NaN."""

SELECTIONS = ("best-kept", "last")

ObjectiveFn = Callable[[Tensor, Tensor, int], Tensor]
"""(attacked maps (B, N) on the graph, reference maps (B, N), k) -> loss per image (B,), minimised."""


def map_distribution(maps: Tensor) -> Tensor:
    """``(h - min h) / sum(h - min h)`` per row of ``(B, N)`` maps."""
    mass = maps - maps.amin(dim=1, keepdim=True)
    return mass / (mass.sum(dim=1, keepdim=True) + MASS_FLOOR)


def topk_indices(maps: Tensor, k: int) -> Tensor:
    """``(B, k)`` indices of the k largest entries per row (ties by lower index, deterministic)."""
    return torch.sort(maps, dim=1, descending=True, stable=True).indices[:, :k]


def topk_share(maps: Tensor, clean: Tensor, k: int) -> Tensor:
    """Share of the attacked map's mass on the clean map's top-k entries (see module doc)."""
    return map_distribution(maps).gather(1, topk_indices(clean, k)).sum(dim=1)


SOFT_TOPK_TEMPERATURE = 0.1
"""Width of the sigmoid in `soft_topk_overlap`, in units of the map's per-image standard deviation."""


def soft_topk_overlap(maps: Tensor, clean: Tensor, k: int) -> Tensor:
    """A differentiable top-k overlap: ``mean_{i in T_k(clean)} sigmoid((z_i - tau) / T)`` with
    ``z`` the attacked map standardised per image (shift and scale invariant) and ``tau`` the midpoint
    between its k-th and (k+1)-th largest entries (held fixed in the gradient). It is near the hard
    overlap ``|T_k(clean) ∩ T_k(h)| / k`` and its gradient pushes exactly the clean top-k patches
    that are still above the current top-k boundary below it (rank-aware, unlike the mass share)."""
    z = (maps - maps.mean(dim=1, keepdim=True)) / (maps.std(dim=1, keepdim=True) + MASS_FLOOR)
    top = z.detach().topk(min(k + 1, z.shape[1]), dim=1).values
    tau = (top[:, k - 1] + top[:, -1]) / 2 if top.shape[1] > k else top[:, -1] - 1.0
    inside = z.gather(1, topk_indices(clean, k))
    return torch.sigmoid((inside - tau[:, None]) / SOFT_TOPK_TEMPERATURE).mean(dim=1)


def _topk_members(maps: Tensor, k: int) -> Tensor:
    """``(B, N)`` bool: ``i`` is in the top-k iff at most k entries are >= ``maps_i`` (Hu et al.'s
    Definition 4.1, ties at the k-th value excluded: the rule `fvit.metrics.topk_overlap` reports)."""
    ascending = torch.sort(maps, dim=1).values
    at_least = maps.shape[1] - torch.searchsorted(ascending, maps.contiguous(), right=False)
    return at_least <= k


def hard_topk_overlap(maps: Tensor, clean: Tensor, k: int) -> Tensor:
    """``|T_k(clean) ∩ T_k(maps)| / k`` per row of ``(B, N)`` maps: the reported top-k overlap
    (`fvit.metrics.topk_overlap`, Definition 4.1), which the attacker scores its iterates by."""
    return (_topk_members(clean.to(maps.device), k) & _topk_members(maps, k)).sum(dim=1).float() / k


def target_map_distance(maps: Tensor, target: Tensor, k: int) -> Tensor:
    """``N * ||p(h) - p(h_t)||_2^2`` per image (k unused)."""
    diff = map_distribution(maps) - map_distribution(target)
    return diff.pow(2).sum(dim=1) * maps.shape[1]


@dataclass(frozen=True)
class Objective:
    name: str
    fn: ObjectiveFn
    needs_target_map: bool
    description: str


OBJECTIVES: Registry[Objective] = Registry("explanation-attack objective")
OBJECTIVES.register("topk", Objective("topk", topk_share, False,
                                      "minimise the clean top-k patches' share of the map mass"),
                    aliases=("top-k", "ghorbani"))
OBJECTIVES.register("target-map", Objective("target-map", target_map_distance, True,
                                            "push the map towards a target map"),
                    aliases=("target", "dombrowski"))
OBJECTIVES.register("soft-topk", Objective("soft-topk", soft_topk_overlap, False,
                                           "minimise a differentiable top-k overlap (clean top-k pushed "
                                           "below the attacked map's top-k boundary)"),
                    aliases=("rank", "soft-top-k"))


def _roll_half(clean: Tensor) -> Tensor:
    gh, gw = clean.shape[-2:]
    return clean.roll(shifts=(gh // 2, gw // 2), dims=(-2, -1))


def _other_image(clean: Tensor) -> Tensor:
    return clean.roll(shifts=1, dims=0)


TARGET_MAPS: Registry[Callable[[Tensor], Tensor]] = Registry("target-map construction")
TARGET_MAPS.register("roll", _roll_half, aliases=("shift",))
TARGET_MAPS.register("other", _other_image, aliases=("other-image",))


@dataclass
class ExplanationAttackResult:
    """``adv`` (B, 3, H, W); ``objective`` (B,) the attack's objective at ``adv`` (surrogate map,
    NaN where the clean image was returned because no iterate kept the prediction);
    ``clean_objective`` (B,) the same at the clean image; ``kept`` (B,) bool: the prediction of the
    attack's own evaluation at ``adv`` is the target; ``target`` (B,); ``score`` (B,): the top-k
    overlap the attacker sees at ``adv`` (the exact map for a deterministic explainer, the mean over
    the attack's own DDS draws for DDS: never the evaluation's noise), by which iterates, restarts
    and objectives are chosen; ``evaluations``: forward / backward passes per image (each of
    ``draws`` DDS draws); ``draws``: DDS draws per evaluation; ``chosen`` (B,) long: for a suite, the
    index of the objective whose result was kept (0 for a single attack); ``parts``: a suite's
    per-objective results."""

    adv: Tensor
    objective: Tensor
    clean_objective: Tensor
    kept: Tensor
    target: Tensor
    evaluations: int
    draws: int
    score: Tensor | None = None
    chosen: Tensor | None = None
    parts: dict | None = None


def _draws(explainer, eot: int) -> int:
    """EOT draws per evaluation: ``eot`` for a stochastic explainer (DDS), 1 for a deterministic one
    (the `fvit.explain.Explainer` protocol's ``stochastic``)."""
    return eot if explainer.stochastic else 1


SCHEDULES = ("constant", "apgd")
APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
TIE_WEIGHT = 1e-4
"""Weight of the (squashed) objective that breaks ties between iterates of equal top-k overlap."""


def apgd_checkpoints(steps: int) -> list[int]:
    """Croce & Hein (2020)'s checkpoints ``ceil(p_j * steps)``: p_0 = 0, p_1 = 0.22,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, the iterations where the step may halve."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 9)) for q in p if 0 < q < 1})


@dataclass
class _Eval:
    objective: Tensor  # (B,) surrogate objective, mean over draws
    loss: Tensor  # (B,) objective + keep penalty (what the steps minimise)
    kept: Tensor  # (B,) bool
    score: Tensor  # (B,) top-k overlap the attacker sees
    grad: Tensor | None


@dataclass(frozen=True)
class ExplanationAttack:
    """An explanation attack (see module doc). Build with `get_explanation_attack`."""

    objective: str = "topk"
    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 10
    step_size: float = 2 / 255
    k: int = 10
    keep_weight: float = 1.0
    margin: float = 1.0
    eot: int = 1
    surrogate: float | None = 10.0
    target_map: str = "roll"
    select: str = "best-kept"
    random_start: bool = False
    seed: int = 0
    schedule: str = "constant"
    restarts: int = 0

    def __post_init__(self) -> None:
        OBJECTIVES.resolve(self.objective)
        TARGET_MAPS.resolve(self.target_map)
        if self.norm not in NORMS:
            NORMS.resolve(self.norm)
        checks = [(self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
                  (self.steps >= 1 and int(self.steps) == self.steps, f"steps must be an integer >= 1, got {self.steps}"),
                  (self.step_size > 0, f"step_size must be > 0, got {self.step_size}"),
                  (self.k >= 1 and int(self.k) == self.k, f"k must be an integer >= 1, got {self.k}"),
                  (self.keep_weight >= 0, f"keep_weight must be >= 0, got {self.keep_weight}"),
                  (self.eot >= 1 and int(self.eot) == self.eot, f"eot (draws per step) must be an integer >= 1, got {self.eot}"),
                  (self.surrogate is None or self.surrogate > 0, f"surrogate must be > 0 or None, got {self.surrogate}"),
                  (self.select in SELECTIONS, f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}"),
                  (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
                  (self.restarts >= 0 and int(self.restarts) == self.restarts,
                   f"restarts must be an integer >= 0, got {self.restarts}")]
        for ok, message in checks:
            if not ok:
                raise FvitError(f"explanation attack: {message}")

    @property
    def objective_spec(self) -> Objective:
        return OBJECTIVES.get(self.objective)

    @property
    def evaluations(self) -> int:
        """Forward / backward passes per image (each of the DDS draws): steps + 1 per run."""
        return (self.steps + 1) * (1 + self.restarts) if self.eps > 0 else 1

    def as_config(self) -> dict:
        return {"objective": self.objective_spec.name, "eps": self.eps, "norm": NORMS.resolve(self.norm),
                "steps": self.steps, "step_size": self.step_size, "k": self.k, "keep_weight": self.keep_weight,
                "margin": self.margin, "eot": self.eot, "surrogate": self.surrogate,
                "target_map": TARGET_MAPS.resolve(self.target_map), "select": self.select,
                "random_start": self.random_start, "seed": self.seed, "schedule": self.schedule,
                "restarts": self.restarts}

    # -- public ---------------------------------------------------------------------------------
    def __call__(self, explainer, model, images01: Tensor, target=None, clean_maps: Tensor | None = None,
                 target_maps: Tensor | None = None, *, keys=None) -> Tensor:
        return self.run(explainer, model, images01, target, clean_maps, target_maps, keys=keys).adv

    def run(self, explainer, model, images01: Tensor, target=None, clean_maps: Tensor | None = None,
            target_maps: Tensor | None = None, *, keys=None, start: Tensor | None = None) -> ExplanationAttackResult:
        """The attack with its bookkeeping. `target`: the class explained and kept (None: the
        explainer's own choice on the clean images: the prediction, or DDS's smoothed one).
        `clean_maps`: the clean patch maps ``(B, gh, gw)`` (None: computed here with `explainer`).
        `target_maps`: for 'target-map' (None: built from the clean maps by `target_map`).
        `keys`: per-image ids (data-set ids): the random starts and the attack's DDS draws of image
        i then come from its own stream seeded by (seed, key), so its result does not depend on
        its batch (None: one generator for the batch, seeded by `seed`). `start`: the first run's
        starting images instead of the clean ones (projected into the ball; e.g. a classifier
        attack's output: a warm start near the decision boundary, where maps move most)."""
        x, target, clean_maps, reference, draws = self._prepare(explainer, model, images01, target,
                                                                clean_maps, target_maps)
        generator = attack_generator(self.seed, keys, x)
        b = x.shape[0]
        best = x.clone()
        best_score = torch.full((b,), math.inf, device=x.device)
        best_obj = torch.full((b,), math.nan, device=x.device)
        best_kept = torch.zeros(b, dtype=torch.bool, device=x.device)
        clean_obj = None
        for r in range(1 + self.restarts if self.eps > 0 else 1):
            begin = x
            if self.eps > 0 and r == 0 and start is not None:
                begin = project_to_threat_model(x, start.detach().to(x), self.eps, self.norm)
            elif self.eps > 0 and (r > 0 or self.random_start):
                begin = project_to_threat_model(x, x + get_norm(self.norm).random_start(x, self.eps, generator),
                                                self.eps, self.norm)
            for adv, ev in self._iterates(explainer, model, x, begin, target, reference, draws, generator, clean_maps):
                if clean_obj is None and adv is x:
                    clean_obj = ev.objective
                key = ev.score + TIE_WEIGHT * torch.tanh(ev.objective)
                better = key < best_score
                if self.select == "best-kept":
                    better &= ev.kept
                else:  # 'last': every iterate replaces the previous one
                    better = torch.ones_like(better)
                best = torch.where(better[:, None, None, None], adv, best)
                best_score = torch.where(better, key, best_score)
                best_obj = torch.where(better, ev.objective, best_obj)
                best_kept = torch.where(better, ev.kept, best_kept)
        if clean_obj is None:
            clean_obj = self._evaluate(explainer, model, x, target, reference, draws, generator, False,
                                       clean_maps).objective
        score = torch.where(torch.isinf(best_score), torch.full_like(best_score, math.nan),
                            best_score - TIE_WEIGHT * torch.tanh(torch.nan_to_num(best_obj)))
        return ExplanationAttackResult(adv=best.detach(), objective=best_obj.detach(),
                                       clean_objective=clean_obj.detach(), kept=best_kept, target=target,
                                       evaluations=self.evaluations, draws=draws, score=score.detach(),
                                       chosen=torch.zeros(b, dtype=torch.long, device=x.device))

    # -- internals ------------------------------------------------------------------------------
    def _prepare(self, explainer, model, images01, target, clean_maps, target_maps):
        x = check_images01(images01).detach()
        b = x.shape[0]
        draws = _draws(explainer, self.eot)
        if target is None or clean_maps is None:
            with torch.no_grad():
                clean = explainer(model, x, target=target)
            target = clean.target if target is None else target
            clean_maps = clean.patch if clean_maps is None else clean_maps
        target = _as_target(target, b, x.device)
        clean_maps = clean_maps.detach().to(x.device).float()
        if clean_maps.shape[0] != b or clean_maps.ndim != 3:
            raise InputError(f"clean_maps: expected (B={b}, gh, gw) patch maps, got {tuple(clean_maps.shape)}")
        n = clean_maps[0].numel()
        if self.k > n:
            raise FvitError(f"explanation attack: k={self.k} exceeds the {n} patches of the map")
        reference = self._reference(clean_maps, target_maps).flatten(1)
        return x, target, clean_maps.flatten(1), reference, draws

    def _iterates(self, explainer, model, x, start, target, reference, draws, generator, clean_maps):
        """Yield (iterate, its evaluation) for one run from ``start``: ``steps`` projected steps
        (constant step, or APGD's momentum and step halving on stagnation), steps + 1 evaluations."""
        ball = get_norm(self.norm)
        if self.eps == 0:
            yield x, self._evaluate(explainer, model, x, target, reference, draws, generator, False, clean_maps)
            return
        apgd = self.schedule == "apgd"
        b = x.shape[0]
        eta = torch.full((b, 1, 1, 1), 2 * self.eps if apgd else self.step_size, device=x.device, dtype=x.dtype)
        checkpoints = set(apgd_checkpoints(self.steps)) if apgd else set()
        adv, prev = start, start
        ev = self._evaluate(explainer, model, adv, target, reference, draws, generator, True, clean_maps)
        yield adv, ev
        best_loss, best_x, best_grad = ev.loss.clone(), adv, ev.grad
        loss_prev = ev.loss
        improved = torch.zeros(b, device=x.device)
        since, eta_at_check, best_at_check = 0, eta.clone(), best_loss.clone()
        for t in range(1, self.steps + 1):
            z = project_to_threat_model(x, adv - eta * ball.ascent_direction(ev.grad).to(adv.dtype), self.eps, self.norm)
            if apgd and t > 1:
                nxt = adv + APGD_MOMENTUM * (z - adv) + (1 - APGD_MOMENTUM) * (adv - prev)
                nxt = project_to_threat_model(x, nxt, self.eps, self.norm)
            else:
                nxt = z
            prev, adv = adv, nxt
            ev = self._evaluate(explainer, model, adv, target, reference, draws, generator, t < self.steps, clean_maps)
            yield adv, ev
            if not apgd or t == self.steps:
                continue
            improved += (ev.loss < loss_prev).float()
            loss_prev = ev.loss
            since += 1
            gain = ev.loss < best_loss
            best_loss = torch.where(gain, ev.loss, best_loss)
            best_x = torch.where(gain[:, None, None, None], adv, best_x)
            best_grad = torch.where(gain[:, None, None, None], ev.grad, best_grad)
            if t in checkpoints:
                stalled = (improved < APGD_RHO * since) | ((eta == eta_at_check).flatten() & (best_loss == best_at_check))
                eta_at_check = eta.clone()
                back = stalled[:, None, None, None]
                eta = torch.where(back, eta / 2, eta)
                # restart the stalled images from their best point with the gradient measured there
                # (no new evaluation: every image draws the same noise whatever its batch-mates do)
                adv = torch.where(back, best_x, adv)
                prev = adv
                ev = dataclasses.replace(ev, grad=torch.where(back, best_grad, ev.grad),
                                         loss=torch.where(stalled, best_loss, ev.loss))
                loss_prev = ev.loss
                improved.zero_()
                since, best_at_check = 0, best_loss.clone()

    def _reference(self, clean_maps: Tensor, target_maps: Tensor | None) -> Tensor:
        if not self.objective_spec.needs_target_map:
            return clean_maps
        if target_maps is None:
            return TARGET_MAPS.get(self.target_map)(clean_maps)
        target_maps = target_maps.detach().to(clean_maps.device).float()
        if target_maps.shape != clean_maps.shape:
            raise InputError(f"target_maps: expected shape {tuple(clean_maps.shape)}, got "
                             f"{tuple(target_maps.shape)}")
        return target_maps

    def _evaluate(self, explainer, model, images: Tensor, target: Tensor, reference: Tensor, draws: int,
                  generator, need_grad: bool, clean_maps: Tensor) -> _Eval:
        """Objective, loss, prediction kept and the attacker's top-k overlap (B,) at `images`, and
        the loss gradient if asked."""
        b = images.shape[0]
        with torch.inference_mode(False), torch.enable_grad():
            leaf = images.detach().clone().requires_grad_(True)
            inputs = leaf.repeat_interleave(draws, dim=0) if draws > 1 else leaf
            tgt = target.repeat_interleave(draws) if draws > 1 else target
            e = explainer.differentiable(model, inputs, tgt, surrogate=self.surrogate, generator=generator)
            maps = e.patch.flatten(1).float()
            ref = reference.repeat_interleave(draws, dim=0) if draws > 1 else reference
            per_draw = self.objective_spec.fn(maps, ref, self.k)
            obj = per_draw.view(b, draws).mean(dim=1)
            logits = e.logits.float()
            penalty = _margin_penalty(logits, tgt, self.margin).view(b, draws).mean(dim=1)
            loss = obj + self.keep_weight * penalty
            kept = logits.view(b, draws, -1).mean(dim=1).argmax(dim=1) == target
            grad = torch.autograd.grad(loss.sum(), leaf)[0] if need_grad else None
        with torch.no_grad():
            if explainer.stochastic or self.surrogate is None:
                seen = maps.detach()
            else:  # the exact map (the attack differentiates a surrogate of it)
                seen = explainer(model, images.detach(), target=target).patch.flatten(1).float()
            cm = clean_maps.repeat_interleave(seen.shape[0] // b, dim=0)
            score = hard_topk_overlap(seen, cm, self.k).view(b, -1).mean(dim=1)
        return _Eval(obj.detach(), loss.detach(), kept, score, grad)


@dataclass(frozen=True)
class ExplanationAttackSuite:
    """Several explanation attacks on the same images; per image, the result with the lowest
    top-k overlap the attacker sees (`ExplanationAttackResult.score`) among those that kept the
    prediction (an image none kept returns its clean image). Build with `get_explanation_attack(
    'suite', eps, objectives=(...), ...)`; ``attacks`` are `ExplanationAttack`s at one radius."""

    attacks: tuple[ExplanationAttack, ...]

    def __post_init__(self) -> None:
        if not self.attacks:
            raise FvitError("explanation attack suite: give at least one objective")
        if len({(a.eps, a.norm, a.k) for a in self.attacks}) != 1:
            raise FvitError("explanation attack suite: every attack must share eps, norm and k")

    @property
    def eps(self) -> float:
        return self.attacks[0].eps

    @property
    def k(self) -> int:
        return self.attacks[0].k

    @property
    def evaluations(self) -> int:
        return sum(a.evaluations for a in self.attacks)

    def as_config(self) -> dict:
        return {"objective": "suite", "attacks": [a.as_config() for a in self.attacks]}

    def __call__(self, explainer, model, images01: Tensor, target=None, clean_maps: Tensor | None = None,
                 target_maps: Tensor | None = None, *, keys=None) -> Tensor:
        return self.run(explainer, model, images01, target, clean_maps, target_maps, keys=keys).adv

    def run(self, explainer, model, images01: Tensor, target=None, clean_maps: Tensor | None = None,
            target_maps: Tensor | None = None, *, keys=None) -> ExplanationAttackResult:
        x = check_images01(images01).detach()
        if target is None or clean_maps is None:
            with torch.no_grad():
                clean = explainer(model, x, target=target)
            target = clean.target if target is None else target
            clean_maps = clean.patch if clean_maps is None else clean_maps
        parts = {a.objective_spec.name: a.run(explainer, model, x, target, clean_maps, target_maps, keys=keys)
                 for a in self.attacks}
        return combine_worst(parts)


def combine_worst(parts: dict[str, ExplanationAttackResult]) -> ExplanationAttackResult:
    """Per image, the part with the lowest attacker-side score among those that kept the
    prediction (ties: the first part); `chosen` indexes ``parts`` in order."""
    results = list(parts.values())
    scores = torch.stack([torch.where(r.kept, torch.nan_to_num(r.score, nan=math.inf), torch.full_like(r.score, math.inf))
                          for r in results])
    chosen = scores.argmin(dim=0)
    pick = lambda attr: torch.stack([getattr(r, attr) for r in results]).gather(  # noqa: E731
        0, chosen.view(1, -1, *([1] * (getattr(results[0], attr).ndim - 1))).expand(
            1, *getattr(results[0], attr).shape))[0]
    return ExplanationAttackResult(adv=pick("adv"), objective=pick("objective"), clean_objective=pick("clean_objective"),
                                   kept=pick("kept"), target=results[0].target,
                                   evaluations=sum(r.evaluations for r in results), draws=results[0].draws,
                                   score=pick("score"), chosen=chosen, parts=dict(parts))


def attack_generator(seed: int, keys, images: Tensor):
    """The attack's random stream: per image from (seed, 'attack|' + key) when ``keys`` are given
    (`fvit.seeding.PerImageGenerator`), else one generator seeded by ``seed``."""
    if keys is None:
        return seeded_generator(seed, images.device)
    keys = list(keys)
    if len(keys) != images.shape[0]:
        raise InputError(f"explanation attack: {len(keys)} keys for {images.shape[0]} images")
    return PerImageGenerator.from_keys(seed, [f"attack|{k}" for k in keys], images.device)


def _margin_penalty(logits: Tensor, target: Tensor, margin: float) -> Tensor:
    """``relu(max_{c != y} z_c - z_y + margin)`` per row."""
    z_y = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], -math.inf)
    return F.relu(others.amax(dim=1) - z_y + margin)


def _as_target(target, b: int, device) -> Tensor:
    t = torch.as_tensor(target, device=device).long()
    if t.ndim == 0:
        t = t.expand(b).clone()
    if t.shape != (b,):
        raise InputError(f"target: expected None, an int or shape ({b},), got shape {tuple(t.shape)}")
    return t


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------

DEFAULT_STEPS = 10
DEFAULT_STEP_FRACTION = 1 / 4  # eps / 4: 2/255 at 8/255, as the classifier PGD's 'scaled' preset


def _factory(objective: str):
    def build(eps: float | str = 8 / 255, **options: Any) -> ExplanationAttack:
        return _build(objective, eps, **options)

    build.__doc__ = f"The {objective!r} explanation attack (see fvit.attacks.explanation)."
    return build


EXPLANATION_ATTACKS: Registry[Callable[..., ExplanationAttack]] = Registry("explanation attack")
EXPLANATION_ATTACKS.register("topk", _factory("topk"), aliases=("top-k", "ghorbani"))
EXPLANATION_ATTACKS.register("target-map", _factory("target-map"), aliases=("target", "dombrowski"))
EXPLANATION_ATTACKS.register("soft-topk", _factory("soft-topk"), aliases=("rank", "soft-top-k"))

SUITE_OBJECTIVES = ("topk", "soft-topk", "target-map")
"""The suite's default objectives: the mass share, the rank-aware soft top-k, the target map."""


def _suite(eps: float | str = 8 / 255, *, objectives=SUITE_OBJECTIVES, **options: Any) -> ExplanationAttackSuite:
    """The explanation-attack suite: every objective of ``objectives`` with the same options; per
    image the worst map among those that kept the prediction (see `ExplanationAttackSuite`)."""
    names = [OBJECTIVES.resolve(o).replace("_", "-") for o in objectives]
    if len(set(names)) != len(names):
        raise FvitError(f"explanation attack suite: objectives repeat: {list(objectives)}")
    return ExplanationAttackSuite(tuple(_build(n, eps, **options) for n in names))


EXPLANATION_ATTACKS.register("suite", _suite, aliases=("strongest", "all"))


def available_explanation_attacks() -> list[str]:
    return EXPLANATION_ATTACKS.names()


def _build(objective: str, eps: float, *, norm: str = "linf", steps: int | None = None,
           step_size: float | None = None, step_fraction: float = DEFAULT_STEP_FRACTION,
           **options: Any) -> ExplanationAttack:
    eps_value = check_number("explanation attack", "eps", eps, lo=0.0)
    key = NORMS.resolve(norm)
    if not step_fraction > 0:
        raise FvitError(f"explanation attack: step_fraction must be > 0, got {step_fraction}")
    step = (eps_value * step_fraction if step_size is None
            else check_number("explanation attack", "step_size", step_size, lo=0.0, open_lo=True))
    if eps_value == 0 and step_size is None:
        step = 1.0  # unused: eps = 0 returns the clean images
    return ExplanationAttack(objective=OBJECTIVES.resolve(objective).replace("_", "-"), eps=eps_value, norm=key,
                             steps=DEFAULT_STEPS if steps is None else int(steps), step_size=step, **options)


def get_explanation_attack(name: str, eps: float = 8 / 255, **options: Any) -> ExplanationAttack:
    """``get_explanation_attack('topk', 8/255, norm='linf', steps=10, step_size=None, step_fraction=1/4
    (the step when step_size is None: eps * step_fraction), k=10,
    keep_weight=1.0, margin=1.0, eot=1, surrogate=10.0, target_map='roll', select='best-kept',
    random_start=False, seed=0, schedule='constant' | 'apgd', restarts=0)``; then
    ``attack(explainer, model, images01, target=None, clean_maps=None, keys=None) -> adv01``.
    ``'suite'`` (options plus ``objectives=('topk', 'soft-topk', 'target-map')``) runs each
    objective and keeps per image the worst map that kept the prediction."""
    return EXPLANATION_ATTACKS.get(name)(eps, **options)
