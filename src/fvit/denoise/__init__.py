"""Diffusion denoisers for DDS: noise schedules, sigma -> t* mappings, samplers, backends.

See docs/ARCHITECTURE.md ("denoise") and ../shared/FACTS.md ("DDS"). Model units are [-1, 1]
(x -> 2x - 1); timesteps are 0-based indices (fvit.denoise.schedule).
"""

from fvit.denoise.base import Denoiser, FunctionDenoiser, OracleDenoiser, resize_images
from fvit.denoise.loader import BACKENDS, load_denoiser
from fvit.denoise.samplers import SAMPLERS, Sampler, parse_sampler, predict_x0, step_timesteps
from fvit.denoise.schedule import SCHEDULES, NoiseSchedule, cosine_schedule, get_schedule, linear_schedule
from fvit.denoise.small_unet import SmallDDPM, load_small_ddpm, save_small_ddpm, small_unet_config, train_ddpm
from fvit.denoise.timestep import MAPPINGS, timestep_for_sigma
from fvit.denoise.unet import UNet, UNetConfig, guided_diffusion_256_config

__all__ = [
    "BACKENDS", "Denoiser", "FunctionDenoiser", "OracleDenoiser", "MAPPINGS", "NoiseSchedule", "SAMPLERS", "SCHEDULES",
    "Sampler", "SmallDDPM", "UNet", "UNetConfig", "cosine_schedule", "get_schedule",
    "guided_diffusion_256_config", "linear_schedule", "load_denoiser", "load_small_ddpm",
    "parse_sampler", "predict_x0", "resize_images", "save_small_ddpm", "small_unet_config",
    "step_timesteps", "timestep_for_sigma", "train_ddpm",
]
