"""AttnLRP (Achtibat et al., ICML 2024) as modified gradients: one forward, one backward, batched.

Relevance is gradient x input, ``R_z = z * dy~/dz``, of a forward ``y~`` whose values are the
model's and whose local Jacobians are replaced by the rules' (forward hooks on timm's modules):

- Linear layers (qkv, proj, fc1, fc2, head): the epsilon rule, Jacobian ``c * W`` with
  ``c = z / (z + epsilon * sign(z))`` (``sign(0) = 1``); ``epsilon=0`` is LRP-0, the plain gradient
  (lxt's efficient implementation). With ``gamma > 0`` the MLP's fc1 / fc2 and the head use the
  generalised gamma rule instead (zennit's ``Gamma``: weights ``W + gamma W^+`` for positive and
  ``W + gamma W^-`` for negative contributions, split by input sign and output sign, stabiliser 1e-6),
  and ``conv_gamma > 0`` applies it to the patch-embedding conv, as lxt's ViT example does with
  zennit (attention and normalisation keep the rules below);
- softmax: the AttnLRP softmax rule ``R_in = x * (R_out - s * sum R_out)``, which is gradient x input
  of the softmax itself (plain gradient);
- ``q k^T`` and ``A v``: the uniform rule for bilinear products (each operand half of the output's
  relevance), i.e. the gradient into q and k divided by 4 and into v by 2 (at the qkv output);
  ``attention='cp'`` (CP-LRP, Ali et al. 2022, lxt's ViT example): q and k get no gradient, the
  attention weights are constants and ``A v`` is linear in v;
- LayerNorm (every ``nn.LayerNorm``: norm1 / norm2 / norm / q_norm / k_norm ...): identity on the
  normalisation, ``(x - mean x) / std.detach() * w + b``;
- element-wise activations (GELU, SiLU, timm's GELUTanh / QuickGELU; `ACTIVATIONS`): linearised, ``x * (f(x) / x).detach()`` (the identity rule).

The map: ``R = x_n * dy~_c/dx_n`` at the patch-conv input ``x_n`` (the normalised image), summed over
the channels: natively pixel-level, ``(B, H, W)``; the patch map is its sum per patch. The output
relevance is ``y_c`` (gradient seed 1). With ``attention='cp'``, zero biases and ``epsilon=0`` the
rules conserve: pixels + CLS token + position embedding carry ``y_c`` (tested).

Every hooked module's output is ``L(x; c) + K`` with ``L`` the rule's linear map at constants ``c``
(the std, the activation ratio, the epsilon factors) and ``K = out - L(x; c)``. In `compute`, ``c``
and ``K`` are detached (one forward). On the graph (`differentiable`, explanation attacks) a first,
plain forward records ``c`` and ``K`` on the graph of the images and a second forward uses them:
``dy~/dx_n`` then holds ``c`` fixed (they do not depend on the second pass's ``x_n``) while the map
keeps its full dependence on the images, so its gradient is exact (tested against finite differences).
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fvit.errors import InputError
from fvit.explain.base import ExplanationMethod, class_score, register_method, resolve_target
from fvit.models.wrapper import ExplainableViT, unfused_attention


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = 1`` (``eps`` at least the dtype's smallest normal, so
    it does not vanish in float16)."""
    eps = max(eps, torch.finfo(z.dtype).tiny)
    return z + eps * ((z == 0).to(z.dtype) + z.sign())


#: Element-wise activations linearised by the identity rule (torch's and timm's classes, by name).
ACTIVATIONS = ("GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish")


# ------------------------------------------------------------------------------------- rules
class Rule:
    """``consts(module, inp, out)`` -> the constants; ``lin(module, inp, c)`` -> the rule's map of
    ``inp`` (the module input, or the previous rule's output when ``on_output``)."""

    on_output = False

    def consts(self, module, inp, out):
        return ()

    def lin(self, module, inp, c):
        raise NotImplementedError


class LinearEpsilon(Rule):
    def __init__(self, eps: float):
        self.eps = eps

    def consts(self, module, inp, out):
        return (out / stabilize(out, self.eps),)

    def lin(self, module, inp, c):
        return c[0] * F.linear(inp, module.weight)


def _gamma_parts(module, inp, gamma):
    """zennit's generalised gamma: the four (input part, modified affine map) products."""
    w = module.weight
    b = module.bias
    wp, wn = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
    if isinstance(module, nn.Conv2d):
        def f(x, weight, bias=None):
            return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    else:
        f = F.linear
    xp, xn = inp.clamp(min=0), inp.clamp(max=0)
    bp = None if b is None else b + gamma * b.clamp(min=0)
    bn = None if b is None else b + gamma * b.clamp(max=0)
    return f, (xp, wp, xn, wn), (xp, wn, xn, wp), bp, bn


class Gamma(Rule):
    """Generalised gamma rule (zennit ``Gamma(gamma, stabilizer=1e-6)``) for Linear and Conv2d."""

    def __init__(self, gamma: float, stabilizer: float = 1e-6):
        self.gamma, self.stabilizer = gamma, stabilizer

    def consts(self, module, inp, out):
        f, (xp, w0, xn, w1), (xp2, w2, xn2, w3), bp, bn = _gamma_parts(module, inp, self.gamma)
        den_pos = f(xp, w0, bp) + f(xn, w1)
        den_neg = f(xp2, w2, bn) + f(xn2, w3)
        m_pos = (out > 0).to(out.dtype) * out / stabilize(den_pos, self.stabilizer)
        m_neg = (out < 0).to(out.dtype) * out / stabilize(den_neg, self.stabilizer)
        return m_pos, m_neg

    def lin(self, module, inp, c):
        m_pos, m_neg = c
        f, (xp, w0, xn, w1), (xp2, w2, xn2, w3), _, _ = _gamma_parts(module, inp, self.gamma)
        return m_pos * (f(xp, w0) + f(xn, w1)) + m_neg * (f(xp2, w2) + f(xn2, w3))


class LayerNormIdentity(Rule):
    def consts(self, module, inp, out):
        mean = inp.mean(dim=-1, keepdim=True)
        return (((inp - mean) ** 2).mean(dim=-1, keepdim=True) + module.eps).sqrt(),

    def lin(self, module, inp, c):
        y = (inp - inp.mean(dim=-1, keepdim=True)) / c[0]
        return y * module.weight if module.weight is not None else y


class ActivationIdentity(Rule):
    def consts(self, module, inp, out):
        return (out / stabilize(inp, 1e-10),)

    def lin(self, module, inp, c):
        return c[0] * inp


class GradientScale(Rule):
    """Scales the gradient through the qkv output: q, k by ``sq``, v by ``sv`` (value unchanged)."""

    on_output = True

    def __init__(self, sq: float, sv: float):
        self.sq, self.sv = sq, sv

    def lin(self, module, inp, c):
        d = inp.shape[-1] // 3
        scale = inp.new_tensor([self.sq] * (2 * d) + [self.sv] * d)
        return inp * scale


class _Hooks:
    """Forward hooks applying each module's rule chain; ``mode``: 'detach' (constants detached),
    'record' (plain forward; store constants and offsets on the graph), 'replay' (use them)."""

    def __init__(self):
        self.mode = "detach"
        self.store: dict[tuple[int, int], tuple] = {}

    def hook(self, rules: list[Rule]):
        def fn(module, inputs, out):
            x = inputs[0]
            for i, rule in enumerate(rules):
                inp = out if rule.on_output else x
                key = (id(module), i)
                if self.mode == "record":
                    c = rule.consts(module, inp, out)
                    self.store[key] = (c, out - rule.lin(module, inp, c))
                    continue
                if self.mode == "replay":
                    c, offset = self.store[key]
                else:
                    c = tuple(t.detach() for t in rule.consts(module, inp, out))
                    offset = (out - rule.lin(module, inp, c)).detach()
                out = rule.lin(module, inp, c) + offset
            return None if self.mode == "record" else out

        return fn


@contextmanager
def attnlrp_hooks(model: ExplainableViT, attention: str, epsilon: float, gamma: float,
                  conv_gamma: float) -> Iterator[tuple[_Hooks, list[torch.Tensor]]]:
    """Install the rules on ``model``'s timm modules; yields the hook state and a list that receives
    the patch-conv input of each forward."""
    tm = model.timm_model
    state, conv_in = _Hooks(), []
    plan: dict[nn.Module, list[Rule]] = {}
    linear = [LinearEpsilon(epsilon)] if epsilon > 0 else []
    for m in tm.modules():
        if isinstance(m, nn.LayerNorm):
            plan[m] = [LayerNormIdentity()]
        elif isinstance(m, (nn.GELU, nn.SiLU)) or type(m).__name__ in ACTIVATIONS:
            plan[m] = [ActivationIdentity()]
    outside = [blk.mlp.fc1 for blk in model.blocks] + [blk.mlp.fc2 for blk in model.blocks] + [tm.head]
    for blk in model.blocks:
        for lin in (blk.attn.proj,):
            if linear:
                plan[lin] = list(linear)
        scale = GradientScale(0.0, 1.0) if attention == "cp" else GradientScale(0.25, 0.5)
        plan[blk.attn.qkv] = [*linear, scale]
    for lin in outside:
        if isinstance(lin, nn.Linear):
            plan[lin] = [Gamma(gamma)] if gamma > 0 else list(linear)
    proj = tm.patch_embed.proj
    if conv_gamma > 0:
        plan[proj] = [Gamma(conv_gamma)]
    handles = [m.register_forward_hook(state.hook(rules)) for m, rules in plan.items() if rules]
    handles.append(proj.register_forward_pre_hook(lambda _m, args: conv_in.append(args[0])))
    try:
        yield state, conv_in
    finally:
        for h in handles:
            h.remove()


@register_method
class AttnLRP(ExplanationMethod):
    """Achtibat et al. 2024 (see the module docstring): ``map = sum_ch x_n * dy~_c/dx_n``."""

    name = "attnlrp"
    aliases = ("attn_lrp",)
    description = ("AttnLRP (Achtibat et al. ICML 2024): LRP as modified gradients (epsilon, softmax, "
                   "uniform, LayerNorm identity, GELU linearised), to pixels")
    needs_grad = True
    native_pixel = True
    defaults = {"attention": "attnlrp", "epsilon": 1e-6, "gamma": 0.0, "conv_gamma": 0.0}
    choices = {"attention": ("attnlrp", "cp")}

    def _check(self):
        if self.epsilon < 0 or self.gamma < 0 or self.conv_gamma < 0:
            raise InputError(f"method {self.name!r}: epsilon, gamma and conv_gamma must be >= 0 "
                             f"(got {self.epsilon}, {self.gamma}, {self.conv_gamma})")

    def _relevance(self, model, images, target, create_graph: bool):
        with attnlrp_hooks(model, self.attention, self.epsilon, self.gamma, self.conv_gamma) as (state, conv_in):
            if create_graph:
                state.mode = "record"
                model(images)  # the plain forward: constants and offsets on the graph of the images
                state.mode = "replay"
            conv_in.clear()
            logits = model(images)
            tgt = resolve_target(target, logits)
            x_n = conv_in[-1]
            grad = torch.autograd.grad(class_score(logits, tgt), x_n, create_graph=create_graph)[0]
        return (x_n * grad).sum(dim=1), logits, tgt

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        """One forward and one backward; with ``graph`` two forwards (plain, then with the recorded
        constants) and the backward with ``create_graph=True``. No clamp: ``surrogate`` is unused."""
        self._check()
        with torch.enable_grad(), unfused_attention(model.blocks) if graph else contextlib.nullcontext():
            # the fused attention kernel has no double backward: unfused while the graph is kept
            return self._relevance(model, images if graph else images.detach().requires_grad_(True), target, graph)
