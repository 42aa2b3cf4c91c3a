"""The `Explanation` result, the `ExplanationMethod` base class and the method registry.

Every method is batched (one forward / backward for the whole batch) and class-specific where the
method uses the class at all: ``target`` is None (the prediction), an int, or a ``(B,)`` tensor.
Since samples are independent, gradients of ``sum_b y_{b, t_b}`` give each sample its own gradient.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from fvit.errors import InputError, UnsupportedModelError
from fvit.models.wrapper import ExplainableViT, eval_mode
from fvit.registry import Registry, canonical
from fvit.utils import check_images01


@dataclass
class Explanation:
    """Maps are raw (not normalised): consumers normalise.

    ``patch (B, gh, gw)``, ``pixel (B, H, W)`` at the input resolution, ``target (B,) long``,
    ``logits (B, C)`` (detached), ``method`` the canonical method name.
    """

    patch: torch.Tensor
    pixel: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    method: str

    def __len__(self) -> int:
        return int(self.patch.shape[0])

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)


def target_tensor(target, batch: int, device) -> torch.Tensor | None:
    """An explicit target as a ``(batch,)`` long tensor: an int for every image, or one class per
    image (a tensor or sequence of ``batch`` entries; InputError otherwise); None stays None."""
    if target is None:
        return None
    out = torch.as_tensor(target, dtype=torch.long, device=device)
    out = (out.expand(batch) if out.ndim == 0 else out.reshape(-1)).clone()
    if out.numel() != batch:
        raise InputError(f"target has {out.numel()} entries for a batch of {batch} images")
    return out


def resolve_target(target, logits: torch.Tensor) -> torch.Tensor:
    """None -> argmax of ``logits``; int -> that class for every image; ``(B,)`` tensor / sequence
    -> per-image classes; a callable -> ``target(logits)`` (e.g. `fvit.explain.RankTarget(1)`, the
    second most likely class). Raises InputError on a wrong shape or an out-of-range class."""
    batch, num_classes = logits.shape
    if callable(target):
        target = target(logits.detach())
    out = target_tensor(target, batch, logits.device)
    if out is None:
        out = logits.detach().argmax(dim=1)
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= num_classes):
        raise InputError(f"target class out of range [0, {num_classes}): {out.tolist()}")
    return out


@runtime_checkable
class Explainer(Protocol):
    """What every explainer implements, plain (`ExplanationMethod`) or smoothed
    (`fvit.dds.DDSExplainer`); experiments, attacks and certification call only this.

    ``spec``: the results key (method spec; '+dds' appended by the smoothed explainer).
    ``stochastic``: whether two calls on the same images may differ (True for DDS: attacks then
    average over draws; False for a plain method).
    ``__call__(model, images, target=None, *, generator=None, keys=None) -> Explanation``:
    ``generator`` / ``keys`` choose the noise of a smoothed explainer (one stream for the batch, or
    one per image keyed by ``keys``); plain methods ignore them.
    ``predict(model, images, *, generator=None, keys=None) -> (B,)``: the class explained when
    ``target`` is None (the model's prediction; the majority vote over the samples for DDS).
    ``differentiable(model, images, target=None, *, surrogate=None, generator=None)``: the map on
    the autograd graph of ``images`` (explanation attacks).
    """

    spec: str
    stochastic: bool

    def __call__(self, model, images: torch.Tensor, target=None, *, generator=None, keys=None) -> Explanation: ...

    def predict(self, model, images: torch.Tensor, *, generator=None, keys=None) -> torch.Tensor: ...

    def differentiable(self, model, images: torch.Tensor, target=None, *, surrogate: float | None = None,
                       generator=None) -> Explanation: ...


def graph_mode(graph: bool):
    """``torch.inference_mode()`` when no graph is kept (``graph`` False), else a no-op context."""
    return contextlib.nullcontext() if graph else torch.inference_mode()


def class_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_b logits[b, target_b]``: its gradient gives every sample its own class gradient."""
    return logits.gather(1, target[:, None]).sum()


def upsample(patch: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear ``(B, gh, gw) -> (B, H, W)`` (align_corners=False, as Chefer et al.'s evaluation)."""
    return F.interpolate(patch[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def sum_pool(pixel: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``(B, H, W) -> (B, gh, gw)``: sum of the pixel map inside each patch."""
    ph, pw = patch_size
    return F.avg_pool2d(pixel[:, None], kernel_size=(ph, pw), stride=(ph, pw))[:, 0] * (ph * pw)


def cls_row_to_grid(matrix: torch.Tensor, model: ExplainableViT) -> torch.Tensor:
    """``(B, T, T)`` token matrix -> CLS row without the prefix columns, as ``(B, gh, gw)``."""
    row = matrix[:, 0, model.num_prefix_tokens:]
    return row.reshape(row.shape[0], *model.grid_size)


def rectify(x: torch.Tensor, surrogate: float | None = None) -> torch.Tensor:
    """``max(x, 0)`` (``surrogate=None``), or its softplus surrogate for explanation attacks:

        s / beta * softplus(beta * x / s),    s = max |x| over each sample (all dims but the first)

    with ``beta = surrogate``. The surrogate is smooth, positive, homogeneous of degree 1 in ``x``
    (so its shape does not depend on the map's scale), within ``s log(2) / beta`` of the ReLU, and
    its gradient ``sigmoid(beta x / s)`` does not vanish on the clamped entries (Dombrowski et al.
    2019 replace ReLU by softplus for the same reason). Used only inside `differentiable`.
    """
    if surrogate is None:
        return x.clamp(min=0)
    scale = x.abs().amax(dim=tuple(range(1, x.ndim)), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return scale / surrogate * F.softplus(surrogate * x / scale)


#: On a CPU a method runs on chunks of images whose largest activation (the MLP hidden layer or the
#: attention maps of one block) stays under this many bytes: 8 ViT-B/16 images (2.4 MB each in
#: float32), so a chunk's tensors stay in the allocator's reused memory and its autograd graph is
#: freed before the next chunk. At batch 32 (vs batch 1, per image) this took LRP from 1.16x to 1.18x
#: and Transformer Attribution from 0.94x to 1.07x, and with `fvit.memory.keep_freed_cpu_memory` to
#: 1.29x / 1.38x (`benchmarks/bench_pipeline.py`, docs/SPEED.md). The demo's and the tests'
#: small models run their whole batch at once.
CPU_CHUNK_BYTES = 20 * 2**20


def cpu_chunk(model: ExplainableViT) -> int:
    """Images per chunk on a CPU for ``model`` (see `CPU_CHUNK_BYTES`; at least 1)."""
    if model.token_support_problem is not None:  # not a standard ViT (Swin, ...): no estimate, whole batch
        return 1 << 30
    widths = [model.num_tokens * model.num_heads]  # per token: attention maps of all heads
    widths += [m.out_features for blk in model.blocks for m in blk.modules() if isinstance(m, nn.Linear)]  # qkv, fc1
    per_image = model.num_tokens * max(widths) * torch.finfo(model.dtype).bits // 8
    return max(1, CPU_CHUNK_BYTES // per_image)


class ExplanationMethod:
    """Base class: ``method(model, images, target=None) -> Explanation``.

    Subclasses set ``name``, ``description``, ``needs_grad`` and implement ``compute`` returning
    ``(map, logits, target)`` where map is the patch map ``(B, gh, gw)``, or the pixel map
    ``(B, H, W)`` when ``native_pixel`` is True.

    Parameters: a subclass declares its parameters and their defaults in ``defaults`` (and the
    allowed values of string parameters in ``choices``); an instance is built with any of them as
    keywords (``Rollout(start_layer=1)``, or ``get_method("rollout", start_layer=1)``) and keeps
    them, typed and validated, in ``params``. ``spec`` names the instance: the method name, then
    the parameters that differ from the defaults (``"rollout:start_layer=1"``); it is the key the
    benchmarks and results use, and ``Explanation.method``.

    ``differentiable(model, images, target=None, surrogate=None) -> Explanation`` is the same map
    with its patch / pixel maps and logits on the autograd graph of ``images`` (for explanation
    attacks). A method is written once: ``attribute(model, images, target, graph, surrogate)``
    returns what ``compute`` returns, detached work and no graph when ``graph`` is False (`compute`)
    and everything on the graph of ``images`` when True (`compute_differentiable`), like
    pytorch-grad-cam's ``detach=False``. (A subclass may instead override ``compute`` and
    ``compute_differentiable`` separately; one that has neither has no differentiable path.)
    Gradient-based methods differentiate their own input gradient (double backpropagation,
    ``create_graph=True``). ``surrogate`` (a softplus sharpness, see `rectify`) replaces the
    methods' ReLU / clamp by a smooth surrogate; ``None`` gives the exact map.
    """

    name: str = ""
    description: str = ""
    needs_grad: bool = False
    #: What one call costs, as `fvit methods` lists it: None = "gradients" / "forward only" from
    #: ``needs_grad``; a method with another pass says so (LRP: "relevance pass").
    passes: str | None = None
    stochastic: bool = False  # the Explainer protocol: a plain method is deterministic
    native_pixel: bool = False
    #: every per-sample map this method returns is a sub-probability vector (entries >= 0, sum <= 1)
    #: for every input, by construction (the premise of the Rényi top-k certificate, fvit.certify).
    distribution: bool = False
    #: Whether the method reads the CLS token's attention / relevance (then it refuses models whose
    #: ``token_support_problem`` says why it cannot, e.g. Swin or average pooling). Gradient methods
    #: on the input pixels set it False and run on any classifier the wrapper takes.
    needs_cls_token: bool = True
    #: Why a method has no differentiable path (appended to the refusal), when it has none.
    no_differentiable_reason: str = ""
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = {}
    choices: dict[str, tuple[str, ...]] = {}

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise InputError(f"method {self.name!r} has no parameter {unknown[0]!r} (parameters: {known})")
        values = {**self.defaults, **params}
        for key, value in values.items():
            values[key] = _check_param(self.name, key, value, self.defaults[key], self.choices.get(key))
        self.params: dict[str, Any] = values

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    @property
    def spec(self) -> str:
        """``name`` plus the non-default parameters in declaration order (``lrp:rules=orig``)."""
        changed = [f"{k}={_format_param(v)}" for k, v in self.params.items() if v != self.defaults[k]]
        return f"{self.name}:{','.join(changed)}" if changed else self.name

    def __call__(self, model: ExplainableViT, images: torch.Tensor, target=None, *, generator=None,
                 keys=None) -> Explanation:
        """The map of ``images`` for ``target`` (None: the prediction; int; ``(B,)``; a callable on
        the logits). ``generator`` / ``keys`` belong to the `Explainer` protocol (a smoothed
        explainer draws noise with them); a plain method is deterministic and ignores them."""
        self.check_model(model)
        model.check_images(images)
        check_images01(images, tol=1e-3, floating=False)
        images = images.to(device=model.device, dtype=model.dtype)
        with eval_mode(model):
            result, logits, tgt = self._compute_in_chunks(model, images, target)
        result = result.detach().to(logits.dtype)
        if self.native_pixel:
            pixel, patch = result, sum_pool(result, model.patch_size)
        else:
            patch, pixel = result, upsample(result, model.input_size)
        return Explanation(patch=patch, pixel=pixel, target=tgt, logits=logits.detach(), method=self.spec)

    def check_model(self, model: ExplainableViT) -> None:
        """Raise `UnsupportedModelError` if this method cannot run on ``model`` (a CLS-token method
        on a model without a usable CLS token)."""
        if self.needs_cls_token:
            model.require_token_methods(self.name)

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool,
                  surrogate: float | None):
        """The method's one computation (see the class docstring): ``(map, logits, target)``."""
        raise NotImplementedError

    def compute(self, model: ExplainableViT, images: torch.Tensor, target):
        result, logits, tgt = self.attribute(model, images, target, False, None)
        return result.detach(), logits.detach(), tgt

    def has_differentiable_path(self) -> bool:
        cls = type(self)
        return (cls.compute_differentiable is not ExplanationMethod.compute_differentiable
                or cls.attribute is not ExplanationMethod.attribute)

    def _compute_in_chunks(self, model: ExplainableViT, images: torch.Tensor, target):
        """`compute` on chunks of `cpu_chunk` images on a CPU (the whole batch elsewhere). Every
        image's map, logits and class are its own, so only the memory traffic changes; a callable
        target is applied to each chunk's logits (row-wise targets such as `RankTarget` are)."""
        n = images.shape[0]
        size = cpu_chunk(model) if images.device.type == "cpu" else n
        if n <= size:
            return self.compute(model, images, target)
        if not callable(target):
            target = target_tensor(target, n, images.device)
        parts = []
        for i in range(0, n, size):  # detached at once: a chunk's graph is freed before the next runs
            part = self.compute(model, images[i:i + size], target[i:i + size] if torch.is_tensor(target) else target)
            parts.append([t.detach() for t in part])
        return tuple(torch.cat(column) for column in zip(*parts))

    def predict(self, model: ExplainableViT, images: torch.Tensor, *, generator=None, keys=None) -> torch.Tensor:
        """(B,) the class this explainer explains when ``target`` is None: the model's prediction."""
        with torch.inference_mode(), eval_mode(model):
            return model(images.to(device=model.device, dtype=model.dtype)).argmax(dim=1)

    def differentiable(self, model: ExplainableViT, images: torch.Tensor, target=None, *,
                       surrogate: float | None = None, generator=None) -> Explanation:
        """The map of `images` on the autograd graph (see the class docstring). If `images` does
        not require grad, a leaf copy that does is used (the inner gradients need a graph)."""
        self.check_model(model)
        model.check_images(images)
        if surrogate is not None and not surrogate > 0:
            raise InputError(f"surrogate (softplus sharpness) must be > 0 or None, got {surrogate!r}")
        if not self.has_differentiable_path():
            reason = f" ({self.no_differentiable_reason})" if self.no_differentiable_reason else ""
            raise UnsupportedModelError(f"explanation method {self.spec!r} has no differentiable path{reason}")
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
            x = images.to(device=model.device, dtype=model.dtype)
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            result, logits, tgt = self.compute_differentiable(model, x, target, surrogate)
        if self.native_pixel:
            pixel, patch = result, sum_pool(result, model.patch_size)
        else:
            patch, pixel = result, upsample(result, model.input_size)
        return Explanation(patch=patch, pixel=pixel, target=tgt.detach(), logits=logits, method=self.spec)

    def compute_differentiable(self, model: ExplainableViT, images: torch.Tensor, target,
                               surrogate: float | None):
        """As `compute`, keeping the graph to `images`; ``surrogate`` per `rectify`."""
        return self.attribute(model, images, target, True, surrogate)

    def __repr__(self) -> str:
        return f"<explanation method {self.spec}>"


def _format_param(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_param(method: str, key: str, value: Any, default: Any, choices) -> Any:
    """``value`` as the type of ``default`` (bool, int, float or str), else InputError."""
    kind = type(default)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, kind))
    if not ok:
        raise InputError(f"method {method!r}: parameter {key}={value!r} must be a {kind.__name__}")
    if choices is not None:
        from fvit.registry import canonical

        value = canonical(value).replace("_", "-")
        aliases = {canonical(c).replace("_", "-"): c for c in choices}
        if value not in aliases:
            raise InputError(f"method {method!r}: parameter {key}={value!r} is not one of {', '.join(choices)}")
        value = aliases[value]
    return kind(value)


def method_parameters(name: str) -> dict[str, Any]:
    """The parameters of the method registered as ``name`` with their defaults (the CLI converts
    ``name:key=value`` text to the defaults' types with it)."""
    return dict(method_class(name).defaults)


METHODS: Registry[type[ExplanationMethod]] = Registry("explanation method")
_DEFAULT_INSTANCES: dict[str, ExplanationMethod] = {}
#: Method families named ``prefix:NAME`` (``captum:IntegratedGradients``): prefix -> a function
#: ``NAME -> method class`` (raising `InputError` / `UnknownNameError` for a NAME it cannot build).
METHOD_FAMILIES: dict[str, Callable[[str], type[ExplanationMethod]]] = {}
#: prefix -> one line for `fvit methods`.
FAMILY_DESCRIPTIONS: dict[str, str] = {}


def register_method_family(prefix: str, factory: Callable[[str], type[ExplanationMethod]],
                           description: str = "") -> None:
    """Make ``prefix:NAME`` a method name, built by ``factory(NAME)`` on first use."""
    METHOD_FAMILIES[canonical(prefix)] = factory
    FAMILY_DESCRIPTIONS[canonical(prefix)] = description


def split_method_spec(spec: str) -> tuple[str, str]:
    """``'rollout:start_layer=1' -> ('rollout', 'start_layer=1')``; a family's name keeps its second
    part: ``'captum:IntegratedGradients:n_steps=32' -> ('captum:IntegratedGradients', 'n_steps=32')``."""
    name, _, rest = str(spec).strip().partition(":")
    if canonical(name) in METHOD_FAMILIES and rest:
        sub, _, rest = rest.partition(":")
        name = f"{name.strip()}:{sub.strip()}"
    return name, rest


def method_class(name: str) -> type[ExplanationMethod]:
    """The class of the method named ``name`` (a registered name or alias, or ``family:NAME``)."""
    prefix, sep, sub = str(name).partition(":")
    if sep and canonical(prefix) in METHOD_FAMILIES:
        return METHOD_FAMILIES[canonical(prefix)](sub.strip())
    return METHODS.get(name)


def register_method(cls: type[ExplanationMethod]) -> type[ExplanationMethod]:
    """Class decorator: register the method class under ``cls.name`` and ``cls.aliases``."""
    METHODS.register(cls.name, cls, aliases=tuple(cls.aliases))
    return cls


def get_method(name: str, **params: Any) -> ExplanationMethod:
    """The method registered as ``name`` ('-' or '_', case-insensitive; aliases ta, ar, attention),
    built with ``params`` (see `ExplanationMethod`); without parameters, one shared instance with
    the defaults."""
    prefix, sep, _ = str(name).partition(":")
    if sep and canonical(prefix) in METHOD_FAMILIES:
        cls = method_class(name)
        key = cls.name
    else:
        key = METHODS.resolve(name)
        cls = METHODS.get(key)
    if params:
        return cls(**params)
    if key not in _DEFAULT_INSTANCES:
        _DEFAULT_INSTANCES[key] = cls()
    return _DEFAULT_INSTANCES[key]


def available_methods() -> list[str]:
    return METHODS.names()


def explain(
    model: ExplainableViT, images: torch.Tensor, method: "str | ExplanationMethod" = "transformer_attribution",
    target=None, **params: Any,
) -> Explanation:
    """Run the named method (built with ``params``), or a method instance, on a batch of [0, 1] images."""
    m = method if isinstance(method, ExplanationMethod) else get_method(method, **params)
    return m(model, images, target)
