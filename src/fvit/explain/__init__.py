"""Explanation methods for ViTs, batched and class-specific.

``explain(model, images, method="transformer_attribution", target=None) -> Explanation``.
Methods (see each class's docstring for the formula): ``raw_attention`` (alias ``attention``),
``rollout``, ``gradcam``, ``lrp``, ``transformer_attribution`` (``ta``), ``attribution_rollout``
(``ar``), ``generic_attention`` (``gae``), ``attnlrp``: these read the CLS token and need a timm ViT
with a CLS token and ``global_pool='token'`` (on Swin none applies). ``saliency``,
``input_x_gradient``, ``integrated_gradients`` (``ig``), ``smoothgrad`` and ``captum:NAME`` (any
captum attribution taking ``(inputs, target)``) work on the input pixels and run on any classifier.
"""

from fvit.explain.base import (
    METHODS,
    Explainer,
    Explanation,
    ExplanationMethod,
    available_methods,
    explain,
    get_method,
    method_parameters,
    rectify,
    register_method,
    resolve_target,
)
from fvit.explain.targets import ClassTarget, RankTarget
from fvit.explain import attention as _attention  # noqa: F401  (registers its methods)
from fvit.explain import lrp as _lrp  # noqa: F401  (registers its methods)
from fvit.explain import generic_attention as _generic_attention  # noqa: F401  (registers its methods)
from fvit.explain import gradients as _gradients  # noqa: F401  (registers its methods)
from fvit.explain import attnlrp as _attnlrp  # noqa: F401  (registers its methods)
from fvit.explain import captum_bridge as _captum_bridge  # noqa: F401  (registers captum:NAME; captum loads lazily)

__all__ = [
    "METHODS",
    "ClassTarget",
    "Explainer",
    "RankTarget",
    "Explanation",
    "ExplanationMethod",
    "available_methods",
    "explain",
    "get_method",
    "method_parameters",
    "rectify",
    "register_method",
    "resolve_target",
]
