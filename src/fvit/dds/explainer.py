"""`DDSExplainer`: any explanation method, made faithful by DDS (explain m denoised samples of each
image for one fixed target, then fuse the m maps)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from fvit.dds.core import DDS, as_smoother, votes
from fvit.dds.fusion import FUSIONS, fuse
from fvit.errors import InputError, UnsupportedModelError
from fvit.utils import module_device
from fvit.explain.base import get_method, target_tensor  # explain sits left of dds: allowed import


def _resolve_method(method) -> tuple[Callable, str]:
    if isinstance(method, str):
        m = get_method(method)
        return m, m.spec
    return method, getattr(method, "spec", getattr(method, "name", getattr(method, "__name__", type(method).__name__)))


class DDSExplainer:
    """A method made faithful by DDS; implements the `fvit.explain.Explainer` protocol.

    1. samples = dds.denoise(images)                       (B, m, 3, H, W), one batched pass
    2. target per image: the explicit one (int, (B,), or a callable applied to the mean logits over
       the samples), else the smoothed prediction (majority vote of the model over the m samples,
       ties -> lowest class); the same target for all m samples
    3. the method explains all B*m samples in chunks of dds.max_batch
    4. patch and pixel maps are fused over the m samples (`fuse`: 'max-drop10', the paper, by
       default; 'mean' the [Re] code); logits = mean of the per-sample logits; method =
       '<method spec>+dds'

    This is the one way to build a smoothed explanation: fusion is its parameter only.
    """

    stochastic = True  # the Explainer protocol: each call draws DDS noise

    def __init__(self, method, dds: DDS, fuse: str = "max-drop10"):
        self.method, self.method_name = _resolve_method(method)
        self.dds = as_smoother(dds)
        self.fuse = FUSIONS.resolve(fuse)
        self.name = f"{self.method_name}+dds"

    @property
    def spec(self) -> str:
        """The results key: the method's spec + '+dds'."""
        return self.name

    def __repr__(self) -> str:
        return f"<DDSExplainer {self.name} fuse={self.fuse} {self.dds!r}>"

    def predict(self, model, images01: torch.Tensor, *, generator=None, keys=None) -> torch.Tensor:
        """(B,) the smoothed prediction: majority vote over the m denoised samples."""
        return self.dds.smoothed_predict(model, images01, generator, keys)

    def __call__(self, model, images01: torch.Tensor, target=None, *, generator=None, keys=None):
        """`keys`: per-image noise keys (see `DDS.denoise`); default the images' content hashes."""
        dds = self.dds
        samples = dds.denoise(images01, generator, keys)
        samples = samples.to(module_device(model, samples.device))  # explain on the model's device
        b, m = samples.shape[:2]
        flat = samples.flatten(0, 1)
        sample_logits = None
        if target is None or callable(target):
            sample_logits = dds.logits(model, samples)
            tgt = (votes(sample_logits).argmax(dim=1) if target is None
                   else target_tensor(target(sample_logits.float().mean(dim=1)), b, flat.device))
        else:
            tgt = target_tensor(target, b, flat.device)
        tgt_flat = tgt.repeat_interleave(m)
        exps = [self.method(model, part, target=part_tgt)
                for part, part_tgt in zip(flat.split(dds.max_batch), tgt_flat.split(dds.max_batch))]
        patch = torch.cat([e.patch.detach() for e in exps]).view(b, m, *exps[0].patch.shape[1:])
        pixel = torch.cat([e.pixel.detach() for e in exps]).view(b, m, *exps[0].pixel.shape[1:])
        logits = (sample_logits if sample_logits is not None else
                  torch.cat([e.logits.detach() for e in exps]).view(b, m, -1)).float().mean(dim=1)
        fields = dict(patch=fuse(patch, self.fuse), pixel=fuse(pixel, self.fuse), target=tgt,
                      logits=logits, method=f"{getattr(exps[0], 'method', self.method_name)}+dds")
        if dataclasses.is_dataclass(exps[0]):
            return dataclasses.replace(exps[0], **fields)
        return type(exps[0])(**fields)

    def differentiable(self, model, images01: torch.Tensor, target=None, *, surrogate: float | None = None,
                       generator=None):
        """One DDS draw of the fused map on the autograd graph of `images01` (adaptive explanation
        attacks): the m samples come from ``dds.denoise_differentiable`` (gradients through the
        denoiser), each is explained by ``method.differentiable`` (``surrogate`` as there) for the
        fixed per-image `target` (required: the smoothed prediction is a vote, not differentiable),
        and the maps are fused as in ``__call__``. ``logits``: mean over the m samples, on the graph."""
        dds = self.dds
        if not hasattr(self.method, "differentiable"):
            raise UnsupportedModelError(f"explanation method {self.method_name!r} has no differentiable path")
        tgt = target_tensor(target, images01.shape[0], images01.device)
        if tgt is None:
            raise InputError("DDSExplainer.differentiable needs an explicit target per image")
        with torch.inference_mode(False), torch.enable_grad():
            samples = dds.denoise_differentiable(images01, generator)
            b, m = samples.shape[:2]
            flat, tgt_flat = samples.flatten(0, 1), tgt.repeat_interleave(m)
            exps = [self.method.differentiable(model, part, part_tgt, surrogate=surrogate)
                    for part, part_tgt in zip(flat.split(dds.max_batch), tgt_flat.split(dds.max_batch))]
            patch = torch.cat([e.patch for e in exps]).view(b, m, *exps[0].patch.shape[1:])
            pixel = torch.cat([e.pixel for e in exps]).view(b, m, *exps[0].pixel.shape[1:])
            logits = torch.cat([e.logits for e in exps]).view(b, m, -1).mean(dim=1)
            fields = dict(patch=fuse(patch, self.fuse), pixel=fuse(pixel, self.fuse), target=tgt,
                          logits=logits, method=f"{exps[0].method}+dds")
        return dataclasses.replace(exps[0], **fields)
