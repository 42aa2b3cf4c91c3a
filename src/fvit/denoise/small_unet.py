"""The project's own small DDPM: a compact ADM-style UNet for 16-64 px images, its training loop
and its file format (safetensors weights + JSON config).

Files: `<dir>/model.safetensors` and `<dir>/config.json` with
    {"format": "fvit-small-ddpm", "version": 1, "architecture": UNetConfig fields,
     "schedule": {"name": "linear", "T": ..}, "image_size": int, "data_seed": int|null,
     "train": {...}}
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fvit.denoise.base import Denoiser
from fvit.denoise.guided import check_state_dict
from fvit.denoise.schedule import NoiseSchedule, get_schedule
from fvit.denoise.unet import UNet, UNetConfig
from fvit.errors import CheckpointError, FvitError, InputError
from fvit.utils import seeded_generator

FORMAT = "fvit-small-ddpm"


def small_unet_config(image_size: int = 32, width: int = 32) -> UNetConfig:
    """Compact config: `width` base channels, mult (1, 2, 2) (one more level from 64 px), one res
    block per level, attention at the 8x8-or-smaller level, conv resampling, eps output only."""
    mult = (1, 2, 2) if image_size <= 32 else (1, 2, 2, 2)
    lowest = 2 ** (len(mult) - 1)
    return UNetConfig(model_channels=width, out_channels=3, num_res_blocks=1,
                      attention_ds=(lowest,), channel_mult=mult, num_head_channels=width,
                      resblock_updown=False, norm_groups=8)


class SmallDDPM(Denoiser):
    """eps-prediction DDPM on a small UNet; trained with `train_ddpm`."""

    def __init__(self, image_size: int = 32, config: UNetConfig | None = None,
                 schedule: NoiseSchedule | None = None, data_seed: int | None = None, seed: int = 0):
        cfg = config or small_unet_config(image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet(cfg)
        super().__init__(schedule or get_schedule("linear", 1000), image_size=image_size,
                         size_multiple=unet.size_multiple, flexible=False)
        self.unet = unet
        self.data_seed = data_seed
        self.train_info: dict = {}

    def _eps(self, x_t, t):
        return self.unet(x_t.to(self.dtype), t).to(x_t.dtype)


def train_ddpm(model: SmallDDPM, images: torch.Tensor, steps: int = 2000, batch_size: int = 64,
               lr: float = 2e-3, seed: int = 0, progress: bool = True, ema_decay: float | None = 0.995,
               max_t: int | None = None, warmup: int = 50, flip: bool = True) -> SmallDDPM:
    """Standard DDPM training (Ho et al.): minimise ||eps - eps_theta(sqrt(abar_t) x + sqrt(1-abar_t)
    eps, t)||^2 with t uniform in [0, max_t) (max_t = T by default), AdamW, linear warm-up then
    cosine decay, optional horizontal flips and an EMA of the weights (copied into the model at
    the end). `max_t` < T spends a small CPU budget on the noise levels DDS uses (t* <= 259 for
    sigma <= 0.5). `images` is (N, 3, H, W) in [0, 1] on the model's device or CPU.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"train_ddpm: images must be (N, 3, H, W), got {tuple(images.shape)}")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise InputError("train_ddpm: images must be in [0, 1]")
    device = model.device
    data = images.to(device=device, dtype=torch.float32) * 2 - 1
    T = model.schedule.T if max_t is None else max(1, min(int(max_t), model.schedule.T))
    abar = model.schedule.alphas_cumprod.to(device=device, dtype=torch.float32)
    g = seeded_generator(seed, device)
    opt = torch.optim.AdamW(model.unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    ema = copy.deepcopy(model.unet).requires_grad_(False) if ema_decay else None
    model.train()
    it = range(int(steps))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="train ddpm", leave=False)
    loss_avg = None
    for _ in it:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g, device=device)
        x0 = data[idx]
        if flip:
            mask = torch.rand(batch_size, generator=g, device=device) < 0.5
            x0 = torch.where(mask[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, T, (batch_size,), generator=g, device=device)
        eps = torch.randn(x0.shape, generator=g, device=device)
        a = abar[t][:, None, None, None]
        loss = F.mse_loss(model.unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.unet.parameters()):
                    pe.lerp_(pm, 1 - ema_decay)
        lv = float(loss.detach())
        loss_avg = lv if loss_avg is None else 0.98 * loss_avg + 0.02 * lv
        if progress and hasattr(it, "set_postfix"):
            it.set_postfix(loss=f"{loss_avg:.4f}")
    if ema is not None:
        model.unet.load_state_dict(ema.state_dict())
    model.eval()
    model.train_info = {"steps": int(steps), "batch_size": batch_size, "lr": lr, "seed": seed,
                        "ema_decay": ema_decay, "max_t": T, "n_images": int(images.shape[0]),
                        "final_loss": loss_avg}
    return model


def save_small_ddpm(model: SmallDDPM, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.unet.state_dict().items()},
              str(d / "model.safetensors"))
    betas = model.schedule.betas
    config = {"format": FORMAT, "version": 1, "architecture": model.unet.config.to_dict(),
              "schedule": {"name": "linear" if model.schedule.name.startswith("linear") else "custom",
                           "T": model.schedule.T, "betas": None if model.schedule.name.startswith("linear") else betas.tolist()},
              "image_size": model.image_size, "data_seed": model.data_seed, "train": model.train_info}
    (d / "config.json").write_text(json.dumps(config, indent=2))
    return d


#: Largest image side a small-DDPM config may declare.
MAX_IMAGE_SIZE = 4096
#: Architecture fields that are channel / block counts: integers >= 1 up to this bound.
_ARCH_COUNTS = {"in_channels": 64, "out_channels": 128, "model_channels": 8192, "num_res_blocks": 64,
                "num_heads": 1024, "norm_groups": 8192}


def _int_in(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check_config(cfg, cfg_path: Path) -> None:
    """CheckpointError naming the file and the first missing, mistyped or out-of-range field of a
    small-DDPM config (before anything is built or allocated)."""
    from fvit.denoise.schedule import MAX_SCHEDULE_STEPS

    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, found {type(cfg).__name__}")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a {FORMAT} config (format={cfg.get('format')!r})")
    for key, kind in (("image_size", int), ("architecture", dict), ("schedule", dict)):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: missing key {key!r}")
        if not isinstance(cfg[key], kind) or isinstance(cfg[key], bool):
            raise CheckpointError(f"{cfg_path}: key {key!r} must be a {kind.__name__}, got {cfg[key]!r}")
    if not _int_in(cfg["image_size"], 1, MAX_IMAGE_SIZE):
        raise CheckpointError(f"{cfg_path}: 'image_size' must be an integer in [1, {MAX_IMAGE_SIZE}], "
                              f"got {cfg['image_size']!r}")
    sch = cfg["schedule"]
    betas = sch.get("betas")
    if betas is None:
        if "T" not in sch:
            raise CheckpointError(f"{cfg_path}: missing key 'schedule.T' (or 'schedule.betas')")
        if not _int_in(sch["T"], 1, MAX_SCHEDULE_STEPS):
            raise CheckpointError(f"{cfg_path}: 'schedule.T' must be an integer in [1, {MAX_SCHEDULE_STEPS}], "
                                  f"got {sch['T']!r}")
    elif not (isinstance(betas, list) and 0 < len(betas) <= MAX_SCHEDULE_STEPS
              and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas)):
        raise CheckpointError(f"{cfg_path}: 'schedule.betas' must be a list of 1..{MAX_SCHEDULE_STEPS} numbers "
                              f"in (0, 1), got {str(betas)[:60]!r}")
    arch = cfg["architecture"]
    for key, hi in _ARCH_COUNTS.items():
        if key in arch and not _int_in(arch[key], 1, hi):
            raise CheckpointError(f"{cfg_path}: 'architecture.{key}' must be an integer in [1, {hi}], "
                                  f"got {arch[key]!r}")
    if "num_head_channels" in arch and not (arch["num_head_channels"] == -1
                                            or _int_in(arch["num_head_channels"], 1, 8192)):
        raise CheckpointError(f"{cfg_path}: 'architecture.num_head_channels' must be -1 or an integer in "
                              f"[1, 8192], got {arch['num_head_channels']!r}")
    for key in ("channel_mult", "attention_ds"):
        v = arch.get(key)
        if v is not None and not (isinstance(v, list) and len(v) <= 16 and all(_int_in(x, 1, 1024) for x in v)
                                  and (v or key == "attention_ds")):
            raise CheckpointError(f"{cfg_path}: 'architecture.{key}' must be a list of integers in [1, 1024], "
                                  f"got {v!r}")


def check_safetensors(weights: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} from a safetensors file's header (no tensor is read); CheckpointError naming
    the file when it is a pickle renamed to .safetensors, truncated or otherwise unreadable."""
    from safetensors import safe_open

    with open(weights, "rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{weights}: a pickle / torch.save file, not safetensors (fvit never unpickles); if "
                              "you trust it, convert it once: load it yourself and save its tensors with "
                              "safetensors.torch.save_file")
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError: truncated, bad header, ...
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{weights}: not a readable safetensors file ({text})") from None


def load_small_ddpm(path: str | Path, device=None) -> SmallDDPM:
    from safetensors.torch import load_file

    p = Path(path)
    if p.suffix == ".safetensors":  # a weights file: config next to it (same stem, or config.json)
        weights = p
        cfg_path = p.with_suffix(".json") if p.with_suffix(".json").is_file() else p.with_name("config.json")
    else:
        weights, cfg_path = p / "model.safetensors", p / "config.json"
    for f in (weights, cfg_path):
        if not f.is_file():
            raise CheckpointError(f"small DDPM: {f} not found (expected model.safetensors + config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
    _check_config(cfg, cfg_path)
    shapes = check_safetensors(weights)
    sch = cfg["schedule"]
    try:
        schedule = (get_schedule("linear", int(sch["T"])) if sch.get("betas") is None
                    else NoiseSchedule(torch.tensor(sch["betas"], dtype=torch.float64)))
    except FvitError as e:
        raise CheckpointError(f"{cfg_path}: bad 'schedule' ({e})") from None
    try:
        arch = UNetConfig.from_dict(cfg["architecture"])
        with torch.device("meta"):  # the architecture's shapes, nothing allocated
            expected = UNet(arch)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:  # missing / unknown / inconsistent fields
        raise CheckpointError(f"{cfg_path}: bad 'architecture' ({e})") from None
    check_state_dict({k: torch.empty(v, device="meta") for k, v in shapes.items()}, expected, weights)
    model = SmallDDPM(int(cfg["image_size"]), arch, schedule, data_seed=cfg.get("data_seed"))
    state = load_file(str(weights))
    check_state_dict(state, model.unet, weights)
    model.unet.load_state_dict(state)
    model.train_info = cfg.get("train", {})
    return model.to(device).eval() if device is not None else model.eval()
