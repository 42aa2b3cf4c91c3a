"""Backend: OpenAI guided-diffusion `256x256_diffusion_uncond.pt` (the denoiser of both papers).

The network is `fvit.denoise.unet.UNet` with `guided_diffusion_256_config()`; the checkpoint is a
plain state dict loaded with `torch.load(weights_only=True)`. The model is first built on the meta
device and the checkpoint tensors are assigned into it, so loading never materialises a second,
random 2 GB copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fvit.denoise.base import Denoiser
from fvit.denoise.schedule import NoiseSchedule, linear_schedule
from fvit.denoise.unet import UNet, UNetConfig, guided_diffusion_256_config
from fvit.errors import CheckpointError
from fvit.utils import load_torch_weights

CHECKPOINT_NAME = "256x256_diffusion_uncond.pt"
CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
ENV_VAR = "FVIT_GUIDED_DIFFUSION"


class GuidedDiffusionDenoiser(Denoiser):
    """eps = first 3 of the 6 output channels; the other 3 (learn_sigma) are the learned-variance
    output v, used by the ancestral samplers as guided-diffusion's p_sample does. Native size 256;
    accepts any multiple of 32 directly (224 as Carlini et al.)."""

    learned_variance = True

    def __init__(self, unet: UNet, schedule: NoiseSchedule | None = None, image_size: int = 256):
        super().__init__(schedule or linear_schedule(1000), image_size=image_size,
                         size_multiple=unet.size_multiple, flexible=True)
        self.unet = unet

    def _eps(self, x_t, t):
        return self._eps_var(x_t, t)[0]

    def _eps_var(self, x_t, t):
        out = self.unet(x_t.to(self.dtype), t).to(x_t.dtype)
        c = x_t.shape[1]
        return out[:, :c], (out[:, c:2 * c] if out.shape[1] >= 2 * c else None)


def check_state_dict(state: dict, model: torch.nn.Module, path: str | Path) -> None:
    """Raise CheckpointError naming the file and the first missing / unexpected / mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    bad = [f"{k}: expected {expected[k]}, found {found[k]}" for k in expected
           if k in found and expected[k] != found[k]]
    if missing or unexpected or bad:
        parts = [f"{path}: checkpoint does not fit the architecture"
                 f" ({len(expected)} keys expected, {len(found)} found)"]
        if missing:
            parts.append(f"missing {len(missing)} e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} e.g. {unexpected[:3]}")
        if bad:
            parts.append(f"shape mismatch {len(bad)} e.g. {bad[:3]}")
        raise CheckpointError("; ".join(parts))


def find_guided_checkpoint(path: str | Path | None = None) -> Path:
    candidates = [Path(path)] if path else [
        *( [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []),
        Path.cwd() / CHECKPOINT_NAME,
        Path.home() / ".cache" / "fvit" / CHECKPOINT_NAME,
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise CheckpointError(
        f"guided-diffusion checkpoint not found (looked at: {', '.join(map(str, candidates))}); "
        f"download {CHECKPOINT_URL} and pass guided-diffusion-256:PATH or set ${ENV_VAR}")


def load_guided_diffusion(path: str | Path | None = None, device=None,
                          config: UNetConfig | None = None) -> GuidedDiffusionDenoiser:
    ckpt = find_guided_checkpoint(path)
    state = load_torch_weights(ckpt, "guided-diffusion checkpoint")  # one-line errors, pickles refused
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt}: expected a state dict, found {type(state).__name__}")
    with torch.device("meta"):
        unet = UNet(config or guided_diffusion_256_config())
    check_state_dict(state, unet, ckpt)
    unet.load_state_dict(state, strict=True, assign=True)
    den = GuidedDiffusionDenoiser(unet.float())
    return den.to(device).eval() if device is not None else den.eval()
