"""Attacks as settings values: `AttackSpec` (a classifier attack by name) and
`ExplanationAttackSpec` (the explanation attacks of `fvit.attacks.explanation`).

Both are frozen `fvit.settings.Settings`: built whole by the command line (which parses '8/255'),
passed unchanged through the experiment engine, recorded by `to_dict()` / `as_config()`, and turned
into attack objects by `build(...)` at the point of use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from fvit.errors import FvitError, InputError
from fvit.registry import canonical
from fvit.settings import Settings, check_int, check_number, set_field


@dataclass(frozen=True)
class AttackSpec(Settings):
    """A classifier attack by name with its options; `build(seed, eps)` makes the `fvit.attacks`
    object. ``step_size``: None (the attack's default), a preset name ('paper', 'scaled',
    'reference') or a number; ``options``: further keyword arguments of `fvit.attacks.get_attack`."""

    name: str = "pgd"
    eps: float = 8 / 255
    steps: int | None = None
    step_size: str | float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = "AttackSpec"
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"{own}: name must be an attack name, got {self.name!r}", params=("attack",))
        set_field(self, "eps", check_number(own, "eps", self.eps, lo=0.0))
        set_field(self, "steps", check_int(own, "steps", self.steps, lo=1, allow_none=True))
        if self.step_size is not None and not isinstance(self.step_size, str):
            set_field(self, "step_size", check_number(own, "step_size", self.step_size, lo=0.0, open_lo=True))
        elif isinstance(self.step_size, str) and any(ch.isdigit() for ch in self.step_size):
            raise InputError(f"{own}: step_size must be a preset name or a number, got {self.step_size!r} "
                             f"(strings such as '2/255' are parsed by the command line)", params=("step_size",))
        set_field(self, "options", dict(self.options))

    def build(self, seed: int, eps: float | None = None):
        """The attack object at ``eps`` (default: this spec's), seeded with ``seed``."""
        from fvit.attacks.registry import get_attack

        return get_attack(self.name, self.eps if eps is None else eps, steps=self.steps,
                          step_size=self.step_size, seed=seed, **dict(self.options))

    def as_config(self) -> dict:
        """Flat JSON-ready form (options merged in; the canonical name) for results and stores."""
        return {"name": canonical(self.name), "eps": self.eps, "steps": self.steps,
                "step_size": self.step_size, **dict(self.options)}


def as_attack(attack: AttackSpec | str | Mapping | None) -> AttackSpec | None:
    """An `AttackSpec` from a spec, a name or a dict of its fields (unknown keys become options)."""
    if attack is None or isinstance(attack, AttackSpec):
        return attack
    if isinstance(attack, str):
        return AttackSpec(attack)
    if isinstance(attack, Mapping):
        a = dict(attack)
        known = {f.name for f in dataclasses.fields(AttackSpec)} - {"options"}
        return AttackSpec(**{k: a.pop(k) for k in list(a) if k in known}, options=a)
    raise FvitError(f"attack must be a name, an AttackSpec or a dict, got {type(attack).__name__}")


@dataclass(frozen=True)
class ExplanationAttackSpec(Settings):
    """The explanation attacks of an experiment (see `fvit.attacks.explanation`).

    `objectives`: names ('topk', 'soft-topk', 'target-map'); `steps` (per restart); `step_size`
    (None: eps * `step_fraction`, default eps/4; the constant schedule's step); `schedule`:
    'apgd' (Croce & Hein's momentum and step halving on stagnation, from 2 eps) or 'constant';
    `restarts`: further runs from random starts in the ball (the best kept); `k` (also the k of the
    reported top-k overlap); `eot`: DDS draws per step; `attack_samples`: DDS samples per draw
    inside the attack (None: the DDS's own m; fewer is cheaper, the evaluation always uses m);
    `surrogate`: softplus sharpness replacing ReLU / clamp during the attack (None: exact);
    `target_map`: 'roll' | 'other'; `suite`: also report, per image, the worst map among the
    objectives' results that kept the prediction (chosen by what the attacker sees: the exact map,
    or its own DDS draws, never the evaluation noise); `warm_start`: where an experiment also runs a
    classifier attack, run the first objective once more from that attack's image (near the
    decision boundary, where maps move most) as one more member of the suite.
    """

    objectives: tuple[str, ...] = ("topk", "soft-topk", "target-map")
    norm: str = "linf"
    steps: int = 20
    step_size: float | None = None
    step_fraction: float = 1 / 4
    k: int = 10
    keep_weight: float = 1.0
    margin: float = 1.0
    eot: int = 1
    attack_samples: int | None = None
    surrogate: float | None = 10.0
    target_map: str = "roll"
    schedule: str = "apgd"
    restarts: int = 0
    suite: bool = True
    warm_start: bool = True

    def __post_init__(self) -> None:
        from fvit.attacks.explanation import EXPLANATION_ATTACKS

        set_field(self, "objectives", tuple(self.objectives))
        if "suite" in [canonical(o) for o in self.objectives]:
            raise FvitError("explanation attack: 'suite' is not an objective (the suite is reported "
                            "with suite=True over the objectives)")
        if not self.objectives:
            raise FvitError("explanation attack: give at least one objective (topk, target-map)")
        for name in self.objectives:
            EXPLANATION_ATTACKS.resolve(name)
        if self.attack_samples is not None and self.attack_samples < 1:
            raise FvitError(f"attack_samples must be >= 1, got {self.attack_samples}")
        self.build(self.objectives[0], 1 / 255, 0)  # validates every other field

    def names(self) -> list[str]:
        """The canonical objective names ('topk', 'target-map'), the rows' attack names."""
        from fvit.attacks.explanation import EXPLANATION_ATTACKS

        return [EXPLANATION_ATTACKS.resolve(n).replace("_", "-") for n in self.objectives]

    def build(self, objective: str, eps: float, seed: int):
        """The attack of ``objective`` at radius ``eps``, seeded with ``seed``."""
        from fvit.attacks.explanation import get_explanation_attack

        return get_explanation_attack(objective, eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                                      step_fraction=self.step_fraction, k=self.k, keep_weight=self.keep_weight,
                                      margin=self.margin, eot=self.eot, surrogate=self.surrogate,
                                      target_map=self.target_map, seed=seed, schedule=self.schedule,
                                      restarts=self.restarts)

    def as_config(self) -> dict:
        return {"objectives": self.names(), "norm": self.norm, "steps": self.steps, "step_size": self.step_size,
                "step_fraction": self.step_fraction, "k": self.k, "keep_weight": self.keep_weight,
                "margin": self.margin, "eot": self.eot, "attack_samples": self.attack_samples,
                "surrogate": self.surrogate, "target_map": self.target_map, "schedule": self.schedule,
                "restarts": self.restarts, "suite": self.suite, "warm_start": self.warm_start}


__all__ = ["AttackSpec", "ExplanationAttackSpec", "as_attack"]
