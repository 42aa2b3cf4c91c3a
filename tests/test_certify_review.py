"""Issue 21 (second review of the certificates): each item on a case with a known answer.

1. radii use the noise actually added (an exact half-space base classifier through a real DDS);
2. the Rényi top-k route only for map sources that are distributions by construction;
3. the tightness check judges each family by its own property;
4. public functions refuse bad bounds / indices, inf stays inf;
5. the certified set is in the record, the 'membership' fusion and the figure;
6. no two seeds or streams share noise samples.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri
from scipy.stats import binomtest
from torch import nn

from fvit.certify import (
    CertifyConfig,
    TightnessConfig,
    certified_membership,
    certify,
    gaussian_prediction_radius,
    gaussian_topk_radius,
    prediction_radius,
    topk_radius_bounds,
)
from fvit.errors import FvitError
from fvit.seeding import PerImageGenerator, content_keys

from test_certify_api import GRID, H, W, ConstantModel, FakeDDS, attention_rows

D = 3 * H * W


# ---- 1. the noise actually added --------------------------------------------------------------

def _zero_eps_denoiser():
    """A denoiser predicting eps = 0: one-shot denoising returns x_t* / sqrt(abar_t*) = 2 (x + delta) - 1,
    so a DDS sample is exactly x + delta (clamped), delta the noise DDS adds."""
    from fvit.denoise import linear_schedule
    from fvit.denoise.base import Denoiser

    class _Zero(Denoiser):
        def __init__(self):
            super().__init__(linear_schedule(1000))

        def _eps(self, x_t, t):
            return torch.zeros_like(x_t)

    return _Zero()


class HalfSpace(nn.Module):
    """Class 0 iff <u, x - 0.5> < b, u = the unit all-ones direction: under N(0, s^2 I) noise the
    smoothed p_0(0.5 + t u) = Phi((b - t) / s), so the smoothed class flips exactly at ||delta|| = b."""

    num_classes = 2

    def __init__(self, b: float):
        super().__init__()
        self.b = b

    def forward(self, x):
        margin = self.b - (x.flatten(1) - 0.5).sum(1) / math.sqrt(x[0].numel())
        return torch.stack([margin, -margin], dim=1) * 1e4


@pytest.mark.parametrize("noise", ["paper", "q-sample"])
@pytest.mark.parametrize("mapping", ["carlini", "fvit-demo"])
def test_radii_use_the_noise_actually_added(noise, mapping):
    from fvit.dds import DDS

    dds = DDS(_zero_eps_denoiser(), sigma=2 / 255, noise=noise, mapping=mapping, denoise="one-shot",
              samples=500, max_batch=4096, seed=0)
    std = dds.noise_std
    abar = float(dds.denoiser.schedule.alphas_cumprod[dds.t_star])
    # q-sample: the std of q_sample at the whole step t*, in pixel units; far from sigma at 2/255
    expected = math.sqrt(1 - abar) / (2 * math.sqrt(abar)) if noise == "q-sample" else dds.sigma
    assert std == pytest.approx(expected, rel=1e-5)
    assert (abs(std / dds.sigma - 1) > 0.2) == (noise == "q-sample")  # 1.209 (carlini), 0.638 (fvit-demo)
    b = std * ndtri(0.99)  # the true smoothed p_0 at x is 0.99 under the noise DDS adds
    x = torch.full((1, 3, H, W), 0.5)
    n = 2000
    config = CertifyConfig(k=3, beta=0.6, n0=100, n=n, attention=attention_rows, alpha=0.001)
    (r,) = certify(HalfSpace(b), dds, x, config, seed=0)
    # the counts follow the closed form p_0 = 0.99 (they would be Phi(b / sigma) under the nominal sigma)
    assert binomtest(r.counts[0], n, 0.99).pvalue > 1e-4
    for family in ("gaussian", "renyi"):  # the certificates stay below the exact flip point b
        assert r.radii[family]["certificate"] and r.radii[family]["prediction"] < b
    assert r.radius_pred == pytest.approx(std * ndtri(r.p1_lower), rel=1e-9)
    assert r.radii["renyi"]["prediction"] == pytest.approx(
        float(prediction_radius(r.p1_lower, 1 - r.p1_lower, std)), rel=1e-9)
    assert r.noise_std == pytest.approx(std, rel=1e-12) and r.sigma == dds.sigma
    # the smoothed classifier at 0.99 b keeps its class, beyond b it flips (closed form)
    assert ndtr((b - 0.99 * b) / std) > 0.5 > ndtr((b - 1.01 * b) / std)


# ---- 2. the Rényi top-k premise ---------------------------------------------------------------

def far_tail(model, images):
    """An attention row near x (entries <= 1/32) that exceeds 1 far away (bright images): a
    sub-probability vector on every sample drawn at a mid-grey x, yet not a distribution."""
    patch = nn.functional.avg_pool2d(images[:, :1], H // GRID)[:, 0]
    return SimpleNamespace(patch=torch.where(patch > 0.9, 50 * patch, patch / 32), logits=model(images))


def test_renyi_topk_only_for_sources_declared_distributions():
    images = torch.full((2, 3, H, W), 0.5) + 0.1 * torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    kw = dict(k=3, beta=0.6, n0=5, n=40, seed=0)
    for r in certify(ConstantModel(1), FakeDDS(sigma=0.02), images, attention=far_tail, **kw):
        assert r.radii["renyi"]["topk"] is None and r.radii["renyi"]["region"] is None  # n/a, not 0
        assert not r.radii["renyi"]["certificate"] and r.radii["gaussian"]["certificate"]
        assert any("renyi top-k: n/a (far_tail is not declared" in note for note in r.notes)
        assert json.loads(json.dumps(r.to_dict()))["radii"]["renyi"]["topk"] is None
    headline = certify(ConstantModel(1), FakeDDS(sigma=0.02), images, attention=far_tail, certificate="renyi", **kw)
    assert all(r.radius_topk is None and r.region is None and not r.is_certificate and r.certified_patches == []
               for r in headline)
    # the same maps from a source that declares it: the Rényi top-k radius is computed
    declared = certify(ConstantModel(1), FakeDDS(sigma=0.02), images, attention=attention_rows, **kw)
    assert all(isinstance(r.radii["renyi"]["topk"], float) for r in declared)


def test_methods_declare_whether_their_maps_are_distributions():
    from fvit.explain import get_method

    assert get_method("raw_attention").distribution and get_method("rollout").distribution
    assert get_method("rollout", start_layer=1).distribution
    assert get_method("attribution_rollout").distribution
    assert not get_method("attribution_rollout", clamp_negative=False).distribution
    for name in ("gradcam", "transformer_attribution", "lrp"):
        assert get_method(name).distribution is False


# ---- 3. the tightness check judges each family by its own property ----------------------------

A_MAP = torch.tensor([0.3, 0.3, 0.3] + [0.0] * 13)
B_MAP = torch.tensor([0.05, 0.05, 0.02, 0.85] + [0.0] * 12)
B_THRESHOLD = 0.5 + 0.2533 * 0.05  # P(0.5 + N(0, 0.05^2) > threshold) = 0.4


def two_mode(model, images):
    """Clean images (channel 1 dark): always A. 'Attacked' images (channel 1 bright): B with
    probability 0.4 over the noise, else A. Then the top-3 MEMBERSHIP stays {0, 1, 2} (patch 2 in
    60 % of the samples, patch 3 in 40 %) while the top-3 of the MEAN map becomes {3, 0, 1}."""
    attacked = images[:, 1].flatten(1).mean(1) > 0.5
    pick_b = attacked & (images[:, 0, 0, 0] > B_THRESHOLD)
    maps = torch.where(pick_b[:, None], B_MAP, A_MAP).view(-1, GRID, GRID).to(images.dtype)
    return SimpleNamespace(patch=maps, logits=model(images))


two_mode.distribution = True  # both A and B are sub-probability vectors


@pytest.mark.parametrize("family,broken", [("renyi", True), ("gaussian", False)])
def test_tightness_judges_each_family_by_its_own_property(monkeypatch, family, broken):
    from fvit.certify import tightness

    clean = torch.full((1, 3, H, W), 0.5)
    clean[:, 1] = 0.1
    attacked = clean.clone()
    attacked[:, 1] = 0.9
    monkeypatch.setattr(tightness, "_topk_explainer", lambda attention, dds: None)
    monkeypatch.setattr(tightness, "_attack", lambda *args, **kwargs: attacked)
    config = CertifyConfig(k=3, beta=1.0, n0=10, n=1000, attention=two_mode, certificate=family)
    report = tightness.run_tightness(ConstantModel(1), FakeDDS(sigma=0.05, samples=50), clean, [1], certify=config,
                                     tightness=TightnessConfig(factors=(0.5,), properties=("topk",),
                                                               check_samples=2000))
    entry = report["images"][0]["properties"]["topk"]
    assert entry["eligible"] and report["certificates"][0]["topk_indices"] == [0, 1, 2]
    outcome = entry["attacks"]["0.5"]
    assert outcome["success"] is broken and outcome["confirmed"] is broken
    assert report["config"]["topk_property"] == ("mean" if family == "renyi" else "membership")
    assert report["violations"] == []  # the 'attack' moved far beyond the radius


# ---- 4. bad input is refused, inf stays inf ---------------------------------------------------

def _box():
    lower = np.array([[0.5, 0.4, 0.3, 0.01, 0.02, 0.0]])
    upper = np.array([[0.6, 0.5, 0.4, 0.05, 0.06, 0.03]])
    return lower, upper, np.array([[0, 1, 2]])


@pytest.mark.parametrize("fn", ["gaussian", "renyi", "membership"])
@pytest.mark.parametrize("case,message", [("nan", "NaN"), ("duplicate", "duplicate"), ("inverted", "inverted"),
                                          ("range", r"\[0, 1\]"), ("index", "indices must lie")])
def test_bad_bounds_and_indices_are_refused(fn, case, message):
    lower, upper, topk = _box()
    if case == "nan":
        lower[0, 1] = np.nan
    elif case == "duplicate":
        topk = np.array([[0, 1, 1]])
    elif case == "inverted":
        lower[0, 4] = 0.1  # above its upper bound 0.06
    elif case == "range":
        upper[0, 0] = 1.5
    else:
        topk = np.array([[0, 1, 6]])
    with pytest.raises(FvitError, match=message):
        if fn == "gaussian":
            gaussian_topk_radius(lower, upper, topk, 3, 0.6, 0.1)
        elif fn == "renyi":
            topk_radius_bounds(lower, upper, topk, 3, 0.6, 0.1)
        else:
            certified_membership(lower, upper, topk, 3, [0.01], 0.1)


def test_nan_counts_and_sums_are_refused():
    from fvit.certify import bernstein_bounds, clopper_pearson_lower, membership_bounds, topk_split

    with pytest.raises(FvitError, match="NaN"):
        clopper_pearson_lower(np.nan, 10, 0.01)
    with pytest.raises(FvitError, match="NaN"):
        membership_bounds(np.array([[3.0, np.nan]]), 10, 0.01)
    with pytest.raises(FvitError, match="NaN"):
        bernstein_bounds(np.array([[1.0, np.nan]]), np.array([[1.0, 1.0]]), 10, 0.01)
    lower, upper, _ = _box()
    with pytest.raises(FvitError, match="duplicate"):
        topk_split(lower, upper, np.array([[2, 2, 0]]), 1)


def test_nan_probabilities_are_refused_and_inf_stays_inf():
    with pytest.raises(FvitError, match="NaN"):
        gaussian_prediction_radius(np.nan, 0.1, 0.1)
    with pytest.raises(FvitError, match="NaN"):
        prediction_radius(np.nan, 0.1, 0.1)
    # members always in, outsiders never: Phi^-1(1) = inf, an infinite radius (not 1.797e308)
    lower = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    radius = gaussian_topk_radius(lower, lower.copy(), np.array([[0, 1]]), 2, 0.5, 0.1)
    assert radius[0] == math.inf
    assert gaussian_prediction_radius(1.0, 0.0, 0.1) == math.inf
    valid = _box()
    assert 0 < gaussian_topk_radius(*valid, 3, 0.6, 0.1)[0] < math.inf  # valid input still works


# ---- 5. the certified set: record, fusion, figure ---------------------------------------------

def test_certified_set_is_recorded_and_is_the_top_k_of_the_membership_fusion():
    from fvit.dds import fuse

    images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(3))
    n, m, seed, k = 60, 6, 4, 10
    results = certify(ConstantModel(1), FakeDDS(samples=m), images, k=k, beta=0.8, n0=6, n=n,
                      attention=attention_rows, seed=seed)
    # the per-sample maps of the estimation stream, recomputed
    gen = PerImageGenerator.from_keys(seed, [f"certify-estimation|{key}" for key in content_keys(images)])
    chunks = [FakeDDS(samples=m).denoise(images, gen) for _ in range(n // m)]
    maps = torch.cat([attention_rows(ConstantModel(1), c.flatten(0, 1)).patch.view(2, m, GRID, GRID)
                      for c in chunks], dim=1)
    shown = fuse(maps.double(), "membership")  # the 'membership' fusion: k = 10
    for i, r in enumerate(results):
        assert r.membership_map == pytest.approx(shown[i].flatten().tolist(), abs=1e-6)  # fuse() is float32
        order = np.argsort(-np.asarray(r.membership_map), kind="stable")[:k]
        assert r.topk_indices == order.tolist()
        assert r.certified_patches == (sorted(r.topk_indices) if r.radius_topk > 0 else [])
        assert json.loads(json.dumps(r.to_dict()))["certified_patches"] == r.certified_patches
    assert any(r.certified_patches for r in results)


def test_membership_fusion_hand_computed():
    from fvit.dds import fuse

    values = torch.arange(12.0)
    first = values.clone()            # top-10: indices 2..11
    second = values.flip(0)           # top-10: indices 0..9
    out = fuse(torch.stack([first, second])[None].view(1, 2, 3, 4), "membership")
    expect = torch.tensor([0.5, 0.5] + [1.0] * 8 + [0.5, 0.5]).view(3, 4)
    assert torch.equal(out[0], expect)


def test_certified_figure_outlines_exactly_the_certified_patches(tmp_path):
    from fvit.viz.certified import certified_figure, patch_boxes

    clean = torch.full((1, 3, H, W), 0.5)
    clean[:, 1] = 0.1
    (r,) = certify(ConstantModel(1), FakeDDS(sigma=0.05, samples=50), clean, k=3, beta=1.0, n0=10, n=1000,
                   attention=two_mode, certificate="renyi")
    assert r.is_certificate and r.radius_topk > 0 and r.certified_patches == [0, 1, 2]
    path, rectangles = certified_figure(clean[0], r.to_dict(), tmp_path / "certified.png")
    assert path.stat().st_size > 0
    # a 4x4 grid on 8x8 pixels: patches 0, 1, 2 are the 2x2 blocks of the first row
    assert [(rc.get_x(), rc.get_y(), rc.get_width(), rc.get_height()) for rc in rectangles] == \
        [(-0.5, -0.5, 2.0, 2.0), (1.5, -0.5, 2.0, 2.0), (3.5, -0.5, 2.0, 2.0)]
    assert patch_boxes([15], (4, 4), (8, 8)) == [(5.5, 5.5, 2.0, 2.0)]
    assert r.membership_map == [1.0, 1.0, 1.0] + [0.0] * 13  # the default heat map: the membership
    nothing = certify(ConstantModel(1), FakeDDS(sigma=0.05, samples=50), clean, k=3, beta=1.0, n0=10, n=1000,
                      attention=far_tail, certificate="renyi")[0]
    assert nothing.certified_patches == [] and certified_figure(clean[0], nothing, tmp_path / "none.png")[1] == []


# ---- 6. seeds and streams never share samples -------------------------------------------------

class RecordingDDS(FakeDDS):
    """Records the per-image generator seeds and the samples of every denoising call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def denoise(self, images, generator=None, keys=None):
        out = super().denoise(images, generator, keys)
        self.calls.append((tuple(generator.seeds), out))
        return out


def test_no_two_seeds_or_streams_share_noise_samples():
    images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    generators, samples = [], []
    for seed in range(4):
        dds = RecordingDDS(samples=5)
        certify(ConstantModel(1), dds, images, k=3, beta=0.6, n0=5, n=10, attention=attention_rows, seed=seed)
        assert len(dds.calls) == 3  # one selection call, two estimation calls
        stages = [dds.calls[0], dds.calls[1]]  # the first call of each stream
        assert dds.calls[1][0] == dds.calls[2][0]  # one estimation stream, advanced
        for gen_seeds, out in stages:
            generators.extend(gen_seeds)
            samples.extend(out.flatten(0, 1))
    assert len(set(generators)) == len(generators) == 4 * 2 * 2  # seeds x streams x images
    flat = torch.stack(samples).flatten(1)
    same = (flat[:, None] == flat[None]).all(-1)
    assert int(same.sum()) == flat.shape[0]  # every sample equals only itself
