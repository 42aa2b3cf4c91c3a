"""LRP (full, to pixels) and Transformer Attribution (Chefer et al. 2021) on timm's own modules.

One forward pass records, through forward hooks on timm's modules, the activations the relevance
rules need (a `Tape`): the patch-conv input, the tokens after the position embedding, and per block
its input, the qkv input / output, q and k after ``q_norm`` / ``k_norm``, the attention map, the
``proj`` input, both residual branches and the MLP's ``fc1`` / ``fc2`` inputs, plus the classifier
inputs. The relevance pass then walks the recorded tensors backwards with the closed-form rules of
`fvit.explain.rules` (batched; no private copy of the network).

Rules (``rules="ours"``, the default: Chefer et al.'s ``layers_ours`` / ``ViT_LRP``, the rules
Transformer Attribution is built on; ``rules="orig"`` swaps the two marked (*) for
``layers_lrp`` / ``ViT_orig_LRP``'s, see `RULE_SETS`):
- start: one-hot of the target class at the logits (``R = e_c``, sum 1 per sample);
- Linear (head, qkv, proj, fc1, fc2) (*): z+ (alpha=1, beta=0), biases take no relevance;
- CLS pooling: the head's relevance goes to the CLS token (distilled DeiT: the head average
  ``(head(x_cls) + head_dist(x_dist)) / 2`` is an add split between the CLS and distillation tokens);
- LayerNorm (norm1, norm2, norm, fc_norm, norm_pre, q_norm / k_norm, attn.norm, mlp.norm), GELU,
  softmax, dropout, drop_path: relevance passes through unchanged; LayerScale ``gamma * x`` (a
  diagonal linear map) likewise: its gradient x input ``x * gamma * R / (gamma x)`` is ``R``;
- ``attn @ v`` and ``q @ k^T``: gradient x input, each operand's relevance halved; the attention
  map's relevance ``R_A`` is taken after the halving (used by Transformer Attribution);
- residual adds and the position-embedding add (*): gradient x input, then each branch rescaled to the
  share ``|sum R_branch|`` of the sample's total; the skip path and the branch input are summed
  (clone); after the position-embedding add only the patch branch at patch rows is kept (the
  prefix tokens' and the position embedding's relevance leave the pixel map);
- patch-embedding conv: z^B with each sample's min / max of the normalised image as bounds;
  channels are summed at pixel level (the per-channel normalisation is a diagonal map: pass).

``relevance_dtype="float64"`` runs the relevance pass (not the forward) in float64 (a float64 model
always runs it in float64): the q k^T split
divides by products as small as 1e-7, so float32 rounding moves the maps (see docs/REPRODUCTION.md).

Conservation (tested, ``rules="ours"``): the relevance on the CLS token after the head, and the relevance entering the
first block, sum to 1 per sample (the start value), up to the 1e-9 stabilisers and to outputs whose
positive pre-activation / product is exactly 0 (their relevance is dropped, as in the reference).
The pixel map sums to the patch branch's share at the position-embedding add: with a zero position
embedding this is everything at the patch rows, so pixels + relevance left on the prefix tokens = 1.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from fvit.errors import UnsupportedModelError
from fvit.explain.attention import _grad_input, check_start_layer, rollout_matrices
from fvit.explain.base import (ExplanationMethod, class_score, cls_row_to_grid, graph_mode, rectify, register_method,
                               resolve_target)
from fvit.explain.rules import (
    add_relevance, add_relevance_plain, conv_zbox, linear_zplus, linear_zplus_separate, matmul_relevance,
)
from fvit.models.wrapper import ExplainableViT, unfused_attention
from fvit.registry import Registry


# ------------------------------------------------------------------------------------ rule sets
@dataclass(frozen=True)
class RuleSet:
    """The two rules that differ between Chefer et al.'s rule sets: Linear layers and adds."""

    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    add: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


#: ``ours``: ``layers_ours`` (ViT_LRP; conservative: z+ with one joint denominator, adds rescaled to
#: each branch's share); ``orig``: ``layers_lrp`` (ViT_orig_LRP, the published "LRP" baseline:
#: z+ parts over their own denominators, adds by plain gradient x input; not conserved).
RULE_SETS: Registry[RuleSet] = Registry("LRP rule set")
RULE_SETS.register("ours", RuleSet(linear_zplus, add_relevance), aliases=("layers-ours", "vit-lrp", "conservative"))
RULE_SETS.register("orig", RuleSet(linear_zplus_separate, add_relevance_plain),
                   aliases=("layers-lrp", "vit-orig-lrp", "original"))
OURS = RULE_SETS.get("ours")
RELEVANCE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ------------------------------------------------------------------------------------- the tape
@dataclass
class BlockTape:
    """Activations of one timm ``Block`` (all detached, ``(B, T, ...)``)."""

    x_in: torch.Tensor | None = None
    h1: torch.Tensor | None = None  # norm1(x_in) = qkv input
    qkv: torch.Tensor | None = None
    q: torch.Tensor | None = None  # after q_norm, (B, heads, T, d)
    k: torch.Tensor | None = None
    attn: torch.Tensor | None = None  # post-softmax (after attn_drop), (B, heads, T, T)
    ctx: torch.Tensor | None = None  # proj input
    branch1: torch.Tensor | None = None  # drop_path1(ls1(attn(...)))
    h2: torch.Tensor | None = None  # fc1 input
    hidden: torch.Tensor | None = None  # fc2 input
    branch2: torch.Tensor | None = None


@dataclass
class Tape:
    conv_in: torch.Tensor | None = None  # normalised image entering patch_embed.proj
    tokens: torch.Tensor | None = None  # tokens after the position embedding (norm_pre input)
    blocks: list[BlockTape] = field(default_factory=list)
    head_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def tape_as(tape: Tape, dtype: torch.dtype) -> Tape:
    """A copy of ``tape`` with every floating tensor cast to ``dtype``."""

    def cast(t):
        return t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t

    blocks = [BlockTape(**{f: cast(getattr(bt, f)) for f in bt.__dataclass_fields__}) for bt in tape.blocks]
    return Tape(conv_in=cast(tape.conv_in), tokens=cast(tape.tokens), blocks=blocks,
                head_inputs={k: cast(v) for k, v in tape.head_inputs.items()})


def tape_slice(tape: Tape, start: int, stop: int) -> Tape:
    """The samples ``start:stop`` of ``tape`` (views; every recorded tensor is batch-first)."""

    def part(t):
        return t[start:stop] if torch.is_tensor(t) else t

    blocks = [BlockTape(**{f: part(getattr(bt, f)) for f in bt.__dataclass_fields__}) for bt in tape.blocks]
    return Tape(conv_in=part(tape.conv_in), tokens=part(tape.tokens), blocks=blocks,
                head_inputs={k: part(v) for k, v in tape.head_inputs.items()})


def _kept(value: torch.Tensor, keep_graph: bool) -> torch.Tensor:
    return value if keep_graph else value.detach()


def _save(target: object, attr: str, which: str, keep_graph: bool = False) -> Callable:
    def hook(_module, inputs, output):
        value = inputs[0] if which == "in" else output
        setattr(target, attr, _kept(value, keep_graph))

    return hook


def _save_head(tape: Tape, key: str, keep_graph: bool = False) -> Callable:
    def hook(_module, inputs, _output):
        tape.head_inputs[key] = _kept(inputs[0], keep_graph)

    return hook


def _block_hooks(blk: nn.Module, bt: BlockTape, keep_graph: bool = False) -> list:
    attn, mlp = blk.attn, blk.mlp
    plan = [
        (attn.qkv, "h1", "in"), (attn.qkv, "qkv", "out"), (attn.q_norm, "q", "out"), (attn.k_norm, "k", "out"),
        (attn.attn_drop, "attn", "out"), (attn.proj, "ctx", "in"), (blk.drop_path1, "branch1", "out"),
        (mlp.fc1, "h2", "in"), (mlp.fc2, "hidden", "in"), (blk.drop_path2, "branch2", "out"),
    ]  # fmt: skip
    handles = [module.register_forward_hook(_save(bt, attr, which, keep_graph)) for module, attr, which in plan]
    handles.append(blk.register_forward_pre_hook(
        lambda _m, inputs: setattr(bt, "x_in", _kept(inputs[0], keep_graph))))
    return handles


def lrp_problem(model: ExplainableViT) -> str | None:
    """Why the LRP relevance pass cannot run on ``model`` (None when it can)."""
    from timm.layers import Mlp

    tm = model.timm_model
    for i, blk in enumerate(tm.blocks):
        if getattr(blk.attn, "gate", None) is not None:
            return f"block {i} uses gated attention, which the LRP rules do not cover"
        if not isinstance(blk.mlp, Mlp):
            return f"block {i} uses {type(blk.mlp).__name__}; the LRP rules cover timm's Mlp (fc1-act-fc2)"
    if hasattr(tm.patch_embed, "backbone"):
        return "hybrid patch embedding (CNN backbone): the z^B pixel rule needs a patch conv on the image"
    if not isinstance(tm.patch_embed.proj, nn.Conv2d):
        return f"patch embedding {type(tm.patch_embed.proj).__name__} is not a Conv2d"
    heads = [tm.head] + ([tm.head_dist] if _head_kind(tm) == "distilled" else [])
    if not all(isinstance(h, nn.Linear) for h in heads):
        return f"classifier {type(tm.head).__name__} is not a Linear head on the CLS token"
    return None


@contextmanager
def record_tape(model: ExplainableViT, keep_graph: bool = False) -> Iterator[Tape]:
    """Record a `Tape` during the forwards inside; removes every hook afterwards. ``keep_graph``
    keeps the activations on the autograd graph (the differentiable path), else they are detached."""
    problem = lrp_problem(model)
    if problem is not None:
        raise UnsupportedModelError(f"LRP does not apply to {model.name}: {problem}")
    tm = model.timm_model
    tape = Tape(blocks=[BlockTape() for _ in tm.blocks])
    handles = [
        tm.patch_embed.proj.register_forward_hook(_save(tape, "conv_in", "in", keep_graph)),
        tm.norm_pre.register_forward_hook(_save(tape, "tokens", "in", keep_graph)),
        tm.head.register_forward_hook(_save_head(tape, "head", keep_graph)),
    ]
    if hasattr(tm, "head_dist"):
        handles.append(tm.head_dist.register_forward_hook(_save_head(tape, "head_dist", keep_graph)))
    for blk, bt in zip(tm.blocks, tape.blocks):
        handles += _block_hooks(blk, bt, keep_graph)
    with unfused_attention(tm.blocks):
        try:
            yield tape
        finally:
            for h in handles:
                h.remove()


# ------------------------------------------------------------------------------ head relevance
def _head_kind(tm: nn.Module) -> str:
    return "distilled" if hasattr(tm, "head_dist") else "token"


def _token_head(tm: nn.Module, tape: Tape, start: torch.Tensor, num_tokens: int, rules: RuleSet = OURS) -> torch.Tensor:
    """``y = head(fc_norm(norm(x))[CLS])``: z+ through the head, all of it onto the CLS token."""
    feat = tape.head_inputs["head"]
    r_tokens = feat.new_zeros(feat.shape[0], num_tokens, feat.shape[-1])
    r_tokens[:, 0] = rules.linear(feat, tm.head.weight, start)
    return r_tokens


def _distilled_head(tm: nn.Module, tape: Tape, start: torch.Tensor, num_tokens: int, rules: RuleSet = OURS) -> torch.Tensor:
    """``y = (head(x_cls) + head_dist(x_dist)) / 2``: add split, then z+ per head."""
    x_cls, x_dist = tape.head_inputs["head"], tape.head_inputs["head_dist"]

    def out(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        bias = None if head.bias is None else head.bias.to(x.dtype)
        return torch.nn.functional.linear(x, head.weight.to(x.dtype), bias) / 2

    r_cls, r_dist = rules.add(out(tm.head, x_cls), out(tm.head_dist, x_dist), start)
    r_tokens = x_cls.new_zeros(x_cls.shape[0], num_tokens, x_cls.shape[-1])
    r_tokens[:, 0] = rules.linear(x_cls, tm.head.weight, r_cls)
    r_tokens[:, 1] = rules.linear(x_dist, tm.head_dist.weight, r_dist)
    return r_tokens


HEADS: Registry[Callable[..., torch.Tensor]] = Registry("classifier head")
HEADS.register("token", _token_head)
HEADS.register("distilled", _distilled_head)


# ----------------------------------------------------------------------------- block relevance
def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def attention_relevance(attn: nn.Module, bt: BlockTape, r_out: torch.Tensor,
                        rules: RuleSet = OURS) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance at the attention output -> (relevance at its input ``h1``, ``R_A`` per head)."""
    heads = attn.num_heads
    r_ctx = _split_heads(rules.linear(bt.ctx, attn.proj.weight, r_out), heads)  # attn.norm: pass
    b, n, _ = bt.qkv.shape
    v = bt.qkv.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)[2]
    r_attn, r_v = matmul_relevance(bt.attn, v, r_ctx)  # softmax / dropout: pass
    r_q, r_kt = matmul_relevance(bt.q, bt.k.transpose(-1, -2), r_attn)  # the scale cancels in R/Z
    r_qkv = torch.stack([r_q, r_kt.transpose(-1, -2), r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)
    return rules.linear(bt.h1, attn.qkv.weight, r_qkv), r_attn


def mlp_relevance(mlp: nn.Module, bt: BlockTape, r_out: torch.Tensor, rules: RuleSet = OURS) -> torch.Tensor:
    """fc2 (z+) -> act / dropout / norm (pass) -> fc1 (z+)."""
    r_hidden = rules.linear(bt.hidden, mlp.fc2.weight, r_out)
    return rules.linear(bt.h2, mlp.fc1.weight, r_hidden)


def block_relevance(blk: nn.Module, bt: BlockTape, r_out: torch.Tensor,
                    rules: RuleSet = OURS) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_mid = x_in + b1``, ``x_out = x_mid + b2`` backwards -> (R at ``x_in``, ``R_A``)."""
    x_mid = bt.x_in + bt.branch1
    r_mid, r_b2 = rules.add(x_mid, bt.branch2, r_out)
    r_mid = r_mid + mlp_relevance(blk.mlp, bt, r_b2, rules)  # ls2, drop_path2, norm2: pass; clone: sum
    r_in, r_b1 = rules.add(bt.x_in, bt.branch1, r_mid)
    r_h1, r_attn = attention_relevance(blk.attn, bt, r_b1, rules)
    return r_in + r_h1, r_attn


def embedding_relevance(model: ExplainableViT, tape: Tape, r_tokens: torch.Tensor, rules: RuleSet = OURS) -> torch.Tensor:
    """Position-embedding add (patch branch kept) -> patch conv (z^B) -> pixels ``(B, H, W)``."""
    tm = model.timm_model
    pos = _positional_part(tm, tape.tokens)
    r_raw, _ = rules.add(tape.tokens - pos, pos, r_tokens)
    r_patch = r_raw[:, model.num_prefix_tokens:]  # patch_embed.norm: pass
    gh, gw = model.grid_size
    r_conv = r_patch.transpose(1, 2).reshape(r_patch.shape[0], -1, gh, gw)
    conv = tm.patch_embed.proj
    r_pix = conv_zbox(
        tape.conv_in, conv.weight, r_conv,
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
    )  # fmt: skip
    h, w = model.input_size
    return r_pix[:, :, :h, :w].sum(dim=1)


def _positional_part(tm: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The position embedding as added to ``tokens`` (zeros at prefix rows for no_embed_class)."""
    pos = getattr(tm, "pos_embed", None)
    if pos is None:
        return torch.zeros_like(tokens)
    pos = pos.detach().to(tokens.dtype)
    missing = tokens.shape[1] - pos.shape[1]
    if missing:
        pos = torch.cat([pos.new_zeros(1, missing, pos.shape[-1]), pos], dim=1)
    return pos.expand_as(tokens)


@dataclass
class RelevancePass:
    """Output of `relevance_pass`: start relevance at the logits, at the tokens after the head
    (CLS row), at the block-stack input, per-block ``R_A`` and (optionally) pixels."""

    start: torch.Tensor
    head_tokens: torch.Tensor
    stack_input: torch.Tensor
    attn_relevance: list[torch.Tensor]
    pixel: torch.Tensor | None = None


#: Samples per relevance pass on a CPU: the rules are element-wise heavy, and a chunk of 8 ViT-B/Ti
#: samples keeps the temporaries small enough to be reused by the allocator instead of being
#: mapped and zeroed afresh (a batch of 32 in one pass spends ~7 % of its time in page faults).
#: Other devices run the whole batch at once.
CPU_RELEVANCE_CHUNK = 8


def relevance_pass(model: ExplainableViT, tape: Tape, target: torch.Tensor, to_pixels: bool = True,
                   rules: RuleSet | str = "ours", dtype: torch.dtype | None = None,
                   chunk: int | None = None) -> RelevancePass:
    """Walk the recorded tape backwards from the one-hot target at the logits, with the named rule
    set (`RULE_SETS`), in ``dtype`` or the tape's own dtype, whichever is more precise (a float64
    model is never rounded down to float32). Every rule works per sample, so the pass runs in
    chunks of ``chunk`` samples (default `CPU_RELEVANCE_CHUNK` on a CPU, the whole batch elsewhere)
    with the results of one pass up to float rounding (tested)."""
    n = tape.tokens.shape[0]
    if chunk is None:
        chunk = CPU_RELEVANCE_CHUNK if tape.tokens.device.type == "cpu" else n
    if n > chunk > 0:
        parts = [_relevance_pass(model, tape_slice(tape, i, i + chunk), target[i:i + chunk], to_pixels, rules, dtype)
                 for i in range(0, n, chunk)]
        return RelevancePass(
            torch.cat([p.start for p in parts]), torch.cat([p.head_tokens for p in parts]),
            torch.cat([p.stack_input for p in parts]),
            [torch.cat(layer) for layer in zip(*(p.attn_relevance for p in parts))],
            torch.cat([p.pixel for p in parts]) if to_pixels else None)
    return _relevance_pass(model, tape, target, to_pixels, rules, dtype)


def _relevance_pass(model: ExplainableViT, tape: Tape, target: torch.Tensor, to_pixels: bool,
                    rules: RuleSet | str, dtype: torch.dtype | None) -> RelevancePass:
    rules = RULE_SETS.get(rules) if isinstance(rules, str) else rules
    if dtype is not None and torch.finfo(dtype).bits > torch.finfo(tape.tokens.dtype).bits:
        tape = tape_as(tape, dtype)
    tm = model.timm_model
    feat = tape.head_inputs["head"]
    start = torch.zeros(feat.shape[0], model.num_classes, device=feat.device, dtype=feat.dtype)
    start.scatter_(1, target[:, None], 1.0)
    r = head_tokens = HEADS.get(_head_kind(tm))(tm, tape, start, model.num_tokens, rules)  # norm / fc_norm: pass
    attn_rel: list[torch.Tensor] = []
    for blk, bt in zip(reversed(list(tm.blocks)), reversed(tape.blocks)):
        r, r_attn = block_relevance(blk, bt, r, rules)
        attn_rel.insert(0, r_attn)
    pixel = embedding_relevance(model, tape, r, rules) if to_pixels else None  # norm_pre: pass
    return RelevancePass(start, head_tokens, r, attn_rel, pixel)


# ------------------------------------------------------------------------------------ methods
@register_method
class LRP(ExplanationMethod):
    """Full LRP to pixels (Chefer et al.'s ``method="full"``): relevance of the one-hot target
    class propagated with the rules above; ``pixel = sum_channels R_input``; the patch map is the
    pixel map sum-pooled per patch.

    ``rules``: "ours" (default; ``layers_ours``, conservative) or "orig" (``layers_lrp`` /
    ``ViT_orig_LRP``: the rules behind the published LRP baseline, Chefer et al. Table / [Re]
    Table 5 "Chefer" column); ``relevance_dtype``: "float32" or "float64" for the relevance pass."""

    name = "lrp"
    passes = "relevance pass"
    description = "full LRP to pixels (z+ Linear, z^B patch conv, Chefer et al.'s matmul/residual rules)"
    needs_grad = False
    native_pixel = True
    defaults = {"rules": "ours", "relevance_dtype": "float32"}
    choices = {"rules": ("ours", "orig"), "relevance_dtype": tuple(RELEVANCE_DTYPES)}

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        """With ``graph``: the same rules on a tape kept on the graph. The rules are piecewise
        rational in the activations (sign splits x^+ / x^-, |.| in the residual split, per-sample
        min / max in z^B): autograd gives their exact gradient almost everywhere, so no surrogate
        is used."""
        with graph_mode(graph), record_tape(model, keep_graph=graph) as tape:
            logits = model(images)
            tgt = resolve_target(target, logits)
            pixel = relevance_pass(model, tape, tgt, to_pixels=True, rules=self.params["rules"],
                                   dtype=RELEVANCE_DTYPES[self.params["relevance_dtype"]]).pixel
        return (pixel.to(images.dtype), logits, tgt) if graph else (pixel.clone(), logits.clone(), tgt.clone())


@register_method
class TransformerAttribution(ExplanationMethod):
    """Chefer et al. 2021: per block ``Abar_b = mean_h (dy_c/dA_b * R_A_b)^+`` with ``R_A_b`` the
    LRP relevance at the attention map (after the halving); ``C = prod_b (I + Abar_b)`` (later
    blocks on the left, no row normalisation); ``map = C[CLS, p:]``. ``start_layer`` (0-based):
    the first block in the product (default 0, all blocks, the generator's default; Chefer et al.'s
    evaluation scripts behind the published numbers use 1); ``rules`` / ``relevance_dtype`` as for
    `LRP`."""

    name = "transformer_attribution"
    aliases = ("ta", "trans_att")
    description = "Transformer Attribution (Chefer et al. 2021): LRP relevance x gradient on attention, rollout"
    needs_grad = True
    defaults = {"start_layer": 0, "rules": "ours", "relevance_dtype": "float32"}
    choices = {"rules": ("ours", "orig"), "relevance_dtype": tuple(RELEVANCE_DTYPES)}

    def attribute(self, model: ExplainableViT, images: torch.Tensor, target, graph: bool, surrogate):
        """With ``graph``: double backpropagation for ``dy_c/dA_b`` (``create_graph=True``), the LRP
        relevance on a tape kept on the graph (exact rules, see `LRP.attribute`); the clamp of
        ``grad * R_A`` is `rectify` (softplus with ``surrogate``)."""
        with torch.enable_grad(), record_tape(model, keep_graph=graph) as tape, model.record(grad=True) as rec:
            logits = model(images if graph else _grad_input(images))
            tgt = resolve_target(target, logits)
            grads = torch.autograd.grad(class_score(logits, tgt), rec.attentions, create_graph=graph,
                                        allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for g, a in zip(grads, rec.attentions)]
        start = check_start_layer(model, self.params["start_layer"], self.name)
        with contextlib.nullcontext() if graph else torch.no_grad():
            rel = relevance_pass(model, tape, tgt, to_pixels=False, rules=self.params["rules"],
                                 dtype=RELEVANCE_DTYPES[self.params["relevance_dtype"]])
            cams = [rectify(g.to(r.dtype) * r, surrogate).mean(dim=1)
                    for g, r in zip(grads, rel.attn_relevance)][start:]
            joint = rollout_matrices(cams, normalize=False).to(images.dtype)
        return cls_row_to_grid(joint, model), logits, tgt
