"""Backend: any diffusers `UNet2DModel` + scheduler config in a local directory.

Layout accepted: a pipeline folder (`PATH/unet/`, `PATH/scheduler/scheduler_config.json`) or a
model folder holding `config.json` (+ weights) and `scheduler_config.json` side by side. Betas are
rebuilt in float64 from the scheduler config (`linear`, `scaled_linear`, `squaredcos_cap_v2`,
`trained_betas`); `prediction_type` epsilon / sample / v_prediction are all converted to eps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fvit.denoise.base import Denoiser
from fvit.denoise.schedule import NoiseSchedule, cosine_schedule
from fvit.errors import CheckpointError


def schedule_from_scheduler_config(cfg: dict, path: Path | str = "scheduler_config.json") -> NoiseSchedule:
    """The float64 schedule of a diffusers scheduler config; CheckpointError naming `path` and the
    field for a value that is not one (a list instead of an object, T = 0, betas as a string)."""
    from fvit.denoise.schedule import MAX_SCHEDULE_STEPS

    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    T = cfg.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_SCHEDULE_STEPS:
        raise CheckpointError(f"{path}: 'num_train_timesteps' must be an integer in [1, {MAX_SCHEDULE_STEPS}], "
                              f"got {T!r}")
    betas = cfg.get("trained_betas")
    if betas is not None:
        if not (isinstance(betas, list) and betas and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                          and 0 < b < 1 for b in betas)):
            raise CheckpointError(f"{path}: 'trained_betas' must be a list of numbers in (0, 1), got {str(betas)[:60]!r}")
        return NoiseSchedule(torch.tensor(betas, dtype=torch.float64), name="trained")
    kind = cfg.get("beta_schedule", "linear")
    for key, default in (("beta_start", 1e-4), ("beta_end", 0.02)):
        v = cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise CheckpointError(f"{path}: '{key}' must be a number in (0, 1), got {v!r}")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return NoiseSchedule(torch.linspace(b0, b1, T, dtype=torch.float64), name=f"linear{T}")
    if kind == "scaled_linear":
        return NoiseSchedule(torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float64) ** 2,
                             name=f"scaled_linear{T}")
    if kind == "squaredcos_cap_v2":
        return cosine_schedule(T)
    raise CheckpointError(f"unsupported diffusers beta_schedule {kind!r}")


class DiffusersDenoiser(Denoiser):
    def __init__(self, unet, schedule: NoiseSchedule, prediction_type: str = "epsilon",
                 variance_type: str | None = None):
        sample = unet.config.sample_size
        size = sample if isinstance(sample, int) else (sample[0] if sample and sample[0] == sample[1] else None)
        n_down = len(unet.config.down_block_types)
        super().__init__(schedule, image_size=size, size_multiple=2 ** (n_down - 1), flexible=True)
        self.unet = unet
        self.prediction_type = prediction_type
        # a "learned_range" scheduler on a UNet with a second output half: guided-diffusion's
        # parametrisation (other learned kinds fall back to the fixed-small variance)
        self.learned_variance = (variance_type == "learned_range"
                                 and unet.config.out_channels == 2 * unet.config.in_channels)
        self.register_buffer("_abar", schedule.alphas_cumprod.float(), persistent=False)

    def _eps(self, x_t, t):
        return self._eps_var(x_t, t)[0]

    def _eps_var(self, x_t, t):
        full = self.unet(x_t.to(self.dtype), t).sample.to(x_t.dtype)
        c = x_t.shape[1]
        return self._to_eps(x_t, t, full[:, :c]), (full[:, c:2 * c] if self.learned_variance else None)

    def _to_eps(self, x_t, t, out):
        if self.prediction_type == "epsilon":
            return out
        abar = self._abar.to(x_t.device)[t].to(x_t.dtype)[:, None, None, None]
        if self.prediction_type == "sample":      # out = x0
            return (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
        if self.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1-abar) x0
            return abar.sqrt() * out + (1 - abar).sqrt() * x_t
        raise CheckpointError(f"unsupported prediction_type {self.prediction_type!r}")


def _scheduler_config(root: Path) -> tuple[dict, Path]:
    for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text()), p
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{p}: invalid JSON ({e})") from None
    raise CheckpointError(f"{root}: no scheduler_config.json (looked in {root}/scheduler/ and {root}/)")


#: diffusers' weight file names: the safetensors one, and the pickled one fvit refuses.
SAFE_WEIGHTS, PICKLED_WEIGHTS = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"


def _check_weights(folder: Path) -> None:
    """The UNet folder's weights, before diffusers opens them: a safetensors file that reads (not
    truncated, not a renamed pickle); a folder with only pickled weights is refused, naming them."""
    from fvit.denoise.small_unet import check_safetensors

    safe, pickled = folder / SAFE_WEIGHTS, folder / PICKLED_WEIGHTS
    if safe.is_file():
        check_safetensors(safe)
    elif pickled.is_file():
        raise CheckpointError(
            f"{pickled}: pickled weights (fvit never unpickles); if you trust them, re-save the model once with "
            "save_pretrained(..., safe_serialization=True)")


def load_diffusers(path: str | Path, device=None) -> DiffusersDenoiser:
    from diffusers import UNet2DModel

    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"diffusers denoiser: {root} is not a directory")
    sub = "unet" if (root / "unet").is_dir() else None
    cfg, cfg_path = _scheduler_config(root)  # checked before the (larger) weights are read
    schedule = schedule_from_scheduler_config(cfg, cfg_path)
    _check_weights(root / sub if sub else root)
    try:
        unet = UNet2DModel.from_pretrained(root, subfolder=sub, local_files_only=True)
    except Exception as e:
        text = str(e).strip()
        if "weights_only" in text or "Unpickl" in type(e).__name__:
            raise CheckpointError(
                f"diffusers denoiser {root}: the weights are not a plain state dict (they hold pickled Python "
                "objects, which fvit never unpickles); if you trust them, re-save the model once with "
                "save_pretrained(..., safe_serialization=True)") from None
        first = text.splitlines()[0][:200] if text else type(e).__name__
        raise CheckpointError(f"diffusers denoiser {root}: cannot load a diffusers UNet2DModel ({first})") from None
    den = DiffusersDenoiser(unet, schedule, cfg.get("prediction_type", "epsilon"), cfg.get("variance_type"))
    return den.to(device).eval() if device is not None else den.eval()
