"""The demo's settings: the world, the two training recipes and the experiment, as frozen dataclasses.

Two presets: `full` (what `fvit demo` runs) and `quick` (`fvit demo --quick`, sized for CI). The
training part (world + recipes + seed) is hashed into the cache key, so the presets never share a
cache entry and any change to a recipe retrains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from fvit.data.world import WorldConfig
from fvit.errors import FvitError
from fvit.registry import Registry

ALL_METHODS = ("raw_attention", "rollout", "gradcam", "lrp", "transformer_attribution",
               "attribution_rollout")
FRONTIER_SIGMAS = (8 / 255, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
"""The smoothing frontier's default sigmas (pixel units): the papers' 8/255 up to 1/2."""


@dataclass(frozen=True)
class ClassifierRecipe:
    """A timm ViT (via fvit.models.tiny_vit) trained from scratch on the world's train split.

    Augmentation: random flips and 90-degree rotations (the world's distribution is invariant to
    them) and, on `noise_prob` of each batch, Gaussian noise of std `noise_sigma` (the DDS sigma),
    clipped to [0, 1], as denoised-smoothing setups do so that the classifier stays usable on noisy
    and denoised images.
    """

    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 2.0
    train_images: int = 24576
    steps: int = 1400
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 80
    label_smoothing: float = 0.1
    noise_sigma: float = 8 / 255
    noise_prob: float = 0.5


@dataclass(frozen=True)
class DenoiserRecipe:
    """The project's small DDPM (fvit.denoise.small_unet) trained on the same train images."""

    steps: int = 400
    batch_size: int = 48
    lr: float = 2e-3
    train_images: int = 16384
    max_t: int | None = 300  # train t in [0, max_t): covers sigma <= 0.6 (t* = 15 at 8/255, 259 at 1/2:
    # the smoothing frontier's largest sigma)
    unet: dict = field(default_factory=dict)  # keyword arguments for the small UNet (its defaults)


@dataclass(frozen=True)
class ExperimentSettings:
    eval_images: int = 64
    methods: tuple[str, ...] = ALL_METHODS
    sigma: float = 8 / 255  # DDS noise std in [0, 1] pixel units
    samples: int = 6  # m noisy copies per image
    fuse: str = "max-drop10"
    attack: str = "pgd"
    eps: float = 8 / 255  # the demo's attack radius (l_inf)
    attack_steps: int = 10
    attack_step_size: str | float = "scaled"  # eps/4: 2/255 at eps 8/255 (the papers), eps/4 in sweeps
    radii: tuple[float, ...] = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
    sweep_images: int = 24  # images per radius in the AUC-vs-radius sweep (and the ablation)
    sweep_methods: tuple[str, ...] = ("transformer_attribution", "rollout")
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    topk: int = 10  # top-k overlap, in patches
    ablation_method: str = "transformer_attribution"
    adaptive_images: int = 12  # images for the adaptive (through-DDS) attack
    certify_images: int = 8
    certify_n0: int = 16  # selection samples (two-stage protocol)
    certify_samples: int = 128  # estimation samples
    certify_k: int = 10
    certify_beta: float = 0.8
    certify_alpha: float = 0.001
    tightness_images: int = 8  # of the certified images, attacked at each factor
    tightness_factors: tuple[float, ...] = (0.9, 1.0, 1.5, 2.0)
    tightness_steps: int = 3
    tightness_eot: int = 1
    tightness_check_samples: int = 32  # fresh samples judging each attack
    grid_images: int = 4
    grid_methods: tuple[str, ...] = ("transformer_attribution", "attribution_rollout", "rollout")
    # explanation attacks (fvit.attacks.explanation), every method ± DDS (adaptive), vs classifier PGD:
    # the strong adversary (APGD schedule; the suite of objectives; per image the worst kept map) on
    # enough images for confidence intervals; `fvit bench explanation-attack` runs more radii / restarts.
    expl_images: int = 32
    expl_radii: tuple[float, ...] = (8 / 255,)
    expl_objectives: tuple[str, ...] = ("topk", "soft-topk")  # + topk warm-started from PGD; the suite of the three
    expl_steps: int = 10
    expl_schedule: str = "apgd"
    expl_restarts: int = 0
    expl_eot: int = 1  # DDS draws per attack step
    expl_attack_samples: int = 1  # DDS samples per draw inside the adaptive attack
    expl_samples: int = 2  # DDS samples when explaining (clean, PGD- and explanation-attacked images)
    # the smoothing frontier (fvit.bench.frontier): sigma x fusion for the attention methods and GradCAM
    frontier_images: int = 16
    frontier_sigmas: tuple[float, ...] = (8 / 255, 1 / 8, 1 / 4)
    frontier_fusions: tuple[str, ...] = ("max-drop10", "mean")
    frontier_methods: tuple[str, ...] = ("raw_attention", "rollout", "gradcam")
    frontier_objectives: tuple[str, ...] = ("soft-topk",)
    frontier_steps: int = 5
    frontier_pgd_steps: int = 5
    frontier_cert_samples: int = 64
    frontier_cert_radii: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25)


@dataclass(frozen=True)
class DemoSettings:
    name: str
    seed: int = 0
    world: WorldConfig = WorldConfig()
    classifier: ClassifierRecipe = ClassifierRecipe()
    denoiser: DenoiserRecipe = DenoiserRecipe()
    experiment: ExperimentSettings = ExperimentSettings()
    eval_seed: int = 0  # seed of the held-out eval split (its stream differs from train's anyway)

    def training_dict(self) -> dict:
        """Everything that determines the trained weights (hashed into the cache key)."""
        return {
            "world": self.world.to_dict(),
            "world_digest": self.world.digest(),
            "classifier": dataclasses.asdict(self.classifier),
            "denoiser": dataclasses.asdict(self.denoiser),
            "seed": self.seed,
        }

    def cache_key(self) -> str:
        payload = json.dumps(self.training_dict(), sort_keys=True)
        return f"world-{self.name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict:
        return {"name": self.name, "cache_key": self.cache_key(), **self.training_dict(),
                "experiment": dataclasses.asdict(self.experiment), "eval_seed": self.eval_seed}

    def with_seed(self, seed: int) -> "DemoSettings":
        return dataclasses.replace(self, seed=seed, eval_seed=seed)


PRESETS: Registry = Registry("demo preset")
PRESETS.register("full", DemoSettings(name="full"))
PRESETS.register("quick", DemoSettings(
    name="quick",
    classifier=ClassifierRecipe(train_images=8192, steps=300, warmup_steps=30),
    denoiser=DenoiserRecipe(steps=150, batch_size=32, train_images=4096),
    experiment=ExperimentSettings(
        eval_images=24, samples=4, radii=(0.0, 4 / 255, 8 / 255), sweep_images=24,
        sweep_methods=("transformer_attribution",), adaptive_images=8, certify_images=2, certify_n0=8,
        certify_samples=32, tightness_images=1, tightness_steps=3, tightness_check_samples=16, grid_images=2,
        grid_methods=("transformer_attribution",), expl_images=8, expl_steps=10,
        frontier_images=4, frontier_sigmas=(8 / 255, 1 / 4), frontier_fusions=("max-drop10", "mean"),
        frontier_methods=("raw_attention",), frontier_steps=2, frontier_pgd_steps=2, frontier_cert_samples=16,
    ),
))


def get_settings(preset: str = "full", seed: int = 0) -> DemoSettings:
    settings = PRESETS.get(preset)
    if seed < 0:
        raise FvitError(f"seed must be >= 0, got {seed}", params=("seed",))
    return settings.with_seed(seed) if seed != settings.seed else settings


__all__ = ["ALL_METHODS", "ClassifierRecipe", "DemoSettings", "DenoiserRecipe",
           "ExperimentSettings", "PRESETS", "get_settings"]
