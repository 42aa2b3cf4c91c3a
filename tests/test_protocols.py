"""Reproduction variants (issue: published protocols): parameterised methods, LRP rule sets,
start layer, AR clamp, relevance precision, learned sampler variance, respacing, q-sample noise,
weights tags, exact resize, protocol presets, device handling."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fvit.errors import FvitError, InputError
from fvit.explain import explain, get_method
from fvit.explain.attention import block_outputs, rollout_matrices
from fvit.explain.base import class_score
from fvit.explain.lrp import record_tape, relevance_pass
from fvit.explain.rules import add_relevance, add_relevance_plain, linear_zplus, linear_zplus_separate
from fvit.models import tiny_vit


@pytest.fixture(scope="module")
def vit2():
    return tiny_vit(num_classes=5, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, seed=3).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- parameters / specs
def test_method_parameters_spec_and_validation():
    r = get_method("rollout", start_layer=1)
    assert r.spec == "rollout:start_layer=1" and r.params == {"start_layer": 1}
    assert get_method("rollout").spec == "rollout"
    assert get_method("ta") is get_method("transformer-attribution")  # shared default instance
    lrp = get_method("lrp", rules="ORIG", relevance_dtype="float64")
    assert lrp.params == {"rules": "orig", "relevance_dtype": "float64"}
    assert lrp.spec == "lrp:rules=orig,relevance_dtype=float64"
    assert get_method("ar", clamp_negative=False).spec == "attribution_rollout:clamp_negative=false"
    with pytest.raises(InputError, match="no parameter 'start'"):
        get_method("rollout", start=1)
    with pytest.raises(InputError, match="must be a int"):
        get_method("rollout", start_layer=True)
    with pytest.raises(InputError, match="not one of"):
        get_method("lrp", rules="zplus")


def test_cli_method_specs():
    from fvit.cli.common import parse_methods

    ms = parse_methods("raw_attention,ta:start_layer=1,rules=orig,lrp,ar:clamp_negative=no")
    assert [m.spec for m in ms] == ["raw_attention", "transformer_attribution:start_layer=1,rules=orig", "lrp",
                                    "attribution_rollout:clamp_negative=false"]
    with pytest.raises(FvitError, match="true or false"):
        parse_methods("ar:clamp_negative=maybe")
    with pytest.raises(FvitError, match="no parameter"):
        parse_methods("gradcam:start_layer=1")


# ------------------------------------------------------------------------------- start layer
def test_rollout_start_layer_by_hand(vit2, images):
    with torch.no_grad(), vit2.record(grad=False) as rec:
        vit2(images)
    eye = torch.eye(rec.attentions[0].shape[-1])
    m1, m2 = [(a.mean(1) + eye) / (a.mean(1) + eye).sum(-1, keepdim=True) for a in rec.attentions]
    full = (m2 @ m1)[:, 0, 1:].reshape(-1, 4, 4)
    skip = m2[:, 0, 1:].reshape(-1, 4, 4)
    torch.testing.assert_close(explain(vit2, images, "rollout").patch, full)
    torch.testing.assert_close(explain(vit2, images, "rollout", start_layer=1).patch, skip)
    assert (full - skip).abs().max() > 1e-3  # the two differ on this model
    with pytest.raises(InputError, match="start_layer=2"):
        explain(vit2, images, "rollout", start_layer=2)


def test_transformer_attribution_start_layer_by_hand(vit2, images):
    x = images.clone().requires_grad_(True)
    with torch.enable_grad(), record_tape(vit2) as tape, vit2.record(grad=True) as rec:
        logits = vit2(x)
        tgt = logits.argmax(1)
        grads = torch.autograd.grad(class_score(logits, tgt), rec.attentions)
    rel = relevance_pass(vit2, tape, tgt, to_pixels=False)
    a1, a2 = [(g * r).clamp(min=0).mean(1) for g, r in zip(grads, rel.attn_relevance)]
    eye = torch.eye(a1.shape[-1])
    full = ((eye + a2) @ (eye + a1))[:, 0, 1:].reshape(-1, 4, 4)
    skip = a2[:, 0, 1:].reshape(-1, 4, 4)  # (I + A2)[CLS, 1:] = A2[CLS, 1:]
    torch.testing.assert_close(explain(vit2, images, "ta").patch, full)
    torch.testing.assert_close(explain(vit2, images, "ta", start_layer=1).patch, skip)
    assert (full - skip).abs().max() > 1e-6 * full.abs().max()


# ------------------------------------------------------------------------------- LRP rule sets
def test_linear_rules_by_hand():
    x = torch.tensor([[1.0, -2.0]])
    w = torch.tensor([[1.0, -1.0], [2.0, 3.0]])  # y_j = sum_i W_ji x_i
    r = torch.tensor([[1.0, 1.0]])
    # positive parts: Z+_0 = 1*1 = 1 (x0+ W00+), Z-_0 = (-2)(-1) = 2 (x1- W01-); Z+_1 = 2, Z-_1 = 0
    # ours: one denominator Z = Z+ + Z-: R_0 = 1*1/3 + 2*1/2 = 4/3 ; R_1 = (-2)(-1)/3 = 2/3  (sum 2)
    torch.testing.assert_close(linear_zplus(x, w, r), torch.tensor([[4 / 3, 2 / 3]]))
    # orig: own denominators: R_0 = 1*1/1 + 2*1/2 = 2 ; R_1 = (-2)(-1)/2 = 1 (sum 3: not conserved)
    torch.testing.assert_close(linear_zplus_separate(x, w, r), torch.tensor([[2.0, 1.0]]))


def test_add_rules_by_hand():
    a, b = torch.tensor([[3.0, -1.0]]), torch.tensor([[1.0, 2.0]])
    r = torch.tensor([[1.0, 1.0]])
    ra, rb = add_relevance_plain(a, b, r)  # a R / (a + b): [3/4, -1], b R / (a + b): [1/4, 2]
    torch.testing.assert_close(ra, torch.tensor([[0.75, -1.0]]))
    torch.testing.assert_close(rb, torch.tensor([[0.25, 2.0]]))
    ca, cb = add_relevance(a, b, r)  # sums -0.25 and 2.25, rescaled to |s|/(|sa|+|sb|) * 2
    torch.testing.assert_close(ca.sum(), torch.tensor(2 * 0.25 / 2.5))
    torch.testing.assert_close(cb.sum(), torch.tensor(2 * 2.25 / 2.5))


def test_lrp_rule_sets_differ_and_only_ours_conserves(vit2, images):
    with torch.no_grad(), record_tape(vit2) as tape:
        tgt = vit2(images).argmax(1)
    ours = relevance_pass(vit2, tape, tgt, rules="ours")
    orig = relevance_pass(vit2, tape, tgt, rules="orig")
    torch.testing.assert_close(ours.stack_input.sum((1, 2)), torch.ones(3), atol=1e-4, rtol=0)
    assert (orig.stack_input.sum((1, 2)) - 1).abs().max() > 1e-2
    e = explain(vit2, images, "lrp", rules="orig")
    torch.testing.assert_close(e.pixel, orig.pixel)
    assert e.method == "lrp:rules=orig"


def test_relevance_float64_is_float64_pass(vit2, images):
    e32 = explain(vit2, images, "lrp")
    e64 = explain(vit2, images, "lrp", relevance_dtype="float64")
    with torch.no_grad(), record_tape(vit2) as tape:
        tgt = vit2(images).argmax(1)
    ref = relevance_pass(vit2, tape, tgt, dtype=torch.float64).pixel
    assert e64.pixel.dtype == torch.float32
    torch.testing.assert_close(e64.pixel, ref.float())
    # the float64 pass is closer to itself than the float32 pass is (it is a different computation)
    assert (e32.pixel.double() - ref).abs().max() > (e64.pixel.double() - ref).abs().max()


# ---------------------------------------------------------------------------- AR clamp
def test_attribution_rollout_without_clamp_by_hand(vit2, images):
    tm = vit2.timm_model
    x = images.clone().requires_grad_(True)
    with torch.enable_grad(), vit2.record(grad=True) as rec, block_outputs(vit2) as outs:
        logits = vit2(x)
        tgt = logits.argmax(1)
        attrs = []
        for attn, xk in zip(rec.attentions, outs):
            g = torch.autograd.grad(class_score(tm.forward_head(tm.norm(xk)), tgt), attn, retain_graph=True)[0]
            attrs.append((attn * g).detach().amax(1) / 2)
    assert min(float(a.min()) for a in attrs) < 0  # negative attributions exist here
    ref = rollout_matrices(attrs)[:, 0, 1:].reshape(-1, 4, 4)
    ref_clamped = rollout_matrices([a.clamp(min=0) for a in attrs])[:, 0, 1:].reshape(-1, 4, 4)
    torch.testing.assert_close(explain(vit2, images, "ar", clamp_negative=False).patch, ref)
    torch.testing.assert_close(explain(vit2, images, "ar").patch, ref_clamped)


# ---------------------------------------------------------------------------- denoising
def test_respacing_follows_guided_diffusion():
    from fvit.denoise import linear_schedule

    sch = linear_schedule(1000)
    ts45 = sch.respace(45).timesteps.tolist()
    assert 499 in ts45 and 500 not in ts45  # 22 * 999/44 = 499.5; accumulated 499.4999... -> 499
    assert sch.respace(250).timesteps.tolist() == [round(i * 999 / 249) for i in range(250)]
    assert sch.respace(1).timesteps.tolist() == [0]
    assert sch.respace(1000).timesteps.tolist() == list(range(1000))


def test_learned_step_std_by_hand():
    from fvit.denoise.samplers import step_std

    a_t, a_s = 0.9, 0.95
    beta = 1 - a_t / a_s
    post = beta * (1 - a_s) / (1 - a_t)
    assert step_std(a_t, a_s, None) == pytest.approx(math.sqrt(post))
    v = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(step_std(a_t, a_s, v),
                               torch.tensor([post, beta, math.sqrt(post * beta)], dtype=torch.float64).sqrt())


def test_ancestral_uses_the_learned_variance():
    """2 ancestral steps t=10 -> 0 with eps = 0 and v = +1: the noise std is sqrt(beta_eff)."""
    from fvit.denoise import linear_schedule, parse_sampler

    sch = linear_schedule(1000)
    abar = sch.alphas_cumprod
    x_noisy = torch.full((1, 3, 4, 4), 0.1)
    eps_fn = lambda x, t: (torch.zeros_like(x), torch.ones_like(x))  # noqa: E731
    out = parse_sampler("ancestral:2")(eps_fn, sch, x_noisy, 10, torch.Generator().manual_seed(1))
    noise = torch.randn(x_noisy.shape, generator=torch.Generator().manual_seed(1))
    a_t, a_s = float(abar[10]), float(abar[0])
    x_t = math.sqrt(a_t) * x_noisy
    x0 = (x_t / math.sqrt(a_t)).clamp(-1, 1)
    c0 = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t)
    ct = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
    x_s = c0 * x0 + ct * x_t + math.sqrt(1 - a_t / a_s) * noise
    torch.testing.assert_close(out, (x_s / math.sqrt(a_s)).clamp(-1, 1))
    fixed = parse_sampler("ancestral:2")(lambda x, t: torch.zeros_like(x), sch, x_noisy, 10,
                                         torch.Generator().manual_seed(1))
    assert (fixed - out).abs().max() > 1e-3


def _learned_denoiser():
    from fvit.denoise import FunctionDenoiser, linear_schedule

    den = FunctionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(1000))
    den.learned_variance = True
    den._eps_var = lambda x, t: (torch.zeros_like(x), torch.ones_like(x))
    return den


def test_dds_sampler_variance_and_noise_settings():
    from fvit.dds import DDS
    from fvit.denoise import FunctionDenoiser, linear_schedule

    plain = FunctionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(1000))
    learned = _learned_denoiser()
    assert DDS(learned, denoise="ancestral:5").sampler_variance == "learned"
    assert DDS(learned, denoise="ancestral:5", variance="fixed-small").sampler_variance == "fixed-small"
    assert DDS(plain, denoise="ancestral:5").sampler_variance == "fixed-small"
    assert DDS(learned).sampler_variance == "none"  # one-shot draws no reverse-step noise
    assert "variance=learned" in repr(DDS(learned, denoise="fvit-demo"))
    with pytest.raises(FvitError, match="predicts its variance"):
        DDS(plain, variance="learned")
    d = DDS(plain, noise="q-sample")
    ratio = float(linear_schedule(1000).noise_to_signal[15]) / 2
    assert d.t_star == 15 and d.noise_std == pytest.approx(ratio)
    assert (d.noise_std / (8 / 255)) ** 2 == pytest.approx(1.016, abs=1e-3)  # the 1.6 %
    assert DDS(plain).noise_std == pytest.approx(8 / 255)
    assert DDS(plain, noise="q-sample", variant="no-denoise").noise_std == pytest.approx(8 / 255)
    assert d.settings()["noise"] == "q-sample"
    with pytest.raises(FvitError, match="fvit-demo chain"):
        DDS(plain, noise="q-sample", denoise="fvit-demo")


def test_dds_q_sample_start_matches_q_sample():
    """One-shot with an oracle-free check: the noisy start sqrt(abar)(2(x+delta)-1) with the q-sample
    std equals sqrt(abar)(2x-1) + sqrt(1-abar) eps for the same standard normal draw."""
    from fvit.dds import DDS
    from fvit.denoise import FunctionDenoiser, linear_schedule

    sch = linear_schedule(1000)
    seen = {}

    def eps_fn(x, t):
        seen["x_t"] = x.clone()
        return torch.zeros_like(x)

    d = DDS(FunctionDenoiser(eps_fn, sch), noise="q-sample", samples=1)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    d.denoise(x, torch.Generator().manual_seed(5))
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    a = float(sch.alphas_cumprod[15])
    torch.testing.assert_close(seen["x_t"], math.sqrt(a) * (2 * x - 1) + math.sqrt(1 - a) * e)


def test_dds_logits_run_on_the_model_device():
    from fvit.dds import DDS

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))
            self.seen = []

        def forward(self, x):
            self.seen.append(x.device)
            return torch.zeros(x.shape[0], 3)

    m = Model()
    DDS(None, sigma=0).logits(m, torch.rand(2, 1, 3, 4, 4))
    assert m.seen and all(d.type == "meta" for d in m.seen)


# ---------------------------------------------------------------------------- weights, data, presets
def test_weights_tag():
    import timm

    from fvit.models import load_model
    from fvit.models.loading import PAPER_WEIGHTS, weights_tag
    from fvit.models.wrapper import ExplainableViT

    assert load_model("tiny", pretrained=False).weights == "random"
    m = ExplainableViT(timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False))
    assert weights_tag(m, True, None) == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert weights_tag(m, True, "w.pth") == "checkpoint:w.pth"
    assert PAPER_WEIGHTS["vit_base_patch16_224"] == "vit_base_patch16_224.orig_in21k_ft_in1k"


def test_imagenet_val_exact_resize(tmp_path):
    from fvit.data import open_dataset

    d = tmp_path / "n01440764"
    d.mkdir()
    arr = (np.random.default_rng(0).random((40, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(d / "a.png")
    exact = open_dataset(f"imagenet-val:{tmp_path}", 16, image_resize="exact")[0]["image"]
    ref = np.asarray(Image.fromarray(arr).resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    torch.testing.assert_close(exact, torch.from_numpy(ref).permute(2, 0, 1))
    crop = open_dataset(f"imagenet-val:{tmp_path}", 16)[0]["image"]
    assert (crop - exact).abs().max() > 0.05
    with pytest.raises(FvitError, match="image resize"):
        open_dataset(f"imagenet-val:{tmp_path}", 16, image_resize="stretch")


def test_protocol_presets_resolve_every_choice():
    from fvit.attacks.spec import AttackSpec
    from fvit.bench.protocols import apply_protocol
    from fvit.bench.settings import BenchSettings, MethodsSpec, ModelSpec
    from fvit.dds import DDSConfig

    def settings(experiment, methods=("transformer_attribution",), **kw):
        return BenchSettings(experiment, methods=MethodsSpec(methods=tuple(methods)), **kw)

    o = apply_protocol(settings("segmentation", [
        "raw_attention", "rollout", "lrp", "ta", "ar", get_method("rollout", start_layer=0),
        get_method("ta", relevance_dtype="float64")], protocol="chefer2021", dds=DDSConfig(samples=2),
        model=ModelSpec("vit_base_patch16_224")))
    assert [m.spec for m in o.methods.methods] == [
        "raw_attention", "rollout:start_layer=1", "lrp:rules=orig", "transformer_attribution:start_layer=1",
        "attribution_rollout:clamp_negative=false", "rollout:start_layer=1",
        "transformer_attribution:start_layer=1,relevance_dtype=float64"]
    assert o.model.name == "vit_base_patch16_224.orig_in21k_ft_in1k" and o.data.image_resize == "exact"
    assert (o.dds.noise, o.dds.variance, o.dds.samples, o.methods.fuse) == ("q-sample", "auto", 2, "max-drop10")
    assert apply_protocol(o).to_dict() == o.to_dict()  # idempotent
    explicit = apply_protocol(settings("segmentation", [get_method("rollout", start_layer=2), "lrp+dds"],
                                       protocol="chefer2021"))
    assert explicit.methods.methods[0].spec == "rollout:start_layer=2"  # explicit parameters win
    assert explicit.methods.methods[1][0].spec == "lrp:rules=orig" and explicit.methods.methods[1][1] is True
    r = apply_protocol(settings("perturbation", protocol="re-fvit", model=ModelSpec("deit_base_patch16_224"),
                                dds=DDSConfig(samples=5), attack=AttackSpec("pgd", steps=3)))
    assert (r.dds.samples, r.methods.fuse, r.dds.mapping, r.dds.denoise, r.dds.noise, r.attack.step_size) == (
        2, "mean", "fvit-demo", "fvit-demo:250", "paper", "reference")
    assert r.attack.steps == 3 and r.model.name == "deit_base_patch16_224.fb_in1k"
    assert [m.spec for m in r.methods.methods] == ["transformer_attribution:start_layer=1"]
    hu = apply_protocol(settings("segmentation", ["rollout", "lrp"], protocol="re-fvit"))
    assert [m.spec for m in hu.methods.methods] == ["rollout", "lrp"]  # [Re] Table 5 "Hu et al." column
    assert hu.dds is None and hu.attack is None  # nothing to override: none used
    plain = settings("segmentation")
    assert apply_protocol(plain) is plain  # the default preset changes nothing


def test_bench_cli_protocol_chefer2021_end_to_end(tmp_path):
    """`fvit bench segmentation --protocol chefer2021` on the world with DDS: results.json records
    every resolved setting."""
    from typer.testing import CliRunner
    import typer

    from fvit.cli.bench import register
    from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config

    den = save_small_ddpm(SmallDDPM(32, config=small_unet_config(image_size=32, width=8)), tmp_path / "ddpm")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, [
        "bench", "segmentation", "--data", "world:eval,2", "--model", "tiny", "--no-pretrained",
        "--batch-size", "2", "--no-progress", "--methods", "rollout,lrp,ar", "--attack", "none",
        "--figure", "0", "--denoiser", str(den), "--samples", "1", "--denoise", "ancestral:2",
        "--protocol", "chefer2021", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "results.json").read_text())["settings"]
    assert s["protocol"] == "chefer2021" and s["weights"] == "random" and s["image_resize"] == "exact"
    assert s["methods"]["rollout:start_layer=1+dds"]["params"] == {"start_layer": 1}
    assert s["methods"]["lrp:rules=orig"]["params"]["rules"] == "orig"
    assert s["methods"]["attribution_rollout:clamp_negative=false"]["params"] == {"clamp_negative": False}
    assert s["dds"]["noise"] == "q-sample" and s["dds"]["sampler_variance"] == "fixed-small"
    assert s["dds"]["denoise"] == "ancestral:2"


def test_every_typed_option_beats_every_preset():
    """Each option a preset sets, typed at any value (here the fvit defaults), is kept by every
    preset; what the preset did set is listed by `preset_fields`, never a typed path."""
    from fvit.bench.protocols import PROTOCOLS, apply_protocol, preset_fields
    from fvit.cli.bench import bench_settings

    kw = {"data": "world:eval,2", "out": "unused", "model": "vit_base_patch16_224", "checkpoint": None,
          "pretrained": False, "methods": ["rollout", "rollout:start_layer=0", "lrp:rules=ours", "ta:start_layer=0",
                                           "ar:clamp_negative=true"],
          "dds_mode": "both", "denoiser": "PATH", "sigma": "8/255", "samples": 8, "denoise": "one-shot",
          "mapping": "carlini", "fuse": "max-drop10", "attack": "pgd", "eps": "8/255", "steps": 2,
          "step_size": "paper", "topk": 0, "figure": 0, "seed": 0, "batch_size": 2, "progress": False,
          "noise": "paper", "variance": "fixed-small", "image_resize": "crop", "country": "NLD"}
    typed = set(kw) - {"methods"}
    for name in ("chefer2021", "re-fvit"):
        s = apply_protocol(bench_settings("segmentation", {**kw, "protocol": name}, typed))
        assert s.protocol == name and PROTOCOLS.get(name).dds and PROTOCOLS.get(name).method_params
        assert (s.model.name, s.data.image_resize, s.methods.fuse) == ("vit_base_patch16_224", "crop", "max-drop10")
        assert (s.dds.samples, s.dds.denoise, s.dds.mapping, s.dds.noise, s.dds.variance) == (
            8, "one-shot", "carlini", "paper", "fixed-small")
        assert (s.attack.steps, s.attack.step_size) == (2, "paper")
        # item 0 was typed without parameters: the preset's; items 1-4 typed theirs at the defaults
        first = {"chefer2021": "rollout:start_layer=1", "re-fvit": "rollout"}[name]
        assert [m.spec for m in s.methods.methods] == [first, "rollout", "lrp", "transformer_attribution",
                                                       "attribution_rollout"]
        assert preset_fields(s) == ({"methods.0.start_layer": 1} if name == "chefer2021" else {})
        # nothing typed: the preset sets every value it names
        untyped = apply_protocol(bench_settings("segmentation", {**kw, "protocol": name}, ()))
        fields = preset_fields(untyped)
        assert fields["model.name"] == "vit_base_patch16_224.orig_in21k_ft_in1k" == untyped.model.name
        assert fields["data.image_resize"] == "exact" == untyped.data.image_resize
        assert fields.get("attack.step_size") == ("reference" if name == "re-fvit" else None)
        assert fields.get("dds.noise") == untyped.dds.noise == ("q-sample" if name == "chefer2021" else "paper")
        assert not any(k.startswith(("methods.1.", "methods.2.", "methods.3.", "methods.4.")) for k in fields)


def test_bench_cli_typed_flags_beat_the_preset(tmp_path):
    """The issue's commands: `--protocol re-fvit --samples 8 --denoise one-shot` runs 8 samples
    one-shot; `--protocol chefer2021 --methods rollout,rollout:start_layer=0` runs both rollouts;
    results.json lists the values the preset set (settings.preset_fields) and the typed paths."""
    from typer.testing import CliRunner
    import typer

    from fvit.cli.bench import register
    from fvit.denoise.small_unet import SmallDDPM, save_small_ddpm, small_unet_config

    den = save_small_ddpm(SmallDDPM(32, config=small_unet_config(image_size=32, width=8)), tmp_path / "ddpm")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    common = ["--data", "world:eval,2", "--model", "tiny", "--no-pretrained", "--batch-size", "2", "--no-progress",
              "--attack", "none", "--figure", "0", "--denoiser", str(den)]
    r = CliRunner().invoke(app, ["bench", "segmentation", *common, "--methods", "ta", "--protocol", "re-fvit",
                                 "--samples", "8", "--denoise", "one-shot", "--out", str(tmp_path / "re")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "re" / "results.json").read_text())
    dds = rec["settings"]["dds"]
    assert (dds["samples"], dds["denoise"], dds["mapping"], dds["noise"]) == (8, "one-shot", "fvit-demo", "paper")
    assert rec["settings"]["preset_fields"] == {
        "methods.0.start_layer": 1, "data.image_resize": "exact", "methods.fuse": "mean",
        "dds.mapping": "fvit-demo", "dds.noise": "paper", "dds.variance": "auto"}
    assert set(rec["bench_settings"]["given"]) >= {"dds.samples", "dds.denoise", "dds.denoiser", "model.name"}

    r = CliRunner().invoke(app, ["bench", "segmentation", *common, "--dds", "off", "--protocol", "chefer2021",
                                 "--methods", "rollout,rollout:start_layer=0", "--out", str(tmp_path / "ch")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "ch" / "results.json").read_text())
    assert list(rec["results"]) == ["rollout:start_layer=1", "rollout"]
    assert rec["settings"]["methods"]["rollout"]["params"] == {"start_layer": 0}
    assert rec["settings"]["preset_fields"] == {"methods.0.start_layer": 1, "data.image_resize": "exact"}
    assert "methods.1.start_layer" in rec["bench_settings"]["given"]
