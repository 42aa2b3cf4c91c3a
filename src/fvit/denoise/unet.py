"""An OpenAI-style (ADM, Dhariwal & Nichol 2021) diffusion UNet, written for this project.

Why hand-written: the reference `guided-diffusion` package is not on PyPI (`pip index versions
guided-diffusion` finds nothing), and diffusers 0.42 has no loader or converter for its
checkpoints (its single-file converters target Stable Diffusion's UNet with transformer blocks;
nothing maps ADM's `qkv` attention / `input_blocks` layout onto `UNet2DModel`). This implementation is our own; only its *parameter
names and shapes* follow the official checkpoints, so `256x256_diffusion_uncond.pt` loads with
`torch.load(weights_only=True)` + `load_state_dict(strict=True)`.

Topology (ADM): conv_in -> per level `num_res_blocks` ResBlocks (+ attention where the downsample
factor is in `attention_ds`) and a down ResBlock (resblock_updown) or strided conv -> middle
(Res, Attn, Res) -> mirrored output levels with `num_res_blocks + 1` ResBlocks on concatenated
skips and an up block -> GroupNorm, SiLU, conv_out. ResBlocks use scale-shift norm (FiLM:
norm(h) * (1 + scale) + shift from the timestep embedding). GroupNorm runs in float32.
The same class, with a small config, is the project's own small DDPM (`small_unet.py`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (8, 16, 32)   # downsample factors with attention
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64                  # -1: use num_heads instead
    num_heads: int = 4
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    norm_groups: int = 32
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_ds"] = list(self.attention_ds)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d["attention_ds"] = tuple(d.get("attention_ds", ()))
        d["channel_mult"] = tuple(d.get("channel_mult", (1,)))
        return cls(**d)


def guided_diffusion_256_config() -> UNetConfig:
    """Flags of 256x256_diffusion_uncond.pt: 256 channels, 2 res blocks, attention at resolutions
    32,16,8 (= downsample 8,16,32 of 256), 64 head channels, resblock_updown, scale-shift norm,
    learn_sigma (6 output channels), channel_mult (1,1,2,2,4,4)."""
    return UNetConfig()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half), i < half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (stable under fp16/bf16), cast back to the input dtype."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def _norm(ch: int, groups: int) -> GroupNorm32:
    return GroupNorm32(min(groups, ch), ch)


class ResBlock(nn.Module):
    """in_layers (norm, SiLU, [resample], conv) + timestep FiLM + out_layers (norm, SiLU, dropout,
    conv) + skip (identity / 1x1 conv / resampled input)."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int | None, cfg: UNetConfig,
                 up: bool = False, down: bool = False):
        super().__init__()
        out_ch = out_ch or ch
        g = cfg.norm_groups
        self.in_layers = nn.Sequential(_norm(ch, g), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.resample = "up" if up else "down" if down else None
        self.scale_shift = cfg.use_scale_shift_norm
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if self.scale_shift else out_ch))
        self.out_layers = nn.Sequential(_norm(out_ch, g), nn.SiLU(), nn.Dropout(cfg.dropout),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x):
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; qkv is a 1x1 Conv1d laid out per head as [q | k | v] (the
    checkpoints' "legacy" order: split heads first, then q, k, v)."""

    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        self.heads = ch // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads
        self.norm = _norm(ch, cfg.norm_groups)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x):
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, hh * ww)
        qkv = self.qkv(self.norm(flat))                       # (b, 3c, L)
        d = c // self.heads
        q, k, v = qkv.reshape(b, self.heads, 3 * d, -1).split(d, dim=2)   # (b, H, d, L) each
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, -1))
        return (flat + h).reshape(b, c, hh, ww)


class Block(nn.ModuleList):
    """A list of layers where ResBlocks also receive the timestep embedding (keys `<i>.<name>`)."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """forward(x (B, C, H, W), t (B,)) -> (B, out_channels, H, W); H, W multiples of
    2^(len(channel_mult) - 1)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, int(mult * mc), cfg)]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg))
                self.input_blocks.append(Block(layers))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = ResBlock(ch, emb, ch, cfg, down=True) if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(Block([down]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Block([ResBlock(ch, emb, ch, cfg), AttentionBlock(ch, cfg), ResBlock(ch, emb, ch, cfg)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, int(mc * mult), cfg)]
                ch = int(mc * mult)
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, cfg))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, cfg, up=True) if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Block(layers))
        self.out = nn.Sequential(_norm(ch, cfg.norm_groups), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
