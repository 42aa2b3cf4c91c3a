"""Plain pre-norm ViTs of any library, rebuilt as the equivalent timm ``VisionTransformer``.

A backend (`fvit.models.backends`) describes its source model as a `PlainViT` (sizes, LayerNorm
eps, activation, prefix tokens, heads) and renames its weights to timm's keys (``qkv`` fused from
q / k / v, ``pos_embed``, ``cls_token``, ...); `timm_vit` builds the timm model with those weights.
The timm model computes the same function: patch conv, ``[CLS, (DIST,) patches] + pos``, blocks
``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` with softmax(q k^T / sqrt(head_dim)), the final
norm and a Linear head on the CLS token (DeiT with a teacher: the mean of the CLS and the
distillation heads, timm's ``VisionTransformerDistilled`` in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Mapping

import torch
from torch import nn

from fvit.errors import CheckpointError, UnsupportedModelError

#: Activations a plain ViT's MLP may use, by fvit's name (exact GELU, tanh-approximate GELU, ...).
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu")


@dataclass(frozen=True)
class PlainViT:
    """What a plain pre-norm ViT with a class token is. ``dist_token``: a second prefix token after
    the class token (DeiT's distillation token); ``dist_head``: it has its own Linear head and the
    logits are the mean of both heads (DeiT with a teacher)."""

    source: str
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_classes: int
    eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: bool = True
    dist_token: bool = False
    dist_head: bool = False

    def __post_init__(self) -> None:
        if self.act not in ACTIVATIONS:
            raise UnsupportedModelError(f"{self.source}: MLP activation {self.act!r} is not one fvit converts "
                                        f"({', '.join(ACTIVATIONS)})")
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise UnsupportedModelError(f"{self.source}: {self.num_heads} heads do not divide the width "
                                        f"{self.embed_dim}")
        if self.num_classes < 1:
            raise UnsupportedModelError(f"{self.source}: no classifier head (num_classes={self.num_classes}); "
                                        "fvit explains a class")
        if self.dist_head and not self.dist_token:
            raise UnsupportedModelError(f"{self.source}: a distillation head needs a distillation token")

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + int(self.dist_token)


def pair(value) -> tuple[int, int]:
    """``16`` or ``(16, 16)`` -> ``(16, 16)``."""
    if isinstance(value, (tuple, list)):
        a, b = value
        return int(a), int(b)
    return int(value), int(value)


def _activation(name: str):
    from timm.layers.activations import GELUTanh, QuickGELU

    return {"gelu": nn.GELU, "gelu_tanh": GELUTanh, "quick_gelu": QuickGELU, "relu": nn.ReLU}[name]


def timm_kwargs(arch: PlainViT) -> dict:
    from timm.layers import LayerNorm

    return dict(
        img_size=arch.img_size, patch_size=arch.patch_size, in_chans=3, num_classes=arch.num_classes,
        global_pool="token", embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
        mlp_ratio=(arch.mlp_dim + 0.5) / arch.embed_dim,  # timm takes int(dim * ratio) = mlp_dim
        qkv_bias=arch.qkv_bias, class_token=True, no_embed_class=False, pre_norm=False,
        norm_layer=partial(LayerNorm, eps=float(arch.eps)), act_layer=_activation(arch.act),
    )


def empty_timm_vit(arch: PlainViT) -> nn.Module:
    """The timm model of ``arch`` on the meta device (no memory, no initialisation cost)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    kwargs = timm_kwargs(arch)
    with torch.device("meta"):
        if arch.dist_head:
            return VisionTransformerDistilled(**kwargs)
        # the distillation token without its own head is a register token right after CLS
        return VisionTransformer(reg_tokens=int(arch.dist_token), **kwargs)


def shape_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing / unexpected keys and shape mismatches of ``state`` against ``expected``."""
    problems = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)} expected" for k, v in expected.items()
                if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    return problems


def describe(problems: list[str], show: int = 4) -> str:
    more = f" (+{len(problems) - show} more)" if len(problems) > show else ""
    return "; ".join(problems[:show]) + more


def timm_vit(arch: PlainViT, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The timm ``VisionTransformer`` (``VisionTransformerDistilled`` with two heads) of ``arch``
    holding ``state`` (timm key names; tensors are copied, the source keeps its own), in eval mode."""
    model = empty_timm_vit(arch)
    problems = shape_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{arch.source}: weights do not fit the converted ViT: {describe(problems)}")
    model.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()}, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # every tensor must come from the source
        raise CheckpointError(f"{arch.source}: the conversion left {', '.join(left[:4])} without weights")
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """timm's fused ``qkv`` projection (rows q, then k, then v) from separate ones."""
    return torch.cat([q, k, v], dim=0)


__all__ = ["ACTIVATIONS", "PlainViT", "describe", "empty_timm_vit", "fuse_qkv", "pair", "shape_problems",
           "timm_vit"]
