"""certify() / run_tightness() / the CLI on small fakes with the DDS and explanation contracts,
plus an integration test with the real fvit.dds.DDS, tiny_vit and raw_attention when present."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from scipy.special import ndtri

from fvit.certify import (
    CertifyConfig,
    TightnessConfig,
    bernstein_bounds,
    certify,
    certify_methods,
    gaussian_topk_radius,
    membership_bounds,
    prediction_radius,
    topk_radius,
    topk_radius_bounds,
)
from fvit.dds import class_counts
from fvit.errors import FvitError, InputError
from fvit.seeding import PerImageGenerator, content_keys

H = W = 8
GRID = 4


class FakeDDS:
    """Implements fvit.dds.Smoother: denoise(images, generator) -> (B, m, 3, H, W), fresh noise from
    the generator; denoise_differentiable; logits; smoothed_predict. 'Denoising' = clamp(x + noise)."""

    def __init__(self, sigma=0.05, samples=7, seed=0):
        self.sigma, self.samples, self.seed, self.max_batch = sigma, samples, seed, 64
        self.denoise_calls = 0

    def _noise(self, images, generator):
        shape = (images.shape[0], self.samples, *images.shape[1:])
        if isinstance(generator, PerImageGenerator):  # one stream per image, as fvit.dds.DDS
            return generator.randn((shape[0] * shape[1], *shape[2:]), dtype=images.dtype).view(shape)
        return torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype)

    def denoise(self, images, generator=None, keys=None):
        self.denoise_calls += 1
        generator = generator or torch.Generator().manual_seed(self.seed)
        return (images[:, None] + self.sigma * self._noise(images, generator)).clamp(0, 1)

    def denoise_differentiable(self, images, generator=None, keys=None):
        generator = generator or torch.Generator().manual_seed(self.seed)
        return images[:, None] + self.sigma * self._noise(images, generator)

    def logits(self, model, samples):
        with torch.no_grad():
            return model(samples.flatten(0, 1)).view(*samples.shape[:2], -1)

    def smoothed_predict(self, model, images, generator=None, keys=None):
        logits = self.logits(model, self.denoise(images, generator, keys))
        return class_counts(logits.argmax(-1), logits.shape[-1]).argmax(1)


class ConstantModel(nn.Module):
    """Always predicts `cls` (deterministic classifier)."""

    def __init__(self, cls=2, num_classes=4):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes) + 0 * self.scale * x.mean()
        logits[:, self.cls] = 10.0
        return logits


class MeanModel(nn.Module):
    """Two classes by the mean brightness: class 0 iff mean > 0.5 (smooth, differentiable)."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        s = self.gain * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([s, -s], dim=1)


def fake_attention(model, images):
    """Explanation-like: .patch = channel-0 average pooled to a 4x4 grid (non-negative), .logits."""
    patch = nn.functional.avg_pool2d(images[:, :1], H // GRID)[:, 0]
    return SimpleNamespace(patch=patch, logits=model(images))


def _images(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, H, W, generator=g)


def attention_rows(model, images):
    """A sub-probability map (an attention row's patch part): channel-0 pooled to 4x4, / 32."""
    patch = nn.functional.avg_pool2d(images[:, :1], H // GRID)[:, 0] / 32
    return SimpleNamespace(patch=patch, logits=model(images))


attention_rows.distribution = True  # entries in [0, 1/32], 16 patches: a sub-probability vector for every input


def test_fake_dds_is_a_smoother_and_a_partial_one_is_refused():
    """certify takes the test double as a `Smoother` (as_smoother hands it back unchanged) and
    refuses an object that lacks part of the protocol, naming what is missing, before sampling."""
    from fvit.dds import as_smoother

    dds = FakeDDS()
    assert as_smoother(dds) is dds
    partial = SimpleNamespace(sigma=0.05, samples=7, max_batch=64, denoise=dds.denoise, logits=dds.logits)
    config = CertifyConfig(k=3, beta=0.6, alpha=0.001, n0=10, n=50, attention=fake_attention)
    with pytest.raises(FvitError, match="SimpleNamespace is not a smoother .*missing denoise_differentiable, "
                                        "smoothed_predict$"):
        certify(ConstantModel(2), partial, _images(), config)
    assert dds.denoise_calls == 0  # refused before any denoising


def test_deterministic_classifier_closed_form():
    dds, n, alpha = FakeDDS(samples=7), 50, 0.001
    config = CertifyConfig(k=3, beta=0.6, alpha=alpha, n0=10, n=n, attention=fake_attention)
    res = certify(ConstantModel(2), dds, _images(), config)
    assert len(res) == 3
    # the settings are recorded whole, the map source by its name
    assert res[0].config == {**config.to_dict(), "attention": "fake_attention"} and res[0].config["alpha"] == alpha
    half = alpha / 2  # one alpha, split between the prediction and the top-k bounds
    for r in res:
        assert r.predicted_class == 2 and not r.abstained and r.reason is None
        assert sum(r.counts) == n and sum(r.selection_counts) == 10 and r.counts[2] == n
        assert r.alpha_split == {"prediction": half, "topk": half}
        assert r.p1_lower == pytest.approx(half ** (1 / n), rel=1e-12)
        assert r.p2_upper == pytest.approx(1 - half ** (1 / n), rel=1e-12)
        assert r.p1_raw == 1.0 and r.p2_raw == 0.0
        # gaussian (default): Cohen et al.'s sigma * Phi^-1(pA_lower)
        assert r.certificate == "gaussian" and r.is_certificate
        assert r.radius_pred == pytest.approx(dds.sigma * ndtri(half ** (1 / n)), rel=1e-9)
        assert r.radii["renyi"]["prediction"] == pytest.approx(
            prediction_radius(half ** (1 / n), 1 - half ** (1 / n), dds.sigma), rel=1e-9)
        assert r.radii["renyi"]["prediction"] < r.radius_pred  # the Rényi route is looser
        assert r.radii["renyi-re"]["prediction"] == math.inf and not r.radii["renyi-re"]["certificate"]
        assert r.region == pytest.approx(min(r.radius_pred, r.radius_topk))
        # fake_attention is not an attention row (sums up to 16): Rényi top-k does not apply
        assert r.radii["renyi"]["topk"] is None and not r.radii["renyi"]["certificate"]
        assert r.k0 == 2 and r.sigma == dds.sigma and r.seed == 0
    assert dds.denoise_calls == math.ceil(10 / 7) + math.ceil(50 / 7)


def _recompute(images, attention, n, m, seed):
    """Per-sample maps from the same noise stream as certify (the estimation stream of ``seed``)."""
    gen = PerImageGenerator.from_keys(seed, [f"certify-estimation|{key}" for key in content_keys(images)])
    chunks = [FakeDDS(samples=m).denoise(images, gen) for _ in range(math.ceil(n / m))]
    maps = torch.cat([attention(ConstantModel(1), c.flatten(0, 1)).patch.view(images.shape[0], m, -1)
                      for c in chunks], dim=1)[:, :n].double().numpy()
    return maps


def test_topk_radii_from_the_samples():
    images = _images(2)
    dds = FakeDDS(samples=5)
    k, beta, alpha = 3, 0.6, 0.01
    res = certify(ConstantModel(1), dds, images, k=k, beta=beta, n0=5, n=20, attention=attention_rows, seed=3,
                  alpha=alpha)
    maps = _recompute(images, attention_rows, 20, 5, 3)
    w = maps.mean(1)
    members = np.zeros_like(w)
    for i in range(2):
        for s in range(20):
            members[i, np.argsort(-maps[i, s], kind="stable")[:k]] += 1
    mem_lo, mem_hi = membership_bounds(members, 20, alpha / 2)
    att_lo, att_hi = bernstein_bounds(maps.sum(1), (maps ** 2).sum(1), 20, alpha / 2)
    for i, r in enumerate(res):
        s_gauss = np.argsort(-members[i], kind="stable")[:k]
        s_att = np.argsort(-w[i], kind="stable")[:k]
        assert r.topk_indices == s_gauss.tolist() and r.topk_indices_attention == s_att.tolist()
        assert r.topk_membership == pytest.approx((members[i, s_gauss] / 20).tolist())
        assert r.radius_topk == pytest.approx(
            float(gaussian_topk_radius(mem_lo[i:i + 1], mem_hi[i:i + 1], s_gauss[None], k, beta, dds.sigma)[0]))
        assert r.radii["renyi"]["topk"] == pytest.approx(
            float(topk_radius_bounds(att_lo[i:i + 1], att_hi[i:i + 1], s_att[None], k, beta, dds.sigma)[0]))
        assert r.radii["renyi-re"]["topk"] == pytest.approx(
            float(topk_radius(w[i], k, beta, dds.sigma, variant="renyi-re")), rel=1e-9)
        assert r.radii["renyi-hu"]["topk"] == pytest.approx(
            float(topk_radius(w[i], k, beta, dds.sigma, variant="renyi-hu")), rel=1e-9)
        # 20 samples and alpha/2 over 2 * 16 bounds: the confidence box is too wide to certify
        assert r.radii["renyi"]["topk"] == 0.0 and r.radii["renyi"]["certificate"]


def test_headline_certificate_is_selectable_and_labelled():
    images = _images(1)
    kw = dict(k=3, beta=0.6, n0=5, n=30, attention=attention_rows, seed=1)
    base = certify(ConstantModel(), FakeDDS(), images, **kw)[0]
    for name in ("renyi", "renyi-re", "renyi-hu"):
        r = certify(ConstantModel(), FakeDDS(), images, certificate=name, **kw)[0]
        assert r.certificate == name and r.radii == base.radii
        assert r.region == base.radii[name]["region"]
        assert r.is_certificate == (name == "renyi")
        assert any("NOT a certificate" in note for note in r.notes) == (name != "renyi")
    with pytest.raises(InputError, match="certificate") as info:
        certify(ConstantModel(), FakeDDS(), images, certificate="cohen2", **kw)
    assert info.value.params == ("certificate",)


def test_certificate_of_an_image_does_not_depend_on_the_batch():
    images = _images(3)
    kw = dict(k=3, beta=0.6, n0=5, n=30, attention=attention_rows, seed=2)
    batch = certify(ConstantModel(), FakeDDS(samples=4), images, **kw)
    alone = certify(ConstantModel(), FakeDDS(samples=4), images[2:3], **kw)[0]
    reordered = certify(ConstantModel(), FakeDDS(samples=4), images.flip(0), **kw)[0]
    for other in (alone, reordered):
        assert other.radii == batch[2].radii and other.topk_indices == batch[2].topk_indices
        assert other.noise_key == batch[2].noise_key == content_keys(images[2:3])[0]
    assert batch[0].radii != batch[2].radii


def test_seed_reaches_the_sampler():
    images = torch.full((1, 3, H, W), 0.5)
    kw = dict(k=2, beta=0.5, n0=10, n=60, attention=fake_attention)
    a = certify(MeanModel(), FakeDDS(sigma=0.2, samples=10), images, seed=1, **kw)[0]
    b = certify(MeanModel(), FakeDDS(sigma=0.2, samples=10), images, seed=5, **kw)[0]
    c = certify(MeanModel(), FakeDDS(sigma=0.2, samples=10), images, seed=5, **kw)[0]
    assert a.counts != b.counts and b.counts == c.counts


def test_abstains_when_bounds_do_not_separate():
    # a 50/50 classifier: brightness right at the threshold
    images = torch.full((1, 3, H, W), 0.5)
    res = certify(MeanModel(), FakeDDS(sigma=0.2, samples=10), images, k=2, beta=0.5, n0=20, n=100,
                  attention=fake_attention)
    r = res[0]
    assert r.abstained and r.radius_pred == 0.0 and r.region == 0.0 and "pA_lower" in r.reason
    one = certify(MeanModel(), FakeDDS(sigma=0.2, samples=10), images, k=2, beta=0.5, n=100,
                  attention=fake_attention, protocol="one_stage")[0]
    assert one.abstained and one.n0 == 0 and one.selection_counts is None


def test_linf_conversion_and_json():
    images = _images(1)
    kw = dict(k=3, beta=0.6, n0=5, n=30, attention=fake_attention, seed=1)
    l2 = certify(ConstantModel(), FakeDDS(), images, **kw)[0]
    paper = certify(ConstantModel(), FakeDDS(), images, norm="linf", linf_conversion="paper", **kw)[0]
    sound = certify(ConstantModel(), FakeDDS(), images, norm="linf", **kw)[0]
    d = 3 * H * W
    assert paper.dims == d and paper.linf_conversion == "paper" and sound.linf_conversion == "sqrt_d"
    assert paper.region == pytest.approx(l2.region / d)
    assert sound.region == pytest.approx(l2.region / math.sqrt(d))
    payload = json.loads(json.dumps(l2.to_dict()))
    assert payload["radii"]["renyi-re"]["prediction"] == "inf" and payload["linf_conversion"] is None
    assert payload["radii"]["renyi"]["topk"] is None and payload["radii"]["renyi"]["region"] is None  # n/a, not 0


def test_input_and_option_errors():
    dds = FakeDDS()
    with pytest.raises(FvitError, match=r"must lie in \[0, 1\]"):
        certify(ConstantModel(), dds, _images() * 2, attention=fake_attention)
    # sigma is the smoother's, not a certification setting
    with pytest.raises(InputError, match="unknown setting"):
        certify(ConstantModel(), dds, _images(), sigma=0.3, attention=fake_attention)
    for change, field in ((dict(n0=0), "n0"), (dict(norm="l1"), "norm"), (dict(alpha=1.0), "alpha"),
                          (dict(k="3"), "k"), (dict(attention="no_such_method"), "attention")):
        with pytest.raises(InputError) as info:
            certify(ConstantModel(), dds, _images(), **{"attention": fake_attention, **change})
        assert info.value.params == (field,)
    with pytest.raises(InputError, match="CertifyConfig"):
        certify(ConstantModel(), dds, _images(), {"k": 3})
    with pytest.raises(FvitError, match="not a smoother"):  # the protocol, checked once at the entry
        certify(ConstantModel(), SimpleNamespace(sigma=0.1, samples=2, denoise=dds.denoise), _images(),
                attention=fake_attention)
    assert dds.denoise_calls == 0


def test_a_dds_without_noise_cannot_be_certified():
    from fvit import dds as dds_mod
    from fvit import models

    model = models.tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    from fvit.denoise import OracleDenoiser, linear_schedule

    images = torch.rand(1, 3, 32, 32)
    oracle = OracleDenoiser(images.repeat_interleave(4, 0), linear_schedule())
    for dds in (dds_mod.DDS(None, sigma=0.1, variant="none", samples=4),
                dds_mod.DDS(oracle, sigma=0.1, variant="no-noise", samples=4), FakeDDS(sigma=0.0)):
        with pytest.raises(FvitError, match="needs Gaussian noise"):
            certify(model, dds, images, k=3, beta=0.6, n0=4, n=8)


def test_repeated_samples_are_rejected():
    class StaleDDS(FakeDDS):
        def denoise(self, images, generator=None, keys=None):  # ignores the generator: same samples every call
            return super().denoise(images, torch.Generator().manual_seed(0))

    with pytest.raises(FvitError, match="identical samples"):
        certify(ConstantModel(), StaleDDS(samples=4), _images(1), k=2, beta=0.5, n0=2, n=10,
                attention=fake_attention)


# ---- tightness ----------------------------------------------------------------------------------

def test_tightness_attack_succeeds_only_beyond_the_margin():
    from fvit.certify.tightness import run_tightness, tightness_markdown

    images = torch.full((2, 3, H, W), 0.6)  # class 0 with margin 0.1 in mean brightness
    labels = torch.tensor([0, 1])            # the second is misclassified: not attacked
    model, dds = MeanModel(), FakeDDS(sigma=0.01, samples=4)
    config = CertifyConfig(k=3, beta=0.6, n0=4, n=16, attention=fake_attention)
    certs = certify(model, dds, images, config)
    # an l2 shift of the mean by 0.1 needs ||delta||_2 = 0.1 * sqrt(d) ~ 1.39
    certs = [replace(c, radius_pred=0.1) for c in certs]
    tight = TightnessConfig(factors=(1.5, 30), attack_steps=10, properties=("prediction",))
    report = run_tightness(model, dds, images, labels, certify=config, tightness=tight, certificates=certs)
    assert report["config"]["certify"] == {**config.to_dict(), "attention": "fake_attention"}
    assert report["config"]["tightness"] == tight.to_dict() and tight.factors == (1.5, 30.0)
    summary = report["summary"]["prediction"]
    assert summary["1.5"]["attacked"] == 1 and summary["1.5"]["successes"] == 0
    assert summary["30.0"]["successes"] == 1 and summary["30.0"]["confirmed"] == 1
    assert report["images"][1]["properties"]["prediction"]["eligible"] is False
    att = report["images"][0]["properties"]["prediction"]["attacks"]["1.5"]
    assert att["perturbation_norm"] <= 0.15 + 1e-6 and report["config"]["gradient"] == "exact"
    assert report["violations"] == []  # the success at 30R is outside the radius
    assert "| prediction | 1.5 | 1 | 0 | 0.0% | 0 | 23% |" in tightness_markdown(report)
    json.dumps(report)


def test_tightness_flags_a_success_inside_a_certified_radius():
    """A (deliberately wrong) certificate of radius 5 for a margin broken at ~1.39: the attack at
    0.9R succeeds inside the radius, the report lists it and raise_on_violations fails loudly."""
    from fvit.certify.tightness import SoundnessViolation, raise_on_violations, run_tightness

    images = torch.full((1, 3, H, W), 0.6)
    model, dds = MeanModel(), FakeDDS(sigma=0.01, samples=4)
    config = CertifyConfig(k=3, beta=0.6, n0=4, n=16, attention=fake_attention)
    certs = [replace(c, radius_pred=5.0) for c in certify(model, dds, images, config)]
    report = run_tightness(model, dds, images, torch.tensor([0]), certificates=certs, certify=config,
                           tightness=TightnessConfig(factors=(0.9,), attack_steps=10, properties=("prediction",)))
    assert [v["factor"] for v in report["violations"]] == [0.9]
    assert report["violations"][0]["perturbation_norm"] < 5.0
    with pytest.raises(SoundnessViolation, match="SOUNDNESS VIOLATION"):
        raise_on_violations(report)


def test_tightness_bpda_and_linf():
    """gradient='bpda' is an explicit choice: the attack then never calls denoise_differentiable
    (here it raises), and still finds the l_inf margin of 0.1 beyond it, not before."""
    from fvit.certify.tightness import run_tightness

    class NoGradDDS(FakeDDS):
        def denoise_differentiable(self, images, generator=None, keys=None):
            raise RuntimeError("no differentiable path")

    dds = NoGradDDS(sigma=0.01, samples=4)
    images = torch.full((1, 3, H, W), 0.6)
    model = MeanModel()
    config = CertifyConfig(k=3, beta=0.6, n0=4, n=16, norm="linf", attention=fake_attention)
    certs = [replace(c, radius_pred=0.2) for c in certify(model, dds, images, config)]
    tight = TightnessConfig(factors=(0.25, 1.0), attack_steps=10, properties=("prediction",), gradient="bpda")
    report = run_tightness(model, dds, images, torch.tensor([0]), certify=config, tightness=tight, certificates=certs)
    assert report["config"]["gradient"] == "bpda" and report["config"]["certify"]["n"] == 16
    assert report["summary"]["prediction"]["0.25"]["successes"] == 0  # l_inf 0.05 < 0.1 margin
    assert report["summary"]["prediction"]["1.0"]["successes"] == 1   # l_inf 0.2 > 0.1 margin
    with pytest.raises(RuntimeError, match="no differentiable path"):  # 'auto' means exact gradients
        run_tightness(model, dds, images, torch.tensor([0]), certify=config, certificates=certs,
                      tightness=tight.replace(gradient="auto"))


def test_tightness_refuses_certificates_of_other_settings():
    from fvit.certify.tightness import run_tightness

    images = torch.full((1, 3, H, W), 0.6)
    model, dds = MeanModel(), FakeDDS(sigma=0.01, samples=4)
    config = CertifyConfig(k=3, beta=0.6, n0=4, n=16, attention=fake_attention)
    certs = certify(model, dds, images, config)
    tight = TightnessConfig(factors=(1.0,), attack_steps=1, properties=("prediction",))
    for change, field in ((dict(k=2), "k"), (dict(n=32), "n"), (dict(norm="linf"), "norm"),
                          (dict(attention=attention_rows), "attention")):
        with pytest.raises(FvitError, match=field) as info:
            run_tightness(model, dds, images, torch.tensor([0]), certify=config.replace(**change), tightness=tight,
                          certificates=certs)
        assert info.value.params == (field,)


def test_tightness_by_id_does_not_depend_on_the_other_images():
    """With ids, an image's certificate, attacks and checks are seeded by (seed, id): a run on a
    subset (a shard, a resumed batch) gives the full run's numbers for its images."""
    from fvit.certify.tightness import run_tightness

    images = torch.stack([torch.full((3, H, W), 0.6), torch.full((3, H, W), 0.62), torch.full((3, H, W), 0.57)])
    labels = torch.tensor([0, 0, 0])
    model, dds = MeanModel(), FakeDDS(sigma=0.01, samples=4)
    config = CertifyConfig(k=3, beta=0.6, n0=4, n=16, attention=fake_attention)
    tight = TightnessConfig(factors=(0.9, 800.0), attack_steps=5, properties=("prediction",), check_samples=8)
    full = run_tightness(model, dds, images, labels, certify=config, tightness=tight, seed=5, ids=["a", "b", "c"])
    part = run_tightness(model, dds, images[1:], labels[1:], certify=config, tightness=tight, seed=5, ids=["b", "c"])
    assert [r["id"] for r in full["images"]] == ["a", "b", "c"] and full["config"]["seeded_by"] == "id"
    for mine, theirs in zip(part["images"], full["images"][1:]):
        assert mine["properties"] == theirs["properties"] and mine["id"] == theirs["id"]
    assert [c["noise_key"] for c in part["certificates"]] == ["b", "c"]
    assert part["certificates"][0]["radii"] == full["certificates"][1]["radii"]
    # the large factor does break the margin: the comparison is not between two empty records
    assert full["summary"]["prediction"]["800.0"]["successes"] == 3


# ---- CLI ----------------------------------------------------------------------------------------

@pytest.fixture
def patched_cli(monkeypatch):
    from fvit.cli import certify as cli

    model = ConstantModel(3)
    model.input_size = (H, W)
    monkeypatch.setattr(cli, "load_model", lambda name, **kw: model)
    monkeypatch.setattr(cli, "load_images", lambda paths, size: _images(len(paths)))
    monkeypatch.setattr(cli, "build_dds", lambda config, **kw: FakeDDS(sigma=config.sigma, samples=config.samples))
    import fvit.certify.core as core

    import fvit.certify.tightness as tightness

    monkeypatch.setattr(core, "resolve_attention", lambda a: (fake_attention, "fake"))
    monkeypatch.setattr(tightness, "resolve_attention", lambda a: (fake_attention, "fake"))
    return cli


def test_cli_certify_table_and_json(patched_cli, tmp_path):
    app = typer.Typer()
    patched_cli.register(app)
    app.command("noop")(lambda: None)  # keep `certify` a named subcommand
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["certify", "a.png", "b.png", "--model", "tiny", "--no-pretrained",
                                      "--sigma", "8/255", "--samples", "40", "--n0", "8", "--k", "3",
                                      "--beta", "0.6", "--norm", "linf", "--seed", "7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "gaussian pred/top-k/region" in result.output and "renyi-re pred/top-k/region" in result.output
    assert "linf = l2 / sqrt(d) (standard)" in result.output  # the l_inf conversion is in the table
    assert "NOT a certificate" in result.output
    payload = json.loads((out / "certify.json").read_text())
    # the certified set is printed in the table and recorded in the JSON
    assert "certified patches" in result.output
    for r in payload["results"]:
        shown = ",".join(map(str, r["certified_patches"])) or "-"
        assert r["certified_patches"] == (sorted(r["topk_indices"]) if r["is_certificate"] and r["radius_topk"] > 0
                                          else []) and shown in result.output
    assert payload["config"]["seed"] == 7 and payload["results"][0]["seed"] == 7  # reaches certify()
    assert len(payload["results"]) == 2 and payload["results"][0]["predicted_class"] == 3
    assert payload["results"][0]["norm"] == "linf" and payload["config"]["dds"]["sigma"] == pytest.approx(8 / 255)
    recorded = payload["config"]["certify"]
    assert (recorded["n"], recorded["n0"], recorded["k"], recorded["beta"], recorded["mc_batch"]) == (40, 8, 3, 0.6, 32)
    assert payload["results"][0]["config"] == {**recorded, "attention": "fake"}  # the patched map source
    # m = min(--mc-batch, max(--samples, --n0)) = min(32, 40), stated and recorded
    assert payload["config"]["dds"]["samples"] == 32 and payload["config"]["dds"]["seed"] == 7
    bad = CliRunner().invoke(app, ["certify", "a.png", "--model", "tiny", "--norm", "l7"])
    assert bad.exit_code == 2 and "(command-line options: --norm)" in bad.output


def test_cli_certify_dds_samples_rule(patched_cli, monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(patched_cli, "build_dds", lambda config, **kw: built.append(config) or
                        FakeDDS(sigma=config.sigma, samples=config.samples))
    app = typer.Typer()
    patched_cli.register(app)
    app.command("noop")(lambda: None)
    for argv, m in ((["--samples", "12", "--n0", "20"], 20), (["--samples", "40", "--n0", "8", "--mc-batch", "5"], 5),
                    (["--samples", "6", "--n0", "4", "--mc-batch", "64"], 6)):
        result = CliRunner().invoke(app, ["certify", "a.png", "--model", "tiny", "--no-pretrained", "--k", "3",
                                          "--beta", "0.6", *argv])
        assert result.exit_code == 0, result.output
        assert built[-1].samples == m


def test_cli_default_mc_batch_is_the_library_default():
    from fvit.certify.config import DEFAULT_MC_BATCH
    from fvit.cli import certify as cli

    assert cli.DEFAULT_MC_BATCH == DEFAULT_MC_BATCH == CertifyConfig().mc_batch


def test_cli_bench_certify(patched_cli, monkeypatch, tmp_path):
    from fvit.cli import bench_certify

    images = torch.full((2, 3, H, W), 0.6)
    dataset = [{"image": images[i], "label": 3, "id": f"img{i}"} for i in range(2)]
    monkeypatch.setattr(bench_certify, "load_dataset", lambda spec, size, limit, seed: dataset[:limit])
    bench = typer.Typer()
    bench_certify.register_bench(bench)
    bench.command("noop")(lambda: None)
    result = CliRunner().invoke(bench, ["certify", "world", "--model", "tiny", "--no-pretrained",
                                        "--samples", "16", "--n0", "4", "--k", "3", "--beta", "0.6",
                                        "--factors", "1.5,2", "--limit", "2", "--attack-steps", "2",
                                        "--properties", "prediction", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "certify_tightness.json").read_text())
    assert set(report["summary"]["prediction"]) == {"1.5", "2.0"} and report["images"][0]["id"] == "img0"
    assert (tmp_path / "certify_tightness.md").read_text().startswith("| property | factor |")
    bad = CliRunner().invoke(bench, ["certify", "world", "--model", "tiny", "--factors", "x"])
    assert bad.exit_code == 2


# ---- integration with the real modules -------------------------------------------------------------

def test_integration_real_dds_tiny_vit_raw_attention():
    from fvit import dds as dds_mod
    from fvit import models
    model = models.tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    dds = dds_mod.DDS(None, sigma=0.1, variant="no-denoise", samples=8, seed=0)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    res = certify(model, dds, images, k=3, beta=0.6, n0=8, n=24)
    for r in res:
        assert sum(r.counts) == 24 and len(r.counts) == 10 and r.attention_source == "raw_attention"
        assert r.radius_topk >= 0 and r.region <= r.radius_topk
        # raw attention rows are sub-probability vectors (the CLS column's mass kept apart):
        # the sound Rényi top-k applies (0 here: 24 samples give wide bounds)
        assert r.radii["renyi"]["topk"] == 0.0 and r.radii["renyi"]["certificate"]
        assert r.radii["renyi-re"]["topk"] > 0 and not r.radii["renyi-re"]["certificate"]


def test_tightness_topk_attack_runs_through_dds_on_a_tiny_vit():
    """The top-k property is attacked with the explanation attack through DDS and judged on fresh
    samples; with a deliberately huge radius (certificates replaced) the attack at 0.9R must not be
    able to hide behind the radius: any confirmed success there is reported as a violation."""
    from fvit import dds as dds_mod
    from fvit import models
    from fvit.certify.tightness import run_tightness

    model = models.tiny_vit(num_classes=10, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    dds = dds_mod.DDS(None, sigma=0.1, variant="no-denoise", samples=4, seed=0)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    config = CertifyConfig(k=3, beta=0.6, n0=8, n=32, attention="raw_attention")
    certs = certify(model, dds, images, config)
    tight = TightnessConfig(properties=("topk",), factors=(0.9, 2.0), attack_steps=2, check_samples=32)
    report = run_tightness(model, dds, images, torch.tensor([certs[0].predicted_class]), certificates=certs,
                           certify=config, tightness=tight)
    entry = report["images"][0]["properties"]["topk"]
    r = certs[0].radius_topk
    assert entry["eligible"] == (0 < r < math.inf)
    if entry["eligible"]:
        for f, att in entry["attacks"].items():
            assert att["perturbation_norm"] <= float(f) * r * (1 + 1e-5)  # the attack stays in its budget
    big = [replace(c, radius_topk=50.0) for c in certs]
    report = run_tightness(model, dds, images, torch.tensor([certs[0].predicted_class]), certificates=big,
                           certify=config, tightness=tight.replace(factors=(0.9,), attack_steps=5, check_samples=64))
    att = report["images"][0]["properties"]["topk"]["attacks"]["0.9"]
    assert att["perturbation_norm"] <= 45.0 * (1 + 1e-5)
    assert (report["violations"] != []) == att["confirmed"]


def test_several_methods_share_one_set_of_samples():
    images = _images(2)
    kw = dict(k=3, beta=0.6, n0=5, n=30, seed=4)
    dds = FakeDDS(samples=5)
    both = certify_methods(ConstantModel(), dds, images, attentions=[fake_attention, attention_rows], **kw)
    calls_both = dds.denoise_calls
    assert list(both) == ["fake_attention", "attention_rows"] and calls_both == 1 + 6  # n0 = 5 and n = 30 at m = 5
    for attention in (fake_attention, attention_rows):
        alone = certify(ConstantModel(), FakeDDS(samples=5), images, attention=attention, **kw)
        assert [r.to_dict()["radii"] for r in alone] == [r.to_dict()["radii"] for r in both[attention.__name__]]
    with pytest.raises(FvitError, match="distinct"):
        certify_methods(ConstantModel(), dds, images, attentions=[fake_attention, fake_attention], **kw)
