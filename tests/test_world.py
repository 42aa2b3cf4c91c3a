"""The embedded world generator: exact masks, balanced labels, determinism, speed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fvit.data.world import (
    CLASS_NAMES,
    SHAPE_NAMES,
    NUM_CLASSES,
    Layout,
    WorldConfig,
    make_world,
    object_masks,
)
from fvit.errors import FvitError


CHUNK = WorldConfig().chunk


@pytest.fixture(scope="module")
def world():
    return make_world("eval", 2 * CHUNK + 37, seed=3)


def test_items_follow_the_dataset_contract(world):
    item = world[5]
    assert set(item) >= {"image", "label", "mask", "id"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.bool
    assert isinstance(item["label"], int) and 0 <= item["label"] < NUM_CLASSES
    assert item["id"] == "world-eval-000005"
    assert float(world.images.min()) >= 0.0 and float(world.images.max()) <= 1.0
    assert len(world.class_names) == NUM_CLASSES == len(set(CLASS_NAMES)) >= 6
    with pytest.raises(IndexError):
        world[len(world)]


def test_object_pixels_are_exactly_the_mask():
    """On a constant background the object is exactly where the mask is True, and the objects drawn
    on clutter are the very same pixels (the drawing does not depend on the background)."""
    for value in (0.0, 1.0):
        plain = make_world("eval", 300, seed=7, config=WorldConfig(plain_background=value))
        differs = (plain.images != value).any(dim=1)
        assert torch.equal(differs, plain.masks)
    clutter = make_world("eval", 300, seed=7)
    assert torch.equal(clutter.masks, plain.masks)
    m = clutter.masks[:, None].expand_as(clutter.images)
    assert torch.equal(clutter.images[m], plain.images[m])


def test_masks_are_nonempty_and_inside_the_frame(world):
    area = world.masks.float().mean(dim=(1, 2))
    assert float(area.min()) > 0.02  # at least ~20 pixels of a 32x32 image
    assert float(area.max()) < 0.6
    # objects stay inside the frame: a mask never fills a whole border row/column
    assert not world.masks[:, 0, :].all(dim=1).any()


def test_mask_geometry_matches_the_shape():
    """A disc of radius r covers ~pi r^2 pixels; a square of circumradius r covers ~2 r^2."""
    n = 8
    layout = Layout(
        labels=np.array([SHAPE_NAMES.index("disc")] * 4 + [SHAPE_NAMES.index("square")] * 4),
        centre=np.full((n, 2), 32.0, dtype=np.float32),
        radius=np.array([10, 14, 18, 22] * 2, dtype=np.float32),
        angle=np.zeros(n, dtype=np.float32),
    )
    area = object_masks(layout, 64, SHAPE_NAMES).sum(axis=(1, 2))
    r = layout.radius
    np.testing.assert_allclose(area[:4], np.pi * r[:4] ** 2, rtol=0.05)
    np.testing.assert_allclose(area[4:], 2 * r[4:] ** 2, rtol=0.08)


def test_labels_are_balanced(world):
    counts = torch.bincount(world.labels, minlength=NUM_CLASSES)
    full = make_world("train", CHUNK, seed=0)
    assert torch.equal(torch.bincount(full.labels), torch.full((NUM_CLASSES,), CHUNK // NUM_CLASSES))
    assert int(counts.max() - counts.min()) <= 37  # only the partial last chunk may be unbalanced


def test_deterministic_from_seed_and_prefix_stable(world):
    again = make_world("eval", 100, seed=3)
    assert torch.equal(again.images, world.images[:100])
    assert torch.equal(again.masks, world.masks[:100])
    assert torch.equal(again.labels, world.labels[:100])
    assert torch.equal(world.subset(100).images, again.images)


def test_seeds_and_splits_differ():
    a = make_world("eval", 64, seed=0)
    b = make_world("eval", 64, seed=1)
    c = make_world("train", 64, seed=0)
    assert not torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)


def test_bad_arguments_raise_fvit_errors():
    with pytest.raises(FvitError, match="split"):
        make_world("test", 4)
    with pytest.raises(FvitError, match="size"):
        make_world("eval", 0)
    with pytest.raises(FvitError, match="scale"):
        WorldConfig(scale=(0.4, 0.2))
    with pytest.raises(FvitError, match="hexagon"):
        WorldConfig(classes=("disc", "hexagon"))


def test_config_digest_is_pinned_and_sensitive():
    """The digest keys the demo's model cache: a change of the default world (or of the hash rule)
    must show up here, not as a silently retrained cache."""
    import hashlib
    import json

    from fvit.data.world import SHAPE_NAMES

    assert WorldConfig().digest() == "2e77aca5c20f"  # pinned: the default world of this version
    assert WorldConfig(img_size=48).digest() == "6332c77403d7"
    payload = json.dumps({"config": WorldConfig().to_dict(), "shapes": SHAPE_NAMES}, sort_keys=True)
    assert hashlib.sha256(payload.encode()).hexdigest()[:12] == "2e77aca5c20f"  # the documented rule


def test_generation_is_chunked_and_vectorised(monkeypatch):
    """Generation cost is deterministic: ceil(n / chunk) chunk renders, each drawing every class's
    shape once on all of that class's images at the same time (no per-image Python loop)."""
    import fvit.data.world as world_mod

    chunks, shape_calls = [], []
    real_render, real_shapes = world_mod.render_chunk, world_mod.SHAPES

    def render(seed, split, chunk, cfg):
        chunks.append((seed, split, chunk))
        return real_render(seed, split, chunk, cfg)

    class CountingShapes:
        def __getattr__(self, attr):
            return getattr(real_shapes, attr)

        def get(self, name):
            fn = real_shapes.get(name)

            def counted(u, v):
                shape_calls.append((name, u.shape[0]))
                return fn(u, v)

            return counted

    monkeypatch.setattr(world_mod, "render_chunk", render)
    monkeypatch.setattr(world_mod, "SHAPES", CountingShapes())
    n = 2 * CHUNK + 5
    w = make_world("train", n, seed=1)
    assert len(w) == n and w.images.shape[0] == n
    assert chunks == [(1, "train", 0), (1, "train", 1), (1, "train", 2)]
    # one call per class and chunk, each on the chunk's 40 images of that class
    per_class = CHUNK // NUM_CLASSES
    assert sorted(shape_calls) == sorted((name, per_class) for name in CLASS_NAMES for _ in range(3))


def test_other_sizes_work():
    w = make_world("eval", 16, seed=0, config=WorldConfig(img_size=48))
    assert w.images.shape == (16, 3, 48, 48) and w.masks.shape == (16, 48, 48)
    assert w[0]["mask"].any()


def test_opens_by_spec_string():
    from fvit.data import open_dataset

    ds = open_dataset("world:eval,40,3", size=32)
    assert len(ds) == 40 and ds[0]["id"] == "world-eval-000000"
    assert torch.equal(ds[0]["image"], make_world("eval", 1, seed=3)[0]["image"])
    big = open_dataset("world:train,8", size=48)
    assert big[0]["image"].shape == (3, 48, 48) and big[0]["id"].startswith("world-train-")
    with pytest.raises(FvitError, match="variant"):
        open_dataset("world:test", size=32)


def test_every_drawable_shape_can_be_a_class():
    w = make_world("eval", 64, seed=0, config=WorldConfig(classes=SHAPE_NAMES))
    assert w.num_classes == len(SHAPE_NAMES) == 8
    assert w.masks.flatten(1).any(1).all()


def test_colour_and_texture_alone_do_not_solve_the_world():
    """Shape matters: a linear classifier on the object's exact mean colour and colour spread
    (given the true mask) stays far below the ViT's accuracy."""
    from sklearn.linear_model import LogisticRegression

    def features(w):
        m = w.masks[:, None].float()
        mean = (w.images * m).sum((2, 3)) / m.sum((2, 3))
        std = (((w.images - mean[:, :, None, None]) ** 2 * m).sum((2, 3)) / m.sum((2, 3))).sqrt()
        return torch.cat([mean, std], 1).numpy()

    train, test = make_world("train", 3000, seed=0), make_world("eval", 1000, seed=0)
    clf = LogisticRegression(max_iter=2000).fit(features(train), train.labels.numpy())
    acc = float((clf.predict(features(test)) == test.labels.numpy()).mean())
    assert 1.5 / NUM_CLASSES < acc < 0.8, acc
