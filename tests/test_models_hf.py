"""Hugging Face transformers models behind fvit's model seam (fvit.models.backends.hf).

The references are transformers itself (its logits, its ``output_attentions``, its image processor)
and timm models whose weights are written into transformers models by this file's own inverse
mapping (q / k / v split from timm's fused qkv): the conversion must give back the timm model's
every map. Nothing is downloaded: models are built from configs with random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

from fvit.cli import app  # noqa: E402
from fvit.errors import CheckpointError, FvitError, UnsupportedModelError  # noqa: E402
from fvit.explain import available_methods, get_method  # noqa: E402
from fvit.models import ExplainableViT, load_model  # noqa: E402
from fvit.models.backends import hf as hf_backend  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: two sizes: square 32 px / 4 heads / exact GELU, and 24 x 32 px / 3 heads / tanh GELU, no qkv
#: bias, LayerNorm eps 0.1 (a wrong eps, activation or bias layout changes the logits visibly)
SIZES = {
    "small": dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, num_labels=5),
    "odd": dict(image_size=(24, 32), patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                intermediate_size=80, num_labels=7, hidden_act="gelu_new", qkv_bias=False, layer_norm_eps=0.1),
}
CLASSES = {
    "vit": (transformers.ViTConfig, transformers.ViTForImageClassification),
    "deit": (transformers.DeiTConfig, transformers.DeiTForImageClassification),
    "deit-teacher": (transformers.DeiTConfig, transformers.DeiTForImageClassificationWithTeacher),
}


def _hf(kind: str, size: str, seed: int = 0, **over):
    config_cls, model_cls = CLASSES[kind]
    config = config_cls(**{**SIZES[size], **over}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # LayerNorms / tokens off their 1 / 0 initialisation
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _normalise(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", list(CLASSES))
def test_logits_and_attention_equal_transformers(kind, size):
    hf = _hf(kind, size)
    model = load_model(hf, device="cpu")
    assert isinstance(model, ExplainableViT)
    prefix = 1 if kind == "vit" else 2
    h, w = hf.config.image_size if size == "odd" else (32, 32)
    assert model.num_prefix_tokens == prefix and model.input_size == (h, w)
    assert model.num_tokens == prefix + (h // 8) * (w // 8) and model.depth == hf.config.num_hidden_layers
    mean, std = ((0.5,) * 3, (0.5,) * 3) if kind == "vit" else IMAGENET  # transformers' defaults per type
    assert model.mean == pytest.approx(mean) and model.std == pytest.approx(std)
    x = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=_normalise(x, mean, std), output_attentions=True)
        with model.record() as rec:
            logits = model(x)
    assert (logits - ref.logits).abs().max() <= 1e-4
    assert len(rec.attentions) == len(ref.attentions)
    for ours, theirs in zip(rec.attentions, ref.attentions):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= 1e-5
    if kind == "deit-teacher":  # transformers' logits: the mean of the class and distillation heads
        tm = model.timm_model
        with torch.no_grad():
            tokens = tm.forward_features(model.normalize(x))
            mean_heads = (tm.head(tokens[:, 0]) + tm.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(mean_heads, ref.logits, atol=1e-4)


def _png_batch(tmp_path, n, size, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(a).save(paths[-1])
    return arrays, paths


def test_folder_reads_processor_normalisation_and_labels(tmp_path):
    hf = _hf("vit", "small")
    hf.config.id2label = {i: f"thing {i}" for i in range(5)}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    folder = tmp_path / "vit"
    hf.save_pretrained(folder)
    processor = transformers.ViTImageProcessor(do_resize=False, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    processor.save_pretrained(folder)
    model = load_model(f"hf:{folder}", device="cpu")
    assert model.mean == pytest.approx((0.4, 0.5, 0.6)) and model.std == pytest.approx((0.2, 0.3, 0.25))
    assert model.class_names == tuple(f"thing {i}" for i in range(5)) and model.class_name(3) == "thing 3"
    assert model.name == f"hf:{folder}" and model.weights == f"hf:{folder}"
    arrays, _ = _png_batch(tmp_path, 2, (32, 32))
    # the reference: transformers' own processor on the 8-bit images, transformers' own model
    pixel_values = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]
    x01 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert (model(x01) - hf(pixel_values=pixel_values).logits).abs().max() <= 1e-4


def test_normalization_follows_rescale_and_normalize_flags():
    mean, std = hf_backend.normalization({"image_mean": [127.5] * 3, "image_std": [127.5] * 3, "do_rescale": False},
                                         "vit")
    assert mean == pytest.approx((0.5,) * 3) and std == pytest.approx((0.5,) * 3)  # (x255 - 127.5) / 127.5
    mean, std = hf_backend.normalization({"do_normalize": False, "rescale_factor": 1 / 127.5}, "deit")
    assert mean == pytest.approx((0.0,) * 3) and std == pytest.approx((0.5,) * 3)  # x255 / 127.5 = x01 / 0.5
    assert hf_backend.normalization(None, "deit") == IMAGENET


def test_deit_teacher_folder_round_trip(tmp_path):
    hf = _hf("deit-teacher", "odd")
    hf.save_pretrained(tmp_path / "deit")  # no preprocessor_config.json: transformers' DeiT default (ImageNet)
    model = load_model(f"hf:{tmp_path / 'deit'}", device="cpu")
    assert type(model.timm_model).__name__ == "VisionTransformerDistilled" and model.mean == IMAGENET[0]
    x = torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        assert (model(x) - hf(pixel_values=_normalise(x, *IMAGENET)).logits).abs().max() <= 1e-4


def _as_transformers4(state: dict, base: str) -> dict:
    """transformers 5 key names -> the names transformers 4 wrote (encoder.layer.N.attention.attention.query)."""
    out = {}
    for key, value in state.items():
        key = key.replace(f"{base}.layers.", f"{base}.encoder.layer.")
        for new, old in (("attention.q_proj", "attention.attention.query"),
                         ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"),
                         ("attention.o_proj", "attention.output.dense"),
                         ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
            key = key.replace(new, old)
        out[key] = value
    return out


@pytest.mark.parametrize("kind", list(CLASSES))
def test_transformers4_weight_names_convert_alike(kind):
    hf = _hf(kind, "small")
    base = "vit" if kind == "vit" else "deit"
    class_name = type(hf).__name__
    arch = hf_backend.architecture(hf.config, class_name, "x")
    state = hf.state_dict()
    if not any(".layers." in k for k in state):
        pytest.skip("this transformers writes transformers 4 names already")
    new = hf_backend.timm_state(state, base, arch, class_name)
    old = hf_backend.timm_state(_as_transformers4(state, base), base, arch, class_name)
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    broken = dict(state)
    broken.pop(f"{base}.layernorm.bias")
    with pytest.raises(CheckpointError, match=f"weight {base}.layernorm.bias is missing"):
        hf_backend.timm_state(broken, base, arch, class_name)


# ---------------------------------------------------------------------------------- timm twins
def _timm_twin(kind: str, seed: int = 3):
    """timm's ViT ('vit'), ViT with one register token after CLS ('deit': DeiT's distillation token
    without its head) or VisionTransformerDistilled ('deit-teacher')."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    cls = VisionTransformerDistilled if kind == "deit-teacher" else VisionTransformer
    extra = {"reg_tokens": 1} if kind == "deit" else {}
    tm = cls(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5,
             global_pool="token", **extra).eval()
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return tm


def _attr(module, *names):
    for name in names:  # transformers 5 names, then transformers 4 names
        obj = module
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AttributeError(names)


def _copy(dst, src):
    dst.weight.copy_(src.weight)
    if dst.bias is not None:
        dst.bias.copy_(src.bias)


def _hf_from_timm(tm, kind: str):
    """A transformers model holding the timm model's weights, written by hand (the inverse of the
    conversion: qkv split into q, k, v)."""
    config_cls, model_cls = CLASSES[kind]
    config = config_cls(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=5, layer_norm_eps=1e-6, attn_implementation="eager")
    hf = model_cls(config).eval()
    base = hf.vit if kind == "vit" else hf.deit
    with torch.no_grad():
        emb = base.embeddings
        emb.cls_token.copy_(tm.cls_token)
        emb.position_embeddings.copy_(tm.pos_embed)
        _copy(emb.patch_embeddings.projection, tm.patch_embed.proj)
        if kind != "vit":
            emb.distillation_token.copy_(tm.dist_token if kind == "deit-teacher" else tm.reg_token)
        layers = _attr(base, "layers", "encoder.layer")
        for layer, blk in zip(layers, tm.blocks):
            _copy(layer.layernorm_before, blk.norm1)
            _copy(layer.layernorm_after, blk.norm2)
            d = blk.attn.qkv.out_features // 3
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                old = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}[name]
                lin = _attr(layer.attention, name, f"attention.{old}")
                lin.weight.copy_(blk.attn.qkv.weight[j * d:(j + 1) * d])
                lin.bias.copy_(blk.attn.qkv.bias[j * d:(j + 1) * d])
            _copy(_attr(layer.attention, "o_proj", "output.dense"), blk.attn.proj)
            _copy(_attr(layer, "mlp.fc1", "intermediate.dense"), blk.mlp.fc1)
            _copy(_attr(layer, "mlp.fc2", "output.dense"), blk.mlp.fc2)
        _copy(base.layernorm, tm.norm)
        if kind == "deit-teacher":
            _copy(hf.cls_classifier, tm.head)
            _copy(hf.distillation_classifier, tm.head_dist)
        else:
            _copy(hf.classifier, tm.head)
    return hf


def _twins(kind: str):
    tm = _timm_twin(kind)
    hf = _hf_from_timm(tm, kind)
    mean, std = IMAGENET
    return ExplainableViT(tm, name="timm", mean=mean, std=std), load_model(hf, mean=mean, std=std, device="cpu"), hf


@pytest.fixture(scope="module", params=list(CLASSES))
def twins(request):
    return _twins(request.param)


def test_every_method_gives_the_timm_models_maps(twins):
    timm_model, converted, hf = twins
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the hand-written weights are transformers' model: same logits
        assert (hf(pixel_values=converted.normalize(x)).logits - timm_model(x)).abs().max() <= 1e-4
    assert len(available_methods()) >= 6
    for name in available_methods():
        method = get_method(name)
        a, b = method(timm_model, x), method(converted, x)
        assert torch.equal(a.target, b.target), name
        torch.testing.assert_close(b.patch, a.patch, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(b.pixel, a.pixel, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def ddpm():
    from fvit.denoise import SmallDDPM, small_unet_config

    return SmallDDPM(32, small_unet_config(32, width=8), seed=0)


def test_dds_attack_and_certify_run_on_an_hf_model(ddpm):
    from fvit.attacks import get_attack, get_explanation_attack
    from fvit.certify import certify
    from fvit.dds import DDS, DDSExplainer

    timm_model, converted, _ = _twins("vit")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    dds = DDS(ddpm, sigma=0.1, samples=2)
    smoothed = [DDSExplainer(get_method("rollout"), dds)(m, x, keys=["a", "b"]) for m in (timm_model, converted)]
    torch.testing.assert_close(smoothed[1].patch, smoothed[0].patch, rtol=1e-4, atol=1e-6)
    attack = get_explanation_attack("topk", 8 / 255, steps=2, k=4)
    adv = [attack.run(get_method("raw_attention"), m, x).adv for m in (timm_model, converted)]
    assert (adv[1] - x).abs().max() <= 8 / 255 + 1e-6
    torch.testing.assert_close(adv[1], adv[0], rtol=0, atol=1e-5)
    pgd = [get_attack("pgd", 8 / 255, steps=2, seed=0)(m, x) for m in (timm_model, converted)]  # the classifier attack
    torch.testing.assert_close(pgd[1], pgd[0], rtol=0, atol=1e-5)
    assert 0 < (pgd[1] - x).abs().max() <= 8 / 255 + 1e-6
    kw = dict(k=4, n0=4, n=8, attention="rollout", seed=0)
    results = [certify(m, dds, x, **kw) for m in (timm_model, converted)]
    assert [r.to_dict() for r in results[1]] == [r.to_dict() for r in results[0]]


# ---------------------------------------------------------------------------------- refusals
def _swin_folder(tmp_path, with_weights: bool):
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[2],
                                     window_size=4, num_labels=3)
    folder = tmp_path / "swin"
    if with_weights:
        transformers.SwinForImageClassification(config).save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    return folder


def test_refusals_name_the_model_and_the_reason_before_loading(tmp_path, monkeypatch):
    folder = _swin_folder(tmp_path, with_weights=False)  # no weights: refused from the config alone
    with pytest.raises(UnsupportedModelError, match=r"hf:.*swin: Swin uses shifted-window attention"):
        load_model(f"hf:{folder}")
    beit = tmp_path / "beit"
    transformers.BeitConfig(num_labels=3).save_pretrained(beit)
    with pytest.raises(UnsupportedModelError, match="relative position bias"):
        load_model(f"hf:{beit}")
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    (hybrid / "config.json").write_text(json.dumps({"model_type": "vit-hybrid"}))
    with pytest.raises(UnsupportedModelError, match="hybrid CNN stem"):
        load_model(f"hf:{hybrid}")
    headless = tmp_path / "headless"
    transformers.ViTModel(transformers.ViTConfig(**{**SIZES["small"], "num_labels": 2})).save_pretrained(headless)
    with pytest.raises(UnsupportedModelError, match="ViTModel: it has no classifier head"):
        load_model(f"hf:{headless}")
    with pytest.raises(UnsupportedModelError, match="Swin"):  # an in-memory Swin
        load_model(transformers.SwinForImageClassification(transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[2], window_size=4)))
    with pytest.raises(CheckpointError, match="no such folder"):
        load_model(f"hf:{tmp_path / 'missing'}")
    monkeypatch.setattr(hf_backend, "hub_offline", lambda: True)
    with pytest.raises(CheckpointError, match="no folder 'missing-folder' here and no Hub model"):
        load_model("hf:missing-folder")
    vit = tmp_path / "vit"
    _hf("vit", "small").save_pretrained(vit)
    with pytest.raises(CheckpointError, match="checkpoint=PATH is for timm and torchvision"):
        load_model(f"hf:{vit}", checkpoint=tmp_path / "w.pth")
    with pytest.raises(FvitError, match="num_classes cannot be changed"):
        load_model(f"hf:{vit}", num_classes=3)


def test_hub_id_from_a_warm_cache(tmp_path, monkeypatch):
    """A Hub id resolves from the local Hugging Face cache (its real layout: refs/main -> snapshot),
    with the hub offline: config, weights and processor come from the cached snapshot."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--fvit-test--tiny-vit"
    snapshot = repo / "snapshots" / commit
    hf = _hf("vit", "small", seed=7)
    hf.save_pretrained(snapshot)
    transformers.ViTImageProcessor(image_mean=[0.3, 0.4, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_backend, "hub_offline", lambda: True)
    model = load_model("hf:fvit-test/tiny-vit", device="cpu")
    assert model.name == "hf:fvit-test/tiny-vit" and model.mean == pytest.approx((0.3, 0.4, 0.5))
    assert model.weights == f"hf:fvit-test/tiny-vit@{commit}"  # the snapshot the cache resolved to
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - hf(pixel_values=_normalise(x, (0.3, 0.4, 0.5), (0.5,) * 3)).logits).abs().max() <= 1e-4
    with pytest.raises(CheckpointError, match="no Hub model 'fvit-test/other' in the local Hugging Face cache"):
        load_model("hf:fvit-test/other")


def test_no_pretrained_folder_is_the_config_with_random_weights(tmp_path):
    folder = tmp_path / "vit"
    _hf("vit", "odd").save_pretrained(folder)
    saved, fresh = load_model(f"hf:{folder}", device="cpu"), load_model(f"hf:{folder}", pretrained=False, device="cpu")
    assert fresh.weights == "random" and saved.weights == f"hf:{folder}"
    assert (fresh.input_size, fresh.depth, fresh.num_heads, fresh.num_classes) == ((24, 32), 3, 3, 7)
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert (fresh(x) - saved(x)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------- CLI
def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    hf = _hf("vit", "small", seed=5)
    hf.config.id2label = {i: f"label-{i}" for i in range(5)}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    folder = tmp_path_factory.mktemp("hf") / "vit"
    hf.save_pretrained(folder)
    return folder


def test_cli_explain_on_a_saved_folder(tmp_path, vit_folder):
    _, paths = _png_batch(tmp_path, 2, (40, 36))
    out = tmp_path / "out"
    r = _run(["explain", *paths, "--model", f"hf:{vit_folder}", "--method", "rollout", "--device", "cpu",
              "--out", out])
    assert r.exit_code == 0, r.output
    from fvit.data.images import load_images

    model = load_model(f"hf:{vit_folder}", device="cpu")
    expect = get_method("rollout")(model, load_images(paths, model.input_size))
    for i, p in enumerate(paths):
        record = json.loads((out / f"{p.stem}.json").read_text())
        c = int(expect.logits[i].argmax())
        assert record["predicted_class"] == c and record["predicted_label"] == f"label-{c}"
        assert record["model"] == f"hf:{vit_folder}"
        np.testing.assert_allclose(record["patch_map"], expect.patch[i].numpy(), rtol=1e-5, atol=1e-7)
        assert f"{p.stem}: class {c} (label-{c})" in r.output


def test_cli_bench_and_certify_on_a_saved_folder(tmp_path, vit_folder, ddpm):
    from fvit.denoise.small_unet import save_small_ddpm

    model = ["--model", f"hf:{vit_folder}"]
    r = _run(["bench", "segmentation", "--data", "world:eval,2", *model, "--batch-size", "2", "--no-progress",
              "--methods", "rollout", "--device", "cpu", "--out", tmp_path / "seg"])
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "seg" / "results.json").read_text())
    assert results["bench_settings"]["model"]["name"] == f"hf:{vit_folder}"
    assert set(results["results"]) == {"rollout"}
    den = save_small_ddpm(ddpm, tmp_path / "ddpm")
    _, paths = _png_batch(tmp_path, 1, (32, 32))
    r = _run(["certify", paths[0], *model, "--denoiser", den, "--samples", "4", "--n0", "2", "--k", "4",
              "--device", "cpu"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("spec_of, needle", [
    (lambda t: "hf:missing-folder", "no folder 'missing-folder' here"),
    (lambda t: f"hf:{_swin_folder(t, with_weights=True)}", "Swin uses shifted-window attention"),
    (lambda t: "hf:", "give a folder written by save_pretrained or a Hub id"),
    (lambda t: "hugginface:x", "unknown model family 'hugginface'"),
], ids=["missing", "swin", "empty", "typo"])
def test_cli_bad_specs_exit_2_with_one_line(tmp_path, monkeypatch, spec_of, needle):
    monkeypatch.setattr(hf_backend, "hub_offline", lambda: True)
    _, paths = _png_batch(tmp_path, 1, (32, 32))
    r = _run(["explain", paths[0], "--model", spec_of(tmp_path), "--device", "cpu", "--out", tmp_path / "o"])
    assert r.exit_code == 2 and needle in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "img0.json").exists()
