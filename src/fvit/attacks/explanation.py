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
    attack's own evaluation at ``adv`` is the target; ``target`` (B,); ``evaluations``: forward /
    backward passes per image (each of ``draws`` DDS draws); ``draws``: DDS draws per evaluation."""

    adv: Tensor
    objective: Tensor
    clean_objective: Tensor
    kept: Tensor
    target: Tensor
    evaluations: int
    draws: int


def _draws(explainer, eot: int) -> int:
    """EOT draws per evaluation: ``eot`` for a stochastic explainer (DDS), 1 for a deterministic one
    (the `fvit.explain.Explainer` protocol's ``stochastic``)."""
    return eot if explainer.stochastic else 1


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
                  (self.select in SELECTIONS, f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")]
        for ok, message in checks:
            if not ok:
                raise FvitError(f"explanation attack: {message}")

    @property
    def objective_spec(self) -> Objective:
        return OBJECTIVES.get(self.objective)

    def as_config(self) -> dict:
        return {"objective": self.objective_spec.name, "eps": self.eps, "norm": NORMS.resolve(self.norm),
                "steps": self.steps, "step_size": self.step_size, "k": self.k, "keep_weight": self.keep_weight,
                "margin": self.margin, "eot": self.eot, "surrogate": self.surrogate,
                "target_map": TARGET_MAPS.resolve(self.target_map), "select": self.select,
                "random_start": self.random_start, "seed": self.seed}

    # -- public ---------------------------------------------------------------------------------
    def __call__(self, explainer, model, images01: Tensor, target=None, clean_maps: Tensor | None = None,
                 target_maps: Tensor | None = None) -> Tensor:
        return self.run(explainer, model, images01, target, clean_maps, target_maps).adv

    def run(self, explainer, model, images01: Tensor, target=None, clean_maps: Tensor | None = None,
            target_maps: Tensor | None = None) -> ExplanationAttackResult:
        """The attack with its bookkeeping. `target`: the class explained and kept (None: the
        explainer's own choice on the clean images: the prediction, or DDS's smoothed one).
        `clean_maps`: the clean patch maps ``(B, gh, gw)`` (None: computed here with `explainer`).
        `target_maps`: for 'target-map' (None: built from the clean maps by `target_map`)."""
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
        generator = seeded_generator(self.seed, x.device)
        ball = get_norm(self.norm)
        adv = x
        if self.random_start and self.eps > 0:
            adv = project_to_threat_model(x, x + ball.random_start(x, self.eps, generator), self.eps, self.norm)
        best, best_obj = x.clone(), torch.full((b,), math.inf, device=x.device)
        best_kept = torch.zeros(b, dtype=torch.bool, device=x.device)
        clean_obj = None
        evaluations = self.steps + 1 if self.eps > 0 else 1
        for t in range(evaluations):
            last = t == evaluations - 1
            obj, kept, grad = self._evaluate(explainer, model, adv, target, reference, draws, generator,
                                             need_grad=not last)
            if t == 0 and not (self.random_start and self.eps > 0):
                clean_obj = obj
            better = obj < best_obj
            if self.select == "best-kept":
                better &= kept
            elif last:
                better = torch.ones_like(better)
            best = torch.where(better[:, None, None, None], adv, best)
            best_obj = torch.where(better, obj, best_obj)
            best_kept = torch.where(better, kept, best_kept)
            if last:
                break
            adv = adv - self.step_size * ball.ascent_direction(grad).to(adv.dtype)
            adv = project_to_threat_model(x, adv, self.eps, self.norm)
        if clean_obj is None:
            clean_obj, _, _ = self._evaluate(explainer, model, x, target, reference, draws, generator, False)
        best_obj = torch.where(torch.isinf(best_obj), torch.full_like(best_obj, math.nan), best_obj)
        return ExplanationAttackResult(adv=best.detach(), objective=best_obj.detach(),
                                       clean_objective=clean_obj.detach(), kept=best_kept, target=target,
                                       evaluations=evaluations, draws=draws)

    # -- internals ------------------------------------------------------------------------------
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
                  generator: torch.Generator, need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Objective (B,) and prediction kept (B,) at `images`, and the loss gradient if asked."""
        b = images.shape[0]
        with torch.inference_mode(False), torch.enable_grad():
            leaf = images.detach().clone().requires_grad_(True)
            inputs = leaf.repeat_interleave(draws, dim=0) if draws > 1 else leaf
            tgt = target.repeat_interleave(draws) if draws > 1 else target
            e = explainer.differentiable(model, inputs, tgt, surrogate=self.surrogate, generator=generator)
            maps = e.patch.flatten(1).float()
            ref = reference.repeat_interleave(draws, dim=0) if draws > 1 else reference
            obj = self.objective_spec.fn(maps, ref, self.k).view(b, draws).mean(dim=1)
            logits = e.logits.float().view(b, draws, -1).mean(dim=1)
            kept = logits.argmax(dim=1) == target
            grad = None
            if need_grad:
                loss = obj.sum()
                if self.keep_weight > 0:
                    loss = loss + self.keep_weight * _margin_penalty(e.logits.float(), tgt, self.margin).sum() / draws
                (grad,) = torch.autograd.grad(loss, leaf)
        return obj.detach(), kept, grad


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
    random_start=False, seed=0)``; then ``attack(explainer, model, images01, target=None,
    clean_maps=None) -> adv01``."""
    return EXPLANATION_ATTACKS.get(name)(eps, **options)
