"""The embedded benchmark world: generated images with exact foreground masks and class labels.

No ImageNet, no downloads: every image is drawn by vectorised numpy code from a seed, so the whole
FViT experiment (classify, explain, attack, smooth, segment, certify) can run on a laptop CPU.

What an image is
----------------
* One **object** of one of the shape classes (default six, `CLASS_NAMES`; eight are drawable,
  `SHAPE_NAMES`), at a random centre, size and rotation, fully inside the frame. The default classes
  are the silhouettes that stay distinct under rotation at 32 px (square / star are drawable but
  easily confused with disc / triangle and cross at that size).
* A **cluttered background**: smooth colour noise (two octaves of bilinearly upsampled random
  fields), thin distractor strokes (line segments about 1 px wide) and soft Gaussian colour blobs.
  None of these is an object class: strokes are much thinner than any shape part and blobs have no
  edge, so a classifier has to look at the object to name it.
* The object's appearance is class-biased but overlapping: hue = class hue + N(0, hue_spread)
  (classes evenly spaced on the hue circle), and the fill texture (flat, stripes or speckle) is the
  class's own with probability `texture_bias`, else uniform. With the defaults, classifiers given
  the exact mask and the object's mean colour and colour spread get 62% (logistic regression) to
  68% (random forest) on 6 classes (chance 17%), while the demo ViT reaches ~94%: shape is needed
  for the rest (tests/test_world.py checks the linear baseline stays below 80%). The
  background is drawn independently of the class: it carries no class information, so evidence
  for the class is only on the object pixels and explanation maps can be scored against the mask.
  Object and background have opposite brightness ranges (randomly bright-on-dark or
  dark-on-bright) so the object is always visible.

The mask is exact
-----------------
There is no anti-aliasing. A pixel belongs to the object iff its centre lies inside the shape (the
shape's inside test evaluated at pixel centres), and the object is drawn by compositing its fill
into the background **with that mask itself**: `image = where(mask, fill, background)`. So the
object pixels are exactly the pixels where `mask` is True. Distractors are drawn before the object
(the object occludes them), so they never change the mask.

Determinism
-----------
Images are made in chunks of `config.chunk` images (40 per class); chunk `c` of split `s` with seed `seed` is drawn from
`numpy.random.SeedSequence([seed, split_code(s), c])`, with separate child streams for the layout,
the object fill and the background. Hence (a) the same `(seed, split, n)` always gives the same
images, (b) the first `n` images of a larger set equal the set of size `n`, (c) the train and eval
splits never share a stream, and (d) the object drawing does not depend on the background (a plain
background draws the very same objects). Labels are exactly balanced within each chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fvit.errors import FvitError
from fvit.registry import Registry

# --------------------------------------------------------------------------------------------------
# Shapes: inside tests in the object frame (u, v), where the shape's circumradius is 1.
# --------------------------------------------------------------------------------------------------

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
SHAPES: Registry[ShapeFn] = Registry("world shape")


@SHAPES.register("disc")
def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


@SHAPES.register("square")
def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    half = 1.0 / np.sqrt(2.0)
    return np.maximum(np.abs(u), np.abs(v)) <= half


@SHAPES.register("triangle")
def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # equilateral: three half-planes at 120 degrees, inradius 0.5 (circumradius 1)
    inside = np.ones(u.shape, dtype=bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
    return inside


@SHAPES.register("ring")
def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


@SHAPES.register("cross")
def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


@SHAPES.register("star")
def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # five-pointed star: radius between 0.42 (valleys) and 1 (tips) as a function of angle
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    radius = 0.42 + 0.58 * ((np.cos(5 * phi) + 1.0) / 2.0) ** 2
    return r <= radius


@SHAPES.register("bar")
def _bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.97) & (np.abs(v) <= 0.26)


@SHAPES.register("crescent")
def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.78**2)


SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES.names())
CLASS_NAMES: tuple[str, ...] = ("disc", "triangle", "ring", "cross", "bar", "crescent")  # default
NUM_CLASSES = len(CLASS_NAMES)
CHUNK_PER_CLASS = 40  # a chunk holds this many images of each class (exact balance per chunk)
SPLITS = {"train": 0, "eval": 1}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines the world's distribution (hashed into cache keys)."""

    img_size: int = 32
    classes: tuple[str, ...] = CLASS_NAMES
    scale: tuple[float, float] = (0.26, 0.42)  # object circumradius as a fraction of img_size
    max_angle: float = 180.0  # rotation uniform in [-max_angle, max_angle] degrees
    hue_spread: float = 0.1  # std of the object hue around its class hue (hue in [0, 1))
    texture_bias: float = 0.5  # probability of the class's own texture (else uniform over all)
    strokes: tuple[int, int] = (1, 4)  # distractor strokes per image, inclusive range
    stroke_width: float = 0.55  # half-width in pixels
    blobs: tuple[int, int] = (1, 3)  # soft distractor blobs per image, inclusive range
    pixel_noise: float = 0.02  # i.i.d. Gaussian noise added to the background only
    plain_background: float | None = None  # a constant background instead of clutter (tests)

    def __post_init__(self) -> None:
        if self.img_size < 8:
            raise FvitError(f"world img_size must be >= 8, got {self.img_size}")
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 0.5:
            raise FvitError(f"world scale must satisfy 0.05 <= lo <= hi <= 0.5, got {self.scale}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise FvitError(f"world classes must be >= 2 distinct shapes, got {self.classes}")
        for name in self.classes:
            SHAPES.resolve(name)  # raises UnknownNameError listing the drawable shapes
        if self.plain_background is not None and not 0.0 <= self.plain_background <= 1.0:
            raise FvitError(f"plain_background must be in [0, 1], got {self.plain_background}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def chunk(self) -> int:
        return CHUNK_PER_CLASS * self.num_classes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short stable hash of the config (and the class list) for cache keys."""
        payload = json.dumps({"config": self.to_dict(), "shapes": SHAPE_NAMES}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Vectorised drawing pieces (one chunk of N images at a time)
# --------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    labels: np.ndarray  # (N,) int
    centre: np.ndarray  # (N, 2) pixels (x, y)
    radius: np.ndarray  # (N,) pixels
    angle: np.ndarray  # (N,) radians


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (1, H, W)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return x[None], y[None]


def sample_layout(rng: np.random.Generator, n: int, cfg: WorldConfig) -> Layout:
    labels = np.resize(np.arange(cfg.num_classes), n)
    rng.shuffle(labels)
    s = cfg.img_size
    radius = rng.uniform(cfg.scale[0], cfg.scale[1], n) * s
    centre = radius[:, None] + rng.uniform(0.0, 1.0, (n, 2)) * (s - 2 * radius[:, None])
    angle = np.deg2rad(rng.uniform(-cfg.max_angle, cfg.max_angle, n))
    return Layout(labels, centre.astype(np.float32), radius.astype(np.float32), angle.astype(np.float32))


def object_frame(layout: Layout, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in each object's own frame (rotated, scaled to circumradius 1): (N, H, W)."""
    x, y = _pixel_grid(size)
    dx = x - layout.centre[:, 0, None, None]
    dy = y - layout.centre[:, 1, None, None]
    cos, sin = np.cos(layout.angle)[:, None, None], np.sin(layout.angle)[:, None, None]
    r = layout.radius[:, None, None]
    return (dx * cos + dy * sin) / r, (-dx * sin + dy * cos) / r


def object_masks(layout: Layout, size: int, classes: tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    """Exact object masks (N, H, W) bool: pixel centre inside the shape; no anti-aliasing.
    `layout.labels` index `classes`."""
    u, v = object_frame(layout, size)
    masks = np.zeros(u.shape, dtype=bool)
    for k, name in enumerate(classes):  # a loop over classes, not images
        idx = layout.labels == k
        if idx.any():
            masks[idx] = SHAPES.get(name)(u[idx], v[idx])
    return masks


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs (...,), output (..., 3) in [0, 1]."""
    k = (np.stack([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def object_fill(
    rng: np.random.Generator, layout: Layout, bright: np.ndarray, cfg: WorldConfig
) -> np.ndarray:
    """The object's fill colour field (N, 3, H, W): class-biased hue, class-agnostic texture."""
    n, size = len(layout.labels), cfg.img_size
    hue = (layout.labels / cfg.num_classes + rng.normal(0.0, cfg.hue_spread, n)) % 1.0
    sat = rng.uniform(0.45, 1.0, n)
    val = np.where(bright, rng.uniform(0.7, 0.95, n), rng.uniform(0.25, 0.45, n))
    base = _hsv_to_rgb(hue, sat, val)  # (N, 3)

    u, v = object_frame(layout, size)
    # texture: 0 flat, 1 stripes, 2 speckle; each class prefers one (class index mod 3)
    own = rng.uniform(size=n) < cfg.texture_bias
    kind = np.where(own, layout.labels % 3, rng.integers(0, 3, n))
    freq = rng.uniform(1.5, 3.0, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    stripes = 0.12 * np.sin(np.pi * freq * u + phase)
    speckle = rng.normal(0.0, 0.05, (n, size, size))
    texture = np.where((kind == 1)[:, None, None], stripes, 0.0) + np.where(
        (kind == 2)[:, None, None], speckle, 0.0
    )
    fill = base[:, :, None, None] * (1.0 + texture[:, None])
    return np.clip(fill, 0.02, 0.98)  # never 0 or 1: distinct from any plain background extreme


def _smooth_field(rng: np.random.Generator, n: int, cells: int, size: int) -> np.ndarray:
    """Random (N, 3, cells, cells) field bilinearly upsampled to (N, 3, size, size), values [0,1]."""
    coarse = torch.from_numpy(rng.uniform(0.0, 1.0, (n, 3, cells, cells)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine.numpy()


def _segment_distance(x, y, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance from pixel centres to segments p0-p1 (N, 2) each: (N, H, W)."""
    d = p1 - p0
    length2 = np.maximum((d**2).sum(1), 1e-6)[:, None, None]
    px, py = x - p0[:, 0, None, None], y - p0[:, 1, None, None]
    t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / length2, 0.0, 1.0)
    ex, ey = px - t * d[:, 0, None, None], py - t * d[:, 1, None, None]
    return np.sqrt(ex * ex + ey * ey)


def background(rng: np.random.Generator, bright_object: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """Cluttered background (N, 3, H, W) in a brightness range opposite to the object's."""
    n, size = len(bright_object), cfg.img_size
    if cfg.plain_background is not None:
        return np.full((n, 3, size, size), cfg.plain_background, dtype=np.float32)

    field = 0.65 * _smooth_field(rng, n, 4, size) + 0.35 * _smooth_field(rng, n, 9, size)
    # opposite brightness band: dark (0.05..0.45) behind bright objects and vice versa
    lo = np.where(bright_object, 0.05, 0.55).astype(np.float32)[:, None, None, None]
    img = lo + np.float32(0.4) * field
    x, y = _pixel_grid(size)

    n_strokes = rng.integers(cfg.strokes[0], cfg.strokes[1] + 1, n)
    for j in range(cfg.strokes[1]):  # a loop over stroke slots, not images
        p0 = rng.uniform(0, size, (n, 2)).astype(np.float32)
        p1 = p0 + rng.normal(0, size / 3, (n, 2)).astype(np.float32)
        colour = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)
        on = (_segment_distance(x, y, p0, p1) <= cfg.stroke_width) & (j < n_strokes)[:, None, None]
        img = np.where(on[:, None], colour[:, :, None, None], img)

    n_blobs = rng.integers(cfg.blobs[0], cfg.blobs[1] + 1, n)
    for j in range(cfg.blobs[1]):
        c = rng.uniform(0, size, (n, 2)).astype(np.float32)
        sd = (rng.uniform(0.06, 0.12, n) * size).astype(np.float32)
        d2 = (x - c[:, 0, None, None]) ** 2 + (y - c[:, 1, None, None]) ** 2
        alpha = 0.6 * np.exp(-d2 / (2 * sd[:, None, None] ** 2)) * (j < n_blobs)[:, None, None]
        alpha = alpha.astype(np.float32)
        colour = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)
        img = img * (1 - alpha[:, None]) + colour[:, :, None, None] * alpha[:, None]

    img = img + np.float32(cfg.pixel_noise) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_chunk(seed: int, split: str, chunk: int, cfg: WorldConfig):
    """Draw chunk `chunk` (cfg.chunk images) of a split: (images (N,3,H,W) f32, labels, masks)."""
    layout_ss, object_ss, bg_ss = np.random.SeedSequence([seed, SPLITS[split], chunk]).spawn(3)
    layout = sample_layout(np.random.default_rng(layout_ss), cfg.chunk, cfg)
    masks = object_masks(layout, cfg.img_size, cfg.classes)
    object_rng = np.random.default_rng(object_ss)
    bright = object_rng.uniform(size=cfg.chunk) < 0.5
    fill = object_fill(object_rng, layout, bright, cfg)
    bg = background(np.random.default_rng(bg_ss), bright, cfg)
    images = np.where(masks[:, None], fill, bg).astype(np.float32)  # composite WITH the mask
    return images, layout.labels.astype(np.int64), masks


# --------------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------------


DEFAULT_SIZE = 1024  # images per split when opened by spec string (`world`, `world:eval`)


def _parse_variant(variant: str) -> tuple[str, int | None, int | None]:
    """'eval' | 'train' | 'eval,N' | 'eval,N,SEED' -> (split, n, seed)."""
    parts = [p.strip() for p in str(variant).split(",")] if variant else ["eval"]
    if not 1 <= len(parts) <= 3 or parts[0] not in SPLITS:
        raise FvitError(f"world variant must be SPLIT[,N[,SEED]] with SPLIT in {sorted(SPLITS)}, "
                        f"got {variant!r}")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise FvitError(f"world variant {variant!r}: N and SEED must be integers") from None
    numbers += [None] * (2 - len(numbers))
    return parts[0], numbers[0], numbers[1]


def _square_size(size) -> int | None:
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise FvitError(f"the world draws square images; got size {tuple(size)}")
        size = size[0]
    return int(size)


class WorldDataset(Dataset):
    """The generated world as a torch Dataset of dicts (image, label, mask, id).

    `WorldDataset(variant="eval", size=None, n=1024, seed=0, config=None)` draws the images;
    `variant` is `SPLIT[,N[,SEED]]` (what `open_dataset("world:eval,2048")` passes) and `size`, when
    given, draws at that resolution (the drawing and its masks are exact at any size).
    Fast tensor access for training: `.images` (N, 3, H, W) float32 in [0, 1], `.labels` (N,)
    long, `.masks` (N, H, W) bool; `.class_names`, `.ids`.
    """

    def __init__(self, variant: str = "eval", size=None, *, n: int | None = None,
                 seed: int | None = None, config: WorldConfig | None = None):
        split, v_n, v_seed = _parse_variant(variant)
        n = n if n is not None else (v_n if v_n is not None else DEFAULT_SIZE)
        seed = seed if seed is not None else (v_seed if v_seed is not None else 0)
        if n < 1:
            raise FvitError(f"world size must be >= 1, got {n}")
        cfg = config or WorldConfig()
        img_size = _square_size(size)
        if img_size is not None and img_size != cfg.img_size:
            cfg = dataclasses.replace(cfg, img_size=img_size)
        chunks = [render_chunk(seed, split, c, cfg) for c in range(-(-n // cfg.chunk))]
        images, labels, masks = (np.concatenate(parts)[:n] for parts in zip(*chunks))
        self._set(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks),
                  split=split, seed=seed, config=cfg)

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, *,
                     split: str, seed: int, config: WorldConfig) -> "WorldDataset":
        ds = cls.__new__(cls)
        ds._set(images, labels, masks, split=split, seed=seed, config=config)
        return ds

    def _set(self, images, labels, masks, *, split, seed, config) -> None:
        self.images, self.labels, self.masks = images, labels, masks
        self.split, self.seed, self.config = split, seed, config
        self.class_names = list(config.classes)
        self.num_classes = config.num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"world-{self.split} has {len(self)} images; index {i} is out of range")
        i = i % len(self)
        return {
            "image": self.images[i],
            "label": int(self.labels[i]),
            "mask": self.masks[i],
            "id": self.item_id(i),
        }

    def item_id(self, i: int) -> str:
        return f"world-{self.split}-{i:06d}"

    @property
    def ids(self) -> list[str]:
        return [self.item_id(i) for i in range(len(self))]

    def subset(self, n: int) -> "WorldDataset":
        """The first n images (identical to generating n images from the same seed)."""
        return WorldDataset.from_tensors(self.images[:n], self.labels[:n], self.masks[:n],
                                         split=self.split, seed=self.seed, config=self.config)

    def describe(self) -> dict:
        return {
            "split": self.split,
            "size": len(self),
            "seed": self.seed,
            "img_size": self.config.img_size,
            "classes": self.class_names,
            "config": self.config.to_dict(),
            "config_digest": self.config.digest(),
            "mean_mask_fraction": float(self.masks.float().mean()),
        }


def make_world(split: str = "eval", n: int = DEFAULT_SIZE, *, seed: int = 0,
               config: WorldConfig | None = None) -> WorldDataset:
    """Generate `n` images of the `split` ('train' or 'eval') world from `seed`."""
    if split not in SPLITS:
        raise FvitError(f"world split must be one of {sorted(SPLITS)}, got {split!r}")
    return WorldDataset(split, n=n, seed=seed, config=config)


__all__ = ["CLASS_NAMES", "SHAPE_NAMES", "DEFAULT_SIZE", "NUM_CLASSES", "SHAPES", "WorldConfig", "WorldDataset", "make_world",
           "object_masks", "sample_layout", "render_chunk"]
