"""`ExplainableViT`: a timm Vision Transformer that takes [0, 1] images and exposes its attention.

The wrapper normalises with the model's own mean / std (from timm's ``pretrained_cfg``), reads the
patch grid, prefix tokens, heads and depth from the timm model, and records the post-softmax
attention maps of every block through forward hooks on ``attn.attn_drop`` (timm's ``Attention``
computes ``attn = softmax(q k^T * scale); attn = attn_drop(attn); x = attn @ v`` when
``fused_attn`` is off, so the output of ``attn_drop`` *is* the post-softmax map used in ``attn @ v``).

Architectures
-------------
- timm ``VisionTransformer`` (ViT, DeiT, DeiT-distilled with 2 prefix tokens, DeiT-3,
  register-token ViTs) with ``global_pool='token'``: all six fvit explanation methods apply.
- ``global_pool`` other than ``'token'`` (e.g. ``'avg'``), no class token, non-standard blocks: the
  model classifies, but the CLS-based methods raise ``UnsupportedModelError`` naming the reason.
- timm ``SwinTransformer``: windowed attention without a CLS token, so **none** of the six
  token-level methods apply (they raise ``UnsupportedModelError``). The model still works as a
  classifier (predictions, attacks, DDS smoothing of predictions).
"""

from __future__ import annotations

import math
import weakref

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from fvit.errors import InputError, UnsupportedModelError

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# models sit left of explain: this note describes the methods without naming them (the registry,
# fvit.explain.available_methods(), lists them), so a new method needs no edit here
TOKEN_METHODS_NOTE = "fvit's explanation methods all read the CLS token's attention / relevance"


@dataclass
class AttentionRecording:
    """What `ExplainableViT.record` captured during one forward pass.

    ``attentions[b]``: post-softmax attention of block b, ``(B, heads, T, T)`` (attached to the
    autograd graph when recorded with ``grad=True``, detached otherwise).
    ``gradients[b]``: d(score)/d(attentions[b]) after ``score.backward()`` or ``self.backward(score)``
    (``None`` until then).
    """

    grad: bool
    attentions: list[torch.Tensor] = field(default_factory=list)
    gradients: list[torch.Tensor | None] = field(default_factory=list)

    def backward(self, score: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """Gradients of the scalar ``score`` w.r.t. the attention maps, without touching any
        parameter's ``.grad`` (``torch.autograd.grad`` on the maps only)."""
        if not self.grad:
            raise RuntimeError("record(grad=False) keeps no graph; use record(grad=True)")
        grads = torch.autograd.grad(score, self.attentions, retain_graph=retain_graph, allow_unused=True)
        self.gradients = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads, self.attentions)]
        return self.gradients


def _is_timm_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _is_timm_swin(model: nn.Module) -> bool:
    from timm.models.swin_transformer import SwinTransformer

    return isinstance(model, SwinTransformer)


def _token_support_problem(model: nn.Module) -> str | None:
    """Why the CLS-token methods cannot run on ``model`` (None when they can)."""
    from timm.models.vision_transformer import Attention, Block

    if _is_timm_swin(model):
        return (
            f"{type(model).__name__} (Swin) uses shifted-window attention without a CLS token; "
            f"{TOKEN_METHODS_NOTE}, so none of them apply to Swin (it still works as a classifier)"
        )
    if not _is_timm_vit(model):
        return f"{type(model).__name__} is not a timm VisionTransformer; {TOKEN_METHODS_NOTE}"
    if getattr(model, "cls_token", None) is None:
        return f"model has no class token (class_token=False); {TOKEN_METHODS_NOTE}"
    if getattr(model, "attn_pool", None) is not None or model.global_pool != "token":
        return (
            f"model pools with global_pool={model.global_pool!r}; the CLS-based methods need "
            "global_pool='token' (the classifier must read the CLS token)"
        )
    for i, blk in enumerate(model.blocks):
        if not isinstance(blk, Block) or not isinstance(getattr(blk, "attn", None), Attention):
            return f"block {i} ({type(blk).__name__}) is not a standard timm Block/Attention"
    return None


def _patch_geometry(model: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    pe = model.patch_embed
    img = tuple(int(s) for s in pe.img_size)
    patch = tuple(int(s) for s in pe.patch_size)
    grid = tuple(int(s) for s in getattr(pe, "grid_size", (img[0] // patch[0], img[1] // patch[1])))
    return img, patch, grid  # type: ignore[return-value]


def _norm_stats(model: nn.Module, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD))
    return mean, std


class ExplainableViT(nn.Module):
    """A timm ViT taking images in [0, 1]; ``forward(x01) -> logits (B, C)``.

    Attributes (all read from the timm model): ``timm_model``, ``name``, ``input_size (H, W)``,
    ``patch_size (ph, pw)``, ``grid_size (gh, gw)``, ``num_prefix_tokens``, ``num_tokens``,
    ``num_classes``, ``num_heads``, ``depth``, ``mean``, ``std``; ``token_support_problem`` is None
    when the CLS-token explanation methods apply, else the reason they do not. ``class_names``: one
    name per class when the source model has them (HF ``id2label``, torchvision / timm ImageNet
    metadata), else None (`class_name(i)`).
    """

    def __init__(self, timm_model: nn.Module, name: str | None = None, *, mean=None, std=None,
                 class_names=None):
        super().__init__()
        self.timm_model = timm_model.eval()
        self.name = name or type(timm_model).__name__
        self.mean, self.std = _norm_stats(timm_model, mean, std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self.input_size, self.patch_size, self.grid_size = _patch_geometry(timm_model)
        self.num_prefix_tokens = int(getattr(timm_model, "num_prefix_tokens", 0))
        self.num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.num_classes = int(timm_model.num_classes)
        self.token_support_problem = _token_support_problem(timm_model)
        blocks = list(timm_model.blocks) if _is_timm_vit(timm_model) else None
        self.depth = len(blocks) if blocks is not None else _count_swin_blocks(timm_model)
        self.num_heads = int(blocks[0].attn.num_heads) if blocks else None

    # ------------------------------------------------------------------ labels, normalisation
    def class_name(self, index: int) -> str | None:
        """The name of class ``index`` (None when the model has no class names)."""
        names = self.class_names
        return names[int(index)] if names is not None and len(names) == self.num_classes else None

    def set_normalization(self, mean=None, std=None) -> None:
        """Replace the per-channel mean / std the model normalises [0, 1] images with."""
        check_normalization(mean, std)
        if mean is not None:
            self.mean = tuple(float(m) for m in mean)
            self._mean = torch.tensor(self.mean, device=self._mean.device).view(1, -1, 1, 1)
        if std is not None:
            self.std = tuple(float(s) for s in std)
            self._std = torch.tensor(self.std, device=self._std.device).view(1, -1, 1, 1)

    # ------------------------------------------------------------------ structure
    @property
    def blocks(self) -> list[nn.Module]:
        """The transformer blocks (raises UnsupportedModelError for non-ViT models)."""
        self.require_token_methods("attention recording")
        return list(self.timm_model.blocks)

    def require_token_methods(self, method: str) -> None:
        """Raise `UnsupportedModelError` if the CLS-token methods do not apply to this model."""
        if self.token_support_problem is not None:
            raise UnsupportedModelError(f"{method} does not apply to {self.name}: {self.token_support_problem}")

    @property
    def device(self) -> torch.device:
        return next(self.timm_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.timm_model.parameters()).dtype

    # ------------------------------------------------------------------ forward
    def check_images(self, x01: torch.Tensor) -> None:
        """Raise InputError unless ``x01`` is ``(B, 3, H, W)`` at the model's input size."""
        if not torch.is_tensor(x01) or x01.ndim != 4 or x01.shape[1] != 3:
            shape = tuple(x01.shape) if torch.is_tensor(x01) else type(x01).__name__
            raise InputError(f"images must be a (B, 3, H, W) tensor in [0, 1]; got {shape}")
        if tuple(x01.shape[-2:]) != tuple(self.input_size):
            raise InputError(
                f"images are {tuple(x01.shape[-2:])} but {self.name} takes {tuple(self.input_size)}; "
                "resize first (fvit.data.images.load_images(paths, size))"
            )

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self._mean.to(x01.dtype)) / self._std.to(x01.dtype)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        self.check_images(x01)
        return self.timm_model(self.normalize(x01))

    # ------------------------------------------------------------------ attention recording
    @contextmanager
    def record(self, grad: bool = False) -> Iterator[AttentionRecording]:
        """Record each block's post-softmax attention ``(B, heads, T, T)`` during forwards inside.

        With ``grad=True`` the maps stay on the autograd graph and tensor hooks store their
        gradients in ``recording.gradients`` when ``backward()`` runs. timm's fused attention
        (``scaled_dot_product_attention``, which never materialises the map) is switched off per
        Attention module for the duration and restored afterwards; hooks are always removed.
        """
        blocks = self.blocks
        rec = AttentionRecording(grad=grad)
        handles = []
        with unfused_attention(blocks):
            try:
                for i, blk in enumerate(blocks):
                    handles.append(blk.attn.attn_drop.register_forward_hook(self._attention_hook(rec, i)))
                yield rec
            finally:
                for h in handles:
                    h.remove()

    @staticmethod
    def _attention_hook(rec: AttentionRecording, index: int):
        def hook(_module, _inputs, output):
            if index == 0:  # a new forward pass starts: forget the previous one
                rec.attentions.clear()
                rec.gradients.clear()
            rec.attentions.append(output if rec.grad else output.detach())
            rec.gradients.append(None)
            if rec.grad and output.requires_grad:
                output.register_hook(_store_grad(rec, index))

        return hook

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, patch={self.patch_size}, "
            f"grid={self.grid_size}, prefix={self.num_prefix_tokens}, depth={self.depth}, heads={self.num_heads}"
        )


def check_normalization(mean=None, std=None) -> None:
    """`InputError` unless ``mean`` / ``std`` (when given) are 3 finite numbers, ``std`` > 0."""
    for what, v in (("mean", mean), ("std", std)):
        if v is None:
            continue
        try:
            values = [float(x) for x in v]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or not all(math.isfinite(x) for x in values) or (what == "std" and min(values) <= 0):
            shown = tuple(v) if isinstance(v, (list, tuple)) else v
            raise InputError(f"{what}={shown}: expected 3 finite numbers (std > 0), one per RGB channel")


def _store_grad(rec: AttentionRecording, index: int):
    # A weak reference: the hook lives on the attention tensor, which the recording holds, and the
    # garbage collector cannot see through autograd hooks, so a strong one leaks every batch.
    ref = weakref.ref(rec)

    def hook(g: torch.Tensor):
        r = ref()
        if r is not None:
            r.gradients[index] = g

    return hook


def _count_swin_blocks(model: nn.Module) -> int:
    layers = getattr(model, "layers", None)
    if layers is None:
        return 0
    return sum(len(getattr(layer, "blocks", [])) for layer in layers)


@contextmanager
def unfused_attention(blocks) -> Iterator[None]:
    """Switch timm's fused attention off in each block's Attention for the duration (the fused kernel
    never materialises the attention map that hooks read), restoring each module's flag afterwards."""
    fused = [blk.attn.fused_attn for blk in blocks]
    try:
        for blk in blocks:
            blk.attn.fused_attn = False
        yield
    finally:
        for blk, f in zip(blocks, fused):
            blk.attn.fused_attn = f


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, restoring each submodule's own flag afterwards
    (``model.train(was_training)`` would not: it sets every submodule to the top module's flag)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training
