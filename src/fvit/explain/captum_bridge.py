"""Any captum attribution as an fvit method: ``get_method("captum:IntegratedGradients", n_steps=32)``.

``captum:NAME`` names the class ``captum.attr.NAME`` (case-insensitive, '-' or '_' ignored) whose
constructor takes the model alone and whose ``attribute`` takes ``(inputs, target)``
(Saliency, InputXGradient, IntegratedGradients, GuidedBackprop, Deconvolution, DeepLift, ...). Its
parameters are ``attribute``'s keyword arguments with a bool / int / float / str default (e.g.
``n_steps``, ``method``, ``abs``), typed by those defaults; ``spec`` is
``captum:NAME[:key=value,...]`` like every method's. The attribution runs on the ``[0, 1]`` images
(the wrapper normalises inside) for the resolved class of each image, in one call for the batch;
its ``(B, 3, H, W)`` result is summed over the channels (the pixel map) and over each patch (the
patch map). captum is imported on first use only (``pip install 'fvit[captum]'``).

captum takes its gradients without ``create_graph``, so these methods have no differentiable path:
the explanation attacks refuse them (fvit's own ``saliency``, ``input_x_gradient``,
``integrated_gradients`` and ``smoothgrad`` have one).
"""

from __future__ import annotations

import inspect

import torch

from fvit.errors import InputError, UnknownNameError
from fvit.explain.base import ExplanationMethod, register_method_family, resolve_target
from fvit.models.wrapper import ExplainableViT
from fvit.registry import canonical

_CLASSES: dict[str, type[ExplanationMethod]] = {}
#: ``attribute`` arguments fvit sets itself (or that take tensors / objects, not text).
_RESERVED = {"inputs", "target", "additional_forward_args", "return_convergence_delta", "baselines"}


def _captum_attr():
    try:
        import captum.attr as attr
    except ImportError:
        raise InputError("captum:NAME methods need captum: pip install 'fvit[captum]' (or pip install captum)") from None
    return attr


def _key(name: str) -> str:
    return canonical(name).replace("_", "")


def captum_classes() -> dict[str, str]:
    """canonical name -> the captum.attr class name, for every attribution class captum exports."""
    attr = _captum_attr()
    return {_key(n): n for n in dir(attr)
            if isinstance(getattr(attr, n), type) and issubclass(getattr(attr, n), attr.Attribution)}


class CaptumMethod(ExplanationMethod):
    """Base of the generated ``captum:NAME`` classes (see the module docstring)."""

    needs_grad = True
    native_pixel = True
    needs_cls_token = False  # captum reads no token: it runs on any classifier
    passes = "captum"
    no_differentiable_reason = ("captum takes its gradients without create_graph; fvit's saliency, "
                                "input_x_gradient, integrated_gradients and smoothgrad have one")
    attribution: type = object

    def compute(self, model: ExplainableViT, images: torch.Tensor, target):
        with torch.no_grad():
            logits = model(images)
        tgt = resolve_target(target, logits)
        with torch.enable_grad():
            out = self.attribution(model).attribute(images.detach().clone().requires_grad_(True), target=tgt,
                                                    **self.params)
        if not torch.is_tensor(out) or out.shape != images.shape:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise InputError(f"method {self.name!r}: captum returned {shape}, not one map per input pixel "
                             f"{tuple(images.shape)}")
        return out.detach().sum(dim=1), logits, tgt


def captum_method_class(name: str) -> type[ExplanationMethod]:
    """The fvit method class for ``captum.attr.<name>`` (built once, then cached)."""
    classes = captum_classes()
    key = _key(name)
    if key not in classes:
        raise UnknownNameError(f"unknown captum attribution {name!r}; captum.attr has: {', '.join(sorted(classes.values()))}")
    real = classes[key]
    if real in _CLASSES:
        return _CLASSES[real]
    cls = getattr(_captum_attr(), real)
    init = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    params = inspect.signature(cls.attribute).parameters
    if len(init) != 1 or "inputs" not in params or "target" not in params:
        needs = ", ".join(p.name for p in init)
        raise InputError(f"captum attribution {real!r} does not take the model alone ({needs}) and "
                         "(inputs, target); fvit's captum bridge runs only those")
    defaults = {k: p.default for k, p in params.items()
                if k not in _RESERVED and type(p.default) in (bool, int, float, str)}
    method = type(f"Captum{real}", (CaptumMethod,), {
        "name": f"captum:{real}", "attribution": cls, "defaults": defaults, "choices": {},
        "description": f"captum.attr.{real} on the [0, 1] image, channels summed",
        "__doc__": f"``captum.attr.{real}(model).attribute(x, target=c, **params).sum(channels)``.",
    })
    _CLASSES[real] = method
    return method


register_method_family("captum", captum_method_class,
                       "any captum.attr attribution taking (inputs, target); parameters: its attribute() "
                       "keywords with a bool/int/float/str default; no differentiable path")
