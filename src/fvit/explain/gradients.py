"""Gradient baselines on the input pixels: saliency, input x gradient, integrated gradients, SmoothGrad.

All are taken w.r.t. the model's input, the ``[0, 1]`` image ``x`` (``(B, 3, H, W)``; the wrapper
normalises inside), for the target logit ``y_c``, and are natively pixel-level ``(B, H, W)``; the
patch map is the sum over each patch (`fvit.explain.base.sum_pool`), so the patch metrics apply.
They read no token, so they run on any classifier the wrapper takes (Swin, average pooling, ...).

- ``saliency`` (Simonyan et al. 2014): ``max_ch |dy_c/dx|``.
- ``input_x_gradient`` (Shrikumar et al. 2016): ``sum_ch x * dy_c/dx``.
- ``integrated_gradients`` (Sundararajan et al. 2017):
  ``sum_ch (x - x') * sum_k w_k dy_c/dx (x' + a_k (x - x'))`` with ``steps`` nodes ``a_k`` and weights
  ``w_k``: ``riemann`` = the right Riemann sum ``a_k = k / n, w_k = 1 / n`` (k = 1..n), ``gauss-legendre``
  = Gauss-Legendre on [0, 1] (``a_k = (1 + t_k) / 2, w_k = u_k / 2`` for the nodes / weights t, u on
  [-1, 1]); baseline ``x'``: ``black`` (0), ``blurred`` (the image under a Gaussian blur of standard
  deviation ``blur_sigma`` pixels, reflect padding), ``uniform`` (U[0, 1] noise, seeded per image).
- ``smoothgrad`` (Smilkov et al. 2017): ``max_ch mean_k |dy_c/dx (x + n_k)|``, ``n_k ~ N(0, noise_std^2)``
  (``samples`` draws, in [0, 1] pixel units, unclipped), seeded per image.

Noise (SmoothGrad, the uniform baseline): ``samples`` draws from a CPU generator seeded with
``seed``, the same draws for every image, so an image's map does not depend on its batch, the maps
are deterministic (``stochastic`` is False) and smooth in the pixels. (Noise keyed by the image's
content, as DDS draws it, would be redrawn by any perturbation of the pixels: the map would have no
gradient for the explanation attacks.)

Differentiable path (explanation attacks): the same computation with ``create_graph=True`` (double
backpropagation); ``|.|`` and the channel max are kept (differentiable almost everywhere).
"""

from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fvit.explain.base import ExplanationMethod, class_score, register_method, resolve_target
from fvit.models.wrapper import ExplainableViT

#: Largest number of images in one forward / backward of the path (integrated gradients) or noise
#: samples (SmoothGrad); the steps / samples are split into groups of at most this many images.
MAX_PASS_IMAGES = 64


def input_gradient(model: ExplainableViT, inputs: torch.Tensor, target, create_graph: bool):
    """``(d(sum_b y_{b, c_b}) / d inputs, logits, c)`` with ``c = resolve_target(target, logits)``
    (each row its own gradient). With ``create_graph`` the gradient and the logits stay on the
    graph of ``inputs`` (which must then require grad)."""
    x = inputs if create_graph else inputs.detach().requires_grad_(True)
    logits = model(x)
    tgt = resolve_target(target, logits)
    grad = torch.autograd.grad(class_score(logits, tgt), x, create_graph=create_graph)[0]
    return grad, logits, tgt


def _forward(model: ExplainableViT, images: torch.Tensor, target, create_graph: bool):
    """Logits of the images themselves (on the graph when ``create_graph``) and the resolved target."""
    if create_graph:
        logits = model(images)
    else:
        with torch.no_grad():
            logits = model(images)
    return logits, resolve_target(target, logits)


def seeded_noise(images: torch.Tensor, samples: int, seed: int, kind: str = "normal") -> torch.Tensor:
    """``(samples, *images.shape[1:])`` noise from a CPU generator seeded with ``seed`` (then moved to
    the images' device and dtype): standard normal (``kind='normal'``) or U[0, 1] (``'uniform'``).
    The same draws serve every image (see the module docstring)."""
    g = torch.Generator().manual_seed(int(seed))
    draw = torch.randn if kind == "normal" else torch.rand
    return draw((samples, *images.shape[1:]), generator=g, dtype=torch.float64).to(images.device, images.dtype)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, kernel radius ``ceil(3 sigma)``, reflect padding (per channel)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def quadrature(steps: int, rule: str) -> tuple[list[float], list[float]]:
    """Nodes ``a_k`` in (0, 1] and weights ``w_k`` of the path integral (see the module docstring)."""
    if rule == "riemann":
        return [k / steps for k in range(1, steps + 1)], [1.0 / steps] * steps
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return [float(0.5 * (1 + t)) for t in nodes], [float(0.5 * w) for w in weights]


class PixelGradientMethod(ExplanationMethod):
    """Base of the input-gradient methods: one body (`pixel_map`) for both paths; ``graph`` keeps it
    on the graph of the images (``create_graph=True``: double backpropagation)."""

    needs_grad = True
    native_pixel = True
    needs_cls_token = False

    def pixel_map(self, model: ExplainableViT, images: torch.Tensor, target, create_graph: bool):
        """``(pixel map (B, H, W), logits, target)``."""
        raise NotImplementedError

    def attribute(self, model, images, target, graph, surrogate):  # no clamp: surrogate unused
        # the fused attention kernels have no double backward: unfused while the graph is kept
        with torch.enable_grad(), unfused_attention_everywhere(model) if graph else contextlib.nullcontext():
            return self.pixel_map(model, images, target, graph)


@contextmanager
def unfused_attention_everywhere(model) -> Iterator[None]:
    """Set ``fused_attn = False`` on every module that has the flag (timm's ViT and Swin attention)
    for the duration, restoring each afterwards."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    saved = [m.fused_attn for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.fused_attn = flag


@register_method
class Saliency(PixelGradientMethod):
    """Simonyan et al. 2014: ``max_ch |dy_c/dx|``."""

    name = "saliency"
    aliases = ("vanilla_gradient",)
    description = "saliency (Simonyan et al. 2014): max over channels of |dy/dx|, summed per patch"

    def pixel_map(self, model, images, target, create_graph):
        grad, logits, tgt = input_gradient(model, images, target, create_graph)
        return grad.abs().amax(dim=1), logits, tgt


@register_method
class InputXGradient(PixelGradientMethod):
    """Shrikumar et al. 2016: ``sum_ch x * dy_c/dx``."""

    name = "input_x_gradient"
    aliases = ("ixg", "gradient_x_input")
    description = "input x gradient (Shrikumar et al. 2016): sum over channels of x * dy/dx"

    def pixel_map(self, model, images, target, create_graph):
        grad, logits, tgt = input_gradient(model, images, target, create_graph)
        return (images * grad).sum(dim=1), logits, tgt


def _grouped_gradients(model, points: torch.Tensor, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Input gradients of ``points (B, n, 3, H, W)`` (image b's class ``target_b`` for all its n
    points), in passes of at most `MAX_PASS_IMAGES` images, ``(B, n, 3, H, W)``."""
    b, n = points.shape[:2]
    per_pass = max(1, MAX_PASS_IMAGES // b)  # points of every image per pass (the batch stays whole)
    parts = []
    for j in range(0, n, per_pass):
        group = points[:, j:j + per_pass]
        m = group.shape[1]
        g = input_gradient(model, group.flatten(0, 1), target.repeat_interleave(m), create_graph)[0]
        parts.append(g.view(b, m, *points.shape[2:]))
    return torch.cat(parts, dim=1)


@register_method
class IntegratedGradients(PixelGradientMethod):
    """Sundararajan et al. 2017: ``sum_ch (x - x') * sum_k w_k dy_c/dx(x' + a_k (x - x'))``."""

    name = "integrated_gradients"
    aliases = ("ig",)
    description = "integrated gradients (Sundararajan et al. 2017): path integral from a baseline, x (x - x')"
    passes = "steps x grad"
    defaults = {"steps": 32, "baseline": "black", "integration": "gauss-legendre", "blur_sigma": 5.0, "seed": 0}
    choices = {"baseline": ("black", "blurred", "uniform"), "integration": ("riemann", "gauss-legendre")}

    def baseline_of(self, images: torch.Tensor) -> torch.Tensor:
        if self.baseline == "black":
            return torch.zeros_like(images)
        if self.baseline == "blurred":
            return gaussian_blur(images, self.blur_sigma)
        return seeded_noise(images, 1, self.seed, kind="uniform").expand_as(images)

    def pixel_map(self, model, images, target, create_graph):
        from fvit.errors import InputError

        if self.steps < 1 or not self.blur_sigma > 0:
            raise InputError(f"method {self.name!r}: steps must be >= 1 and blur_sigma > 0 "
                             f"(got steps={self.steps}, blur_sigma={self.blur_sigma})")
        logits, tgt = _forward(model, images, target, create_graph)
        base = self.baseline_of(images)
        alphas, weights = quadrature(self.steps, self.integration)
        a = torch.tensor(alphas, device=images.device, dtype=images.dtype).view(1, -1, 1, 1, 1)
        w = torch.tensor(weights, device=images.device, dtype=images.dtype).view(1, -1, 1, 1, 1)
        delta = images - base
        points = base[:, None] + a * delta[:, None]
        grads = _grouped_gradients(model, points, tgt, create_graph)
        return (delta * (w * grads).sum(dim=1)).sum(dim=1), logits, tgt


@register_method
class SmoothGrad(PixelGradientMethod):
    """Smilkov et al. 2017: ``max_ch mean_k |dy_c/dx(x + n_k)|``, ``n_k ~ N(0, noise_std^2)``."""

    name = "smoothgrad"
    aliases = ("sg",)
    description = "SmoothGrad (Smilkov et al. 2017): mean |dy/dx| over Gaussian-noised copies, max over channels"
    passes = "samples x grad"
    defaults = {"noise_std": 0.15, "samples": 16, "seed": 0}

    def pixel_map(self, model, images, target, create_graph):
        from fvit.errors import InputError

        if self.samples < 1 or self.noise_std < 0:
            raise InputError(f"method {self.name!r}: samples must be >= 1 and noise_std >= 0 "
                             f"(got samples={self.samples}, noise_std={self.noise_std})")
        logits, tgt = _forward(model, images, target, create_graph)
        noise = self.noise_std * seeded_noise(images, self.samples, self.seed)
        grads = _grouped_gradients(model, images[:, None] + noise[None], tgt, create_graph)
        return grads.abs().mean(dim=1).amax(dim=1), logits, tgt
