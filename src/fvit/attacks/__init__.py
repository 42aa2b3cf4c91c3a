"""Adversarial attacks in [0, 1] pixel space (docs/ARCHITECTURE.md, FACTS.md "Attacks").

``get_attack(name, eps, **kw)(forward_fn, images01, labels=None) -> adv01``; names ``pgd`` (l_inf,
the papers' 2/255 step), ``pgd-reference`` (eps/5 step, the authors' demo), ``pgd-l2``, ``fgsm``,
``autoattack`` (optional extra ``fvit[attacks]``). ``forward_fn`` maps [0, 1] images to logits, so an
adaptive attack through DDS is the same call with ``expectation_forward(sample_fn, model)``.

Explanation attacks (``fvit.attacks.explanation``) aim at the heat map instead, keeping the
prediction: ``get_explanation_attack('topk' | 'target-map', eps, ...)(explainer, model, images01,
target=None, clean_maps=None) -> adv01``, with `explainer` a method or a ``DDSExplainer``.
"""

from fvit.attacks.autoattack import AutoAttack, ForwardModule, import_torchattacks
from fvit.attacks.base import Attack, ForwardFn, cross_entropy_gradient, eval_mode, predicted_labels
from fvit.attacks.eot import ExpectationForward, expectation_forward
from fvit.attacks.explanation import (
    EXPLANATION_ATTACKS,
    OBJECTIVES,
    TARGET_MAPS,
    ExplanationAttack,
    ExplanationAttackResult,
    available_explanation_attacks,
    get_explanation_attack,
)
from fvit.attacks.gradient import GradientAttack
from fvit.attacks.norms import get_norm, project_to_threat_model
from fvit.attacks.registry import (
    ATTACKS,
    PAPER_EPS,
    PAPER_STEP_SIZE,
    PAPER_STEPS,
    STEP_SIZES,
    available_attacks,
    get_attack,
    resolve_step_size,
)

__all__ = [
    "ATTACKS",
    "EXPLANATION_ATTACKS",
    "ExplanationAttack",
    "ExplanationAttackResult",
    "OBJECTIVES",
    "TARGET_MAPS",
    "available_explanation_attacks",
    "get_explanation_attack",
    "PAPER_EPS",
    "PAPER_STEPS",
    "PAPER_STEP_SIZE",
    "STEP_SIZES",
    "Attack",
    "AutoAttack",
    "ExpectationForward",
    "ForwardFn",
    "ForwardModule",
    "GradientAttack",
    "available_attacks",
    "cross_entropy_gradient",
    "eval_mode",
    "expectation_forward",
    "get_attack",
    "get_norm",
    "import_torchattacks",
    "predicted_labels",
    "project_to_threat_model",
    "resolve_step_size",
]
