"""``get_attack(name, eps, ...)``: attacks and step-size presets by name.

Attack names (case-insensitive, '-' == '_'):

=================  ========  ===============================================================
name               norm      defaults
=================  ========  ===============================================================
``pgd``            l_inf     10 steps, step 'paper' = 2/255, seeded random start (l_2: 'reference')
``pgd-reference``  l_inf     10 steps, step 'reference' = eps/5, seeded random start
``pgd-l2``         l_2       10 steps, step 'reference' = eps/5, seeded random start
``fgsm``           l_inf     one step of size eps from the clean image, no random start
``autoattack``     l_inf     torchattacks AutoAttack 'standard' (optional extra fvit[attacks])
=================  ========  ===============================================================

Step-size presets (``step_size=`` a preset name or a number; the command line parses ``'1/255'``):

- ``paper``: 2/255, the papers' text (Hu et al. 2024, [Re] section 4.3: eps 8/255, 10 steps,
  step 2/255; torchattacks' PGD default). Absolute: with 10 steps it cannot travel more than
  20/255 from the start, so for sweeps beyond that radius prefer ``scaled``. l_inf only.
- ``scaled``: eps/4, equal to ``paper`` at eps = 8/255 and proportional elsewhere.
- ``reference``: eps/5, the FViT authors' demo code (with a random start); also torchattacks'
  PGDL2 default ratio (alpha 0.2 for eps 1.0), hence the l_2 default.

The papers do not state the random start; every reference implementation uses one (the demo code,
and torchattacks' PGD, which the [Re] study used), so it defaults to on, seeded by ``seed``.
"""

from __future__ import annotations

from typing import Any, Callable

from fvit.attacks.autoattack import AUTOATTACK_VERSIONS, AutoAttack
from fvit.attacks.base import Attack
from fvit.attacks.gradient import GradientAttack
from fvit.attacks.norms import NORMS
from fvit.errors import FvitError
from fvit.registry import Registry
from fvit.settings import check_number

PAPER_EPS = 8 / 255
PAPER_STEPS = 10
PAPER_STEP_SIZE = 2 / 255
SCALED_STEP_FRACTION = 1 / 4
REFERENCE_STEP_FRACTION = 1 / 5

StepRule = Callable[[float, str], float]


def _paper_step(eps: float, norm: str) -> float:
    if norm != "linf":
        raise FvitError("step_size 'paper' (2/255) is defined for l_inf only; use 'reference' or a number")
    return PAPER_STEP_SIZE


STEP_SIZES: Registry[StepRule] = Registry("step-size preset")
STEP_SIZES.register("paper", _paper_step, aliases=("text",))
STEP_SIZES.register("scaled", lambda eps, norm: eps * SCALED_STEP_FRACTION)
STEP_SIZES.register("reference", lambda eps, norm: eps * REFERENCE_STEP_FRACTION, aliases=("code",))


def resolve_step_size(step_size: str | float | None, eps: float, norm: str, default: str = "paper") -> float:
    """A preset name or a number -> step size in pixel units (a numeric string such as ``'1/255'``
    is refused: the command line parses those)."""
    if step_size is None:
        step_size = default
    if isinstance(step_size, str) and step_size in STEP_SIZES:
        return STEP_SIZES.get(step_size)(eps, norm)
    if isinstance(step_size, str) and not any(ch.isdigit() for ch in step_size):
        STEP_SIZES.resolve(step_size)  # raises UnknownNameError listing the presets
    return check_number("attack", "step_size", step_size, lo=0.0, open_lo=True)


def _resolve_norm(norm: str | None, default: str, allowed: tuple[str, ...], attack: str) -> str:
    key = NORMS.resolve(norm) if norm is not None else default
    if key not in allowed:
        raise FvitError(f"attack {attack!r} supports norm {', '.join(allowed)}, not {norm!r}")
    return key


def _check_steps(steps: int) -> int:
    if int(steps) != steps or steps < 1:
        raise FvitError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _pgd_factory(name: str, default_norm: str, default_step: str, allowed: tuple[str, ...]):
    def build(eps: float, *, steps: int | None = None, step_size: str | float | None = None,
              random_start: bool | None = None, norm: str | None = None, seed: int = 0) -> Attack:
        key = _resolve_norm(norm, default_norm, allowed, name)
        return GradientAttack(
            name=name, eps=eps, norm=key, steps=_check_steps(PAPER_STEPS if steps is None else steps),
            step_size=resolve_step_size(step_size, eps, key,
                                        default_step if key == "linf" else "reference"),
            random_start=True if random_start is None else bool(random_start), seed=int(seed),
        )

    return build


def _fgsm(eps: float, *, norm: str | None = None, seed: int = 0, **ignored: Any) -> Attack:
    """FGSM: one step of size eps, no random start (``steps``/``step_size`` do not apply)."""
    _reject_iterative_options("fgsm", ignored)
    key = _resolve_norm(norm, "linf", ("linf", "l2"), "fgsm")
    return GradientAttack(name="fgsm", eps=eps, norm=key, steps=1, step_size=eps,
                          random_start=False, seed=int(seed))


def _autoattack(eps: float, *, norm: str | None = None, seed: int = 0, version: str = "standard",
                n_classes: int | None = None, **ignored: Any) -> Attack:
    _reject_iterative_options("autoattack", ignored)
    if version not in AUTOATTACK_VERSIONS:
        raise FvitError(f"autoattack version must be one of {', '.join(AUTOATTACK_VERSIONS)}, "
                        f"got {version!r}")
    key = _resolve_norm(norm, "linf", ("linf", "l2"), "autoattack")
    return AutoAttack(name="autoattack", eps=eps, norm=key, version=version, seed=int(seed),
                      n_classes=n_classes)


def _reject_iterative_options(attack: str, options: dict[str, Any]) -> None:
    """`get_attack` passes steps/step_size/random_start to every factory; None means not set."""
    set_options = {k: v for k, v in options.items() if v is not None}
    if set_options:
        raise FvitError(f"attack {attack!r} does not take {', '.join(sorted(set_options))}")


ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")
ATTACKS.register("pgd", _pgd_factory("pgd", "linf", "paper", ("linf", "l2")),
                 aliases=("pgd-linf", "pgd-paper"))
ATTACKS.register("pgd-reference", _pgd_factory("pgd-reference", "linf", "reference", ("linf", "l2")),
                 aliases=("pgd-demo",))
ATTACKS.register("pgd-l2", _pgd_factory("pgd-l2", "l2", "reference", ("l2",)))
ATTACKS.register("fgsm", _fgsm)
ATTACKS.register("autoattack", _autoattack, aliases=("aa",))


def available_attacks() -> list[str]:
    """Canonical attack names (e.g. 'pgd', 'pgd_l2')."""
    return ATTACKS.names()


def get_attack(name: str, eps: float = PAPER_EPS, *, steps: int | None = None,
               step_size: str | float | None = None, random_start: bool | None = None,
               norm: str | None = None, seed: int = 0, **kwargs: Any) -> Attack:
    """Build an attack: ``get_attack('pgd', 8/255)(forward_fn, images01, labels=None) -> adv01``.

    ``eps``: a number (pixel units in [0, 1]; l_2 units for l_2; strings such as ``'8/255'`` are
    parsed by the command line, not here).
    ``steps``: None = the attack's default (10 for PGD).
    ``step_size``: None (the attack's preset), a preset ('paper', 'scaled', 'reference') or a number.
    ``random_start``: None = on for PGD. ``norm``: None = the attack's norm ('linf' / 'l2').
    ``seed`` seeds the random start (and AutoAttack). Extra keywords go to the attack
    (AutoAttack: ``version``, ``n_classes``). Unknown names raise UnknownNameError.
    """
    eps_value = check_number("attack", "eps", eps, lo=0.0)
    factory = ATTACKS.get(name)
    return factory(eps_value, steps=steps, step_size=step_size, random_start=random_start,
                   norm=norm, seed=seed, **kwargs)
