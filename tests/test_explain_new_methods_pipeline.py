"""The methods of issue 24 (generic attention, AttnLRP, the gradient baselines) through DDS, both
explanation-attack families, the adaptive attack through DDS and certification."""

from __future__ import annotations

import pytest
import torch

from fvit.attacks import get_explanation_attack
from fvit.dds import DDS, DDSExplainer, fuse
from fvit.denoise import SmallDDPM, small_unet_config
from fvit.models import tiny_vit

NEW = ["generic_attention", "attnlrp", "attnlrp:attention=cp", "saliency", "input_x_gradient",
       "integrated_gradients:steps=4", "smoothgrad:samples=4"]


def _method(spec):
    from fvit.cli.common import parse_method

    return parse_method(spec)


@pytest.fixture(scope="module")
def model():
    return tiny_vit(num_classes=10, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, seed=0).eval()


@pytest.fixture(scope="module")
def dds():
    den = SmallDDPM(16, small_unet_config(16, width=8), seed=0).eval()
    return DDS(den, sigma=8 / 255, samples=2, seed=0)


def _images(b=3, seed=0):
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", NEW)
def test_through_dds_equals_the_method_on_the_denoised_samples(model, dds, spec):
    method = _method(spec)
    x = _images()
    target = torch.tensor([1, 5, 7])
    explainer = DDSExplainer(method, dds, fuse="mean")
    out = explainer(model, x, target=target, generator=torch.Generator().manual_seed(3))
    assert out.method == f"{method.spec}+dds"
    samples = dds.denoise(x, torch.Generator().manual_seed(3)).flatten(0, 1)
    per = method(model, samples, target.repeat_interleave(2))
    torch.testing.assert_close(out.patch, fuse(per.patch.view(3, 2, 4, 4), "mean"), rtol=1e-4,
                               atol=1e-5 * float(per.patch.abs().max()))


@pytest.mark.parametrize("spec", NEW)
@pytest.mark.parametrize("attack", ["topk", "target-map"])
def test_explanation_attacks_lower_their_objective(model, spec, attack):
    method = _method(spec)
    x = _images(4, seed=1)
    result = get_explanation_attack(attack, 8 / 255, steps=4, k=3).run(method, model, x)
    assert float((result.adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(result.objective.mean()) < float(result.clean_objective.mean())


@pytest.mark.parametrize("spec", ["attnlrp", "integrated_gradients:steps=2", "generic_attention"])
def test_adaptive_attack_through_dds(model, dds, spec):
    explainer = DDSExplainer(_method(spec), dds, fuse="mean")
    x = _images(2, seed=2)
    result = get_explanation_attack("topk", 8 / 255, steps=2, k=3, eot=1, seed=1).run(explainer, model, x)
    assert not torch.equal(result.adv, x) and float((result.adv - x).abs().max()) <= 8 / 255 + 1e-6


def test_certify_methods_share_the_samples(model, dds):
    """`certify_methods` explains one set of DDS samples with every source: the new methods get the
    same counts and prediction radii as rollout, and each its own config record."""
    from fvit.certify import certify_methods

    names = ["rollout", "attnlrp", "generic_attention", "smoothgrad"]
    out = certify_methods(model, dds, _images(2, seed=3), attentions=names, k=3, beta=0.5, n0=4, n=8, seed=0)
    assert list(out) == names
    for name in names[1:]:
        assert [r.counts for r in out[name]] == [r.counts for r in out["rollout"]]
        assert [r.radius_pred for r in out[name]] == [r.radius_pred for r in out["rollout"]]
        assert all(r.config["attention"] == name for r in out[name])


def test_bench_segmentation_runs_them(tmp_path):
    import json

    pytest.importorskip("captum.attr")
    import typer
    from typer.testing import CliRunner

    from fvit.cli.bench import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `bench` a sub-group
    out = tmp_path / "seg"
    methods = "attnlrp:attention=cp,integrated_gradients:steps=2,captum:InputXGradient"
    r = CliRunner().invoke(app, ["bench", "segmentation", "--data", "world:eval,2", "--model", "tiny", "--no-pretrained",
                                 "--batch-size", "2", "--no-progress", "--methods", methods, "--attack", "fgsm",
                                 "--out", str(out), "--figure", "0"])
    assert r.exit_code == 0, r.output
    keys = set(json.loads((out / "results.json").read_text())["results"])
    assert keys == {"attnlrp:attention=cp", "integrated_gradients:steps=2", "captum:InputXGradient"}
