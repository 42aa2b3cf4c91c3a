"""The demo world's two models, trained by the project on first use and cached.

* classifier: a timm ViT (`fvit.models.tiny_vit`) trained on the world's train split
  (`fvit.demo.training.train_classifier`);
* denoiser: the project's small DDPM (`fvit.denoise.SmallDDPM` / `train_ddpm`) on the same images.

Cache: `$FVIT_CACHE/<key>/` (default `~/.cache/fvit/<key>/`, or the platformdirs user cache when
platformdirs is installed), where `<key>` = `world-<preset>-<hash of world config, both recipes and
the seed>`. Files:

    classifier.safetensors   ExplainableViT state dict
    classifier.json          architecture, recipe, world config, data seed, held-out accuracy, time
    denoiser/model.safetensors + denoiser/config.json   fvit.denoise's small-DDPM format
    denoiser.json            recipe, data seed, held-out denoising MSE at the demo sigma, time

Each part is written into a temporary folder and renamed into place, so an interrupted run never
leaves a half-written model; a part whose files are all present is loaded, a missing one is trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fvit.data.world import WorldDataset, make_world
from fvit.demo.settings import FRONTIER_SIGMAS, DemoSettings
from fvit.demo.training import accuracy, train_classifier
from fvit.errors import CheckpointError

FORMAT = "fvit-demo-world"
EVAL_FOR_TRAINING_CHECKS = 1024  # held-out images used for the accuracy / MSE recorded in the JSON


def cache_root() -> Path:
    """`$FVIT_CACHE`, else the platformdirs user cache (if installed), else `~/.cache/fvit`."""
    env = os.environ.get("FVIT_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "fvit"
    return Path(platformdirs.user_cache_dir("fvit"))


def cache_dir(settings: DemoSettings) -> Path:
    return cache_root() / settings.cache_key()


@dataclass
class WorldModels:
    classifier: torch.nn.Module
    denoiser: torch.nn.Module
    classifier_info: dict
    denoiser_info: dict
    directory: Path
    trained: list[str] = field(default_factory=list)  # parts trained by this call (else loaded)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of this call per part


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _atomic_write(directory: Path, files: dict[str, object]) -> None:
    """Write {name: writer(tmp_path)} into `directory` via a temporary sibling and a rename."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, writer in files.items():
        writer(tmp / name)
    for name in files:
        target = directory / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)


def _write_json(payload: dict):
    return lambda path: path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the demo cache entry ({e}); retrain it (retrain=True)", params=("retrain",)) from None


def _device(device) -> torch.device:
    from fvit.utils import resolve_device

    return resolve_device(device)


def train_split(settings: DemoSettings, n: int) -> WorldDataset:
    return make_world("train", n, seed=settings.seed, config=settings.world)


def eval_split(settings: DemoSettings, n: int) -> WorldDataset:
    return make_world("eval", n, seed=settings.eval_seed, config=settings.world)


# ------------------------------------------------------------------------------------------------
# classifier
# ------------------------------------------------------------------------------------------------


def build_classifier(settings: DemoSettings):
    from fvit.models import tiny_vit

    r = settings.classifier
    return tiny_vit(num_classes=settings.world.num_classes, img_size=settings.world.img_size, patch_size=r.patch_size,
                    embed_dim=r.embed_dim, depth=r.depth, num_heads=r.num_heads, seed=settings.seed,
                    mlp_ratio=r.mlp_ratio)


def _classifier_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "classifier.safetensors", directory / "classifier.json"


def load_classifier(settings: DemoSettings, directory: Path, device) -> tuple[torch.nn.Module, dict]:
    from safetensors.torch import load_file

    weights, meta = _classifier_paths(directory)
    info = _read_json(meta)
    model = build_classifier(settings)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # truncated / not safetensors (SafetensorError) / wrong shapes
        e = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{weights}: does not fit the demo classifier ({e}); retrain it (retrain=True)", params=("retrain",)) from None
    return model.to(device).eval(), info


def fit_classifier(settings: DemoSettings, directory: Path, device, progress: bool) -> tuple[torch.nn.Module, dict]:
    from safetensors.torch import save_file

    r = settings.classifier
    t0 = time.perf_counter()
    train = train_split(settings, r.train_images)
    held_out = eval_split(settings, EVAL_FOR_TRAINING_CHECKS)
    t_data = time.perf_counter() - t0
    model = build_classifier(settings).to(device)
    log = train_classifier(model, train.images, train.labels, r, seed=settings.seed, progress=progress)
    t_train = time.perf_counter() - t0 - t_data
    clean_acc = accuracy(model, held_out.images, held_out.labels)
    info = {
        "format": FORMAT, "part": "classifier", "architecture": "timm VisionTransformer via fvit.models.tiny_vit",
        "num_classes": settings.world.num_classes, "class_names": train.class_names, "img_size": settings.world.img_size,
        "recipe": dataclasses.asdict(r), "world": settings.world.to_dict(), "data_seed": settings.seed,
        "train_images": len(train), "held_out": {"split": "eval", "seed": settings.eval_seed, "n": len(held_out)},
        "clean_accuracy": clean_acc, "final_train_loss": log["final_loss"],
        "seconds": {"data": t_data, "train": t_train}, "device": str(device), "torch_threads": torch.get_num_threads(),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights, meta = _classifier_paths(directory)
    _atomic_write(directory, {weights.name: lambda p: save_file(state, str(p)), meta.name: _write_json(info)})
    return model.eval(), info


# ------------------------------------------------------------------------------------------------
# denoiser
# ------------------------------------------------------------------------------------------------


def build_denoiser(settings: DemoSettings):
    from fvit.denoise import SmallDDPM, small_unet_config

    size = settings.world.img_size
    cfg = small_unet_config(size, **settings.denoiser.unet)
    return SmallDDPM(size, cfg, data_seed=settings.seed, seed=settings.seed)


@torch.inference_mode()
def denoising_quality(denoiser, classifier, images: torch.Tensor, labels: torch.Tensor, sigma: float,
                      seed: int) -> dict:
    """Held-out one-shot denoising at `sigma`: MSE of the denoised vs. the noisy images, and the
    classifier's accuracy on the noisy and on the denoised images."""
    from fvit.dds import DDS

    device = next(denoiser.parameters()).device
    x = images.to(device)
    dds = DDS(denoiser, sigma=sigma, samples=1, seed=seed, max_batch=256)
    g = torch.Generator(device=device).manual_seed(seed)
    denoised = dds.denoise(x, generator=g)[:, 0]
    g = torch.Generator(device=device).manual_seed(seed)
    noisy = (x + sigma * torch.randn(x.shape, generator=g, device=device)).clamp(0, 1)
    out = {"sigma": sigma, "t_star": int(dds.t_star) if getattr(dds, "t_star", None) is not None else None,
           "n": len(labels), "mse_denoised": float(F.mse_loss(denoised, x)),
           "mse_noisy": float(F.mse_loss(noisy, x))}
    if classifier is not None:
        out["accuracy_noisy"] = accuracy(classifier, noisy, labels)
        out["accuracy_denoised"] = accuracy(classifier, denoised, labels)
    return out


def _denoiser_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "denoiser", directory / "denoiser.json"


def load_denoiser(directory: Path, device) -> tuple[torch.nn.Module, dict]:
    from fvit.denoise import load_small_ddpm

    weights, meta = _denoiser_paths(directory)
    info = _read_json(meta)
    return load_small_ddpm(weights, device=device), info


def fit_denoiser(settings: DemoSettings, directory: Path, device, classifier, progress: bool):
    from fvit.denoise import save_small_ddpm, train_ddpm

    r = settings.denoiser
    t0 = time.perf_counter()
    train = train_split(settings, r.train_images)
    model = build_denoiser(settings).to(device)
    t_data = time.perf_counter() - t0
    train_ddpm(model, train.images, steps=r.steps, batch_size=r.batch_size, lr=r.lr, seed=settings.seed,
               progress=progress, max_t=r.max_t)
    t_train = time.perf_counter() - t0 - t_data
    held_out = eval_split(settings, EVAL_FOR_TRAINING_CHECKS // 2)
    quality = denoising_quality(model, classifier, held_out.images, held_out.labels,
                                settings.experiment.sigma, seed=settings.seed)
    per_sigma = [denoising_quality(model, classifier, held_out.images, held_out.labels, s, seed=settings.seed)
                 for s in FRONTIER_SIGMAS]
    info = {
        "format": FORMAT, "part": "denoiser", "architecture": "fvit.denoise.SmallDDPM (small UNet, eps)",
        "parameters": sum(p.numel() for p in model.parameters()), "recipe": dataclasses.asdict(r),
        "world": settings.world.to_dict(), "data_seed": settings.seed, "train_images": len(train),
        "train_info": getattr(model, "train_info", {}), "held_out": quality,
        "held_out_per_sigma": per_sigma,
        "seconds": {"data": t_data, "train": t_train}, "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    weights, meta = _denoiser_paths(directory)
    _atomic_write(directory, {weights.name: lambda p: save_small_ddpm(model, p), meta.name: _write_json(info)})
    return model.eval(), info


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def get_world_models(settings: DemoSettings, *, device=None, retrain: bool = False,
                     progress: bool = True) -> WorldModels:
    """Load the demo's classifier and denoiser from the cache, training whatever is missing."""
    dev = _device(device)
    directory = cache_dir(settings)
    if retrain and directory.exists():
        shutil.rmtree(directory)
    trained, seconds = [], {}
    if not all(p.exists() for p in (*_classifier_paths(directory), *_denoiser_paths(directory))):
        # something will be trained: the cache must take the result (checked before training)
        from fvit.utils import check_output_dir

        check_output_dir(directory, "demo model cache (FVIT_CACHE)")

    t0 = time.perf_counter()
    if all(p.exists() for p in _classifier_paths(directory)):
        classifier, c_info = load_classifier(settings, directory, dev)
    else:
        classifier, c_info = fit_classifier(settings, directory, dev, progress)
        trained.append("classifier")
    seconds["classifier"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if all(p.exists() for p in _denoiser_paths(directory)):
        denoiser, d_info = load_denoiser(directory, dev)
    else:
        denoiser, d_info = fit_denoiser(settings, directory, dev, classifier, progress)
        trained.append("denoiser")
    seconds["denoiser"] = time.perf_counter() - t0
    return WorldModels(classifier, denoiser, c_info, d_info, directory, trained, seconds)


__all__ = ["WorldModels", "build_classifier", "build_denoiser", "cache_dir", "cache_root",
           "denoising_quality", "get_world_models"]
