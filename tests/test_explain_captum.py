"""The captum bridge: ``captum:NAME`` methods through the registry, the CLI spec parser, DDS and the
explanation attacks (which refuse them: captum has no differentiable path)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from fvit.errors import InputError, UnknownNameError, UnsupportedModelError
from fvit.explain import explain, get_method, method_parameters
from fvit.models import tiny_vit

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def model64():
    return tiny_vit(num_classes=5, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, seed=4).double().eval()


@pytest.fixture(scope="module")
def x64():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


TARGET = torch.tensor([2, 0, 4])


def test_name_spec_and_parameters():
    m = get_method("captum:integrated-gradients", n_steps=32)
    assert m.name == "captum:IntegratedGradients" and m.spec == "captum:IntegratedGradients:n_steps=32"
    assert get_method("captum:IntegratedGradients") is get_method("CAPTUM:integrated_gradients")
    assert method_parameters("captum:IntegratedGradients") == {"n_steps": 50, "method": "gausslegendre"}
    assert method_parameters("captum:Saliency") == {"abs": True}
    with pytest.raises(InputError, match="no parameter 'steps'"):
        get_method("captum:IntegratedGradients", steps=3)
    with pytest.raises(UnknownNameError, match="unknown captum attribution 'Nope'"):
        get_method("captum:Nope")
    with pytest.raises(InputError, match="does not take the model alone"):
        get_method("captum:LayerGradCam")


def test_cli_spec_round_trip():
    from fvit.cli.common import parse_method, parse_methods

    m = parse_method("captum:IntegratedGradients:n_steps=32,method=riemann_trapezoid")
    assert m.params == {"n_steps": 32, "method": "riemann_trapezoid"}
    assert parse_method(m.spec).spec == m.spec == "captum:IntegratedGradients:n_steps=32,method=riemann_trapezoid"
    specs = [x.spec for x in parse_methods("rollout,captum:Saliency:abs=false,captum:GuidedBackprop,ig:steps=4")]
    assert specs == ["rollout", "captum:Saliency:abs=false", "captum:GuidedBackprop", "integrated_gradients:steps=4"]


def test_maps_equal_captum_and_fvit_methods(model64, x64):
    ixg = explain(model64, x64, "captum:InputXGradient", target=TARGET)
    direct = captum_attr.InputXGradient(model64).attribute(x64.clone().requires_grad_(), target=TARGET).sum(1)
    torch.testing.assert_close(ixg.pixel, direct.detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ixg.pixel, explain(model64, x64, "input_x_gradient", target=TARGET).pixel,
                               rtol=1e-10, atol=1e-14)
    assert ixg.method == "captum:InputXGradient" and ixg.patch.shape == (3, 4, 4)
    ig = get_method("captum:IntegratedGradients", n_steps=7)(model64, x64, TARGET)
    ours = get_method("integrated_gradients", steps=7)(model64, x64, TARGET)  # black baseline, Gauss-Legendre
    scale = float(ours.pixel.abs().max())
    torch.testing.assert_close(ig.pixel, ours.pixel, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(ig.patch, ours.patch, rtol=1e-6, atol=1e-5 * scale)


def test_batched_equals_single_and_target_none(model64, x64):
    m = get_method("captum:GuidedBackprop")
    batch = m(model64, x64)
    with torch.no_grad():
        assert torch.equal(batch.target, model64(x64).argmax(1))
    for i in range(3):
        single = m(model64, x64[i:i + 1], int(batch.target[i]))
        torch.testing.assert_close(single.pixel[0], batch.pixel[i], rtol=1e-10, atol=1e-14)
    assert float(batch.pixel.abs().sum()) > 0


def test_no_differentiable_path_and_attacks_refuse(model64, x64):
    from fvit.attacks.explanation import get_explanation_attack

    with pytest.raises(UnsupportedModelError, match="no differentiable path .captum takes its gradients") as err:
        get_method("captum:Saliency").differentiable(model64, x64, TARGET)
    assert "\n" not in str(err.value)
    attack = get_explanation_attack("topk", 8 / 255, steps=2, k=3)
    with pytest.raises(UnsupportedModelError, match="captum:Saliency.*no differentiable path") as err:
        attack(get_method("captum:Saliency"), model64, x64, TARGET)
    assert "\n" not in str(err.value)


def test_through_dds(model64, x64):
    from fvit.dds import DDS, DDSExplainer
    from fvit.denoise import SmallDDPM, small_unet_config

    den = SmallDDPM(16, small_unet_config(16, width=8), seed=0).double().eval()
    explainer = DDSExplainer("captum:InputXGradient", DDS(den, sigma=0.0, samples=2), fuse="mean")
    out = explainer(model64, x64, target=TARGET)
    assert out.method == "captum:InputXGradient+dds"
    samples = explainer.dds.denoise(x64).flatten(0, 1)
    per = get_method("captum:InputXGradient")(model64, samples, TARGET.repeat_interleave(2))
    expect = per.patch.view(3, 2, 4, 4).mean(1)  # DDS fuses in float32
    torch.testing.assert_close(out.patch.double(), expect, rtol=1e-5, atol=1e-6 * float(expect.abs().max()))


def test_missing_captum_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr now raises ImportError
    with pytest.raises(InputError, match=r"need captum: pip install 'fvit\[captum\]'") as err:
        get_method("captum:Saliency", abs=False)
    assert "\n" not in str(err.value)


def test_cli_explain_and_methods_listing(tmp_path):
    import numpy as np
    import typer
    from PIL import Image
    from typer.testing import CliRunner

    from fvit.cli.explain import register

    app = typer.Typer()
    register(app)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    r = CliRunner().invoke(app, ["explain", str(img), "--model", "tiny", "--no-pretrained", "--method",
                                 "captum:IntegratedGradients:n_steps=4", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "a.json").read_text())["method"] == "captum:IntegratedGradients:n_steps=4"
    listing = CliRunner().invoke(app, ["methods"]).output
    assert "captum:NAME" in listing and "integrated_gradients" in listing and "steps=32" in listing


def test_bench_explanation_attack_refuses_with_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from fvit.cli.bench import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    r = CliRunner().invoke(app, ["bench", "explanation-attack", "--data", "world:eval,2", "--model", "tiny",
                                 "--no-pretrained", "--batch-size", "2", "--no-progress", "--methods",
                                 "captum:Saliency", "--objectives", "topk", "--radii", "8/255", "--steps", "2",
                                 "--k", "5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "'captum:Saliency' has no differentiable path" in lines[0]
