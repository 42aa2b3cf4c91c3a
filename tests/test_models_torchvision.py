"""torchvision Vision Transformers behind fvit's model seam (fvit.models.backends.torchvision_vit).

References: torchvision's own forward, attention computed here from each block's
``in_proj_weight`` (not through fvit), timm models whose weights this file writes into torchvision
models by hand, and the ViT paper's sizes for the named models. Models are small and random
(``weights=None``); nothing is downloaded."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer
from typer.testing import CliRunner

from fvit.cli import app
from fvit.errors import CheckpointError, FvitError, UnknownNameError, UnsupportedModelError
from fvit.explain import available_methods, get_method
from fvit.models import ExplainableViT, load_model
from fvit.models.backends import torchvision_vit as tv_backend

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SIZES = {
    "small": dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5),
    # LayerNorm eps 0.1 (not torchvision's 1e-6): a conversion that ignores eps changes the logits
    "wide": dict(image_size=48, patch_size=16, num_layers=3, num_heads=2, hidden_dim=24, mlp_dim=40, num_classes=6,
                 norm_layer=partial(torch.nn.LayerNorm, eps=0.1)),
}
TEST_NAME = "vit_fvit_test_small"  # registered with torchvision's model registry by the `registered` fixture


def _tv(size: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    model = VisionTransformer(**{**SIZES[size], **over}).eval()
    with torch.no_grad():  # LayerNorms / class token off their 1 / 0 initialisation
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _normalise(x):
    mean, std = IMAGENET
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _attention_by_hand(tv_model, x):
    """Each block's post-softmax attention from its own in_proj_weight, on the block's input."""
    inputs = []
    handles = [blk.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
               for blk in tv_model.encoder.layers]
    with torch.no_grad():
        tv_model(_normalise(x))
    for h in handles:
        h.remove()
    maps = []
    for blk, z in zip(tv_model.encoder.layers, inputs):
        y = blk.ln_1(z)
        mha = blk.self_attention
        q, k, _ = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        b, t, d = q.shape
        h = mha.num_heads
        q, k = (a.reshape(b, t, h, d // h).transpose(1, 2) for a in (q, k))
        maps.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1))
    return maps


@pytest.mark.parametrize("size", list(SIZES))
def test_logits_and_attention_equal_torchvision(size):
    tv_model = _tv(size)
    model = load_model(tv_model, device="cpu")
    s = SIZES[size]
    grid = s["image_size"] // s["patch_size"]
    assert (model.input_size, model.grid_size, model.num_prefix_tokens) == ((s["image_size"],) * 2, (grid, grid), 1)
    assert (model.depth, model.num_heads, model.num_classes) == (s["num_layers"], s["num_heads"], s["num_classes"])
    assert model.mean == IMAGENET[0] and model.std == IMAGENET[1] and model.weights == "in-memory"
    x = torch.rand(3, 3, s["image_size"], s["image_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tv_model(_normalise(x))
        with model.record() as rec:
            logits = model(x)
    assert (logits - ref).abs().max() <= 1e-4
    expect = _attention_by_hand(tv_model, x)
    assert len(rec.attentions) == len(expect)
    for ours, theirs in zip(rec.attentions, expect):
        assert ours.shape == theirs.shape == (3, s["num_heads"], grid * grid + 1, grid * grid + 1)
        assert (ours - theirs).abs().max() <= 1e-5


def _tv_from_timm(seed: int = 3):
    """A timm ViT and a torchvision ViT holding its weights, written by hand (in_proj = qkv)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(seed)
    tm = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5,
                 global_pool="token", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    tv_model = VisionTransformer(**SIZES["small"]).eval()
    pairs = [(tv_model.class_token, tm.cls_token), (tv_model.encoder.pos_embedding, tm.pos_embed),
             (tv_model.conv_proj.weight, tm.patch_embed.proj.weight),
             (tv_model.conv_proj.bias, tm.patch_embed.proj.bias),
             (tv_model.encoder.ln.weight, tm.norm.weight), (tv_model.encoder.ln.bias, tm.norm.bias),
             (tv_model.heads.head.weight, tm.head.weight), (tv_model.heads.head.bias, tm.head.bias)]
    for layer, blk in zip(tv_model.encoder.layers, tm.blocks):
        a = layer.self_attention
        pairs += [(a.in_proj_weight, blk.attn.qkv.weight), (a.in_proj_bias, blk.attn.qkv.bias),
                  (a.out_proj.weight, blk.attn.proj.weight), (a.out_proj.bias, blk.attn.proj.bias),
                  (layer.ln_1.weight, blk.norm1.weight), (layer.ln_1.bias, blk.norm1.bias),
                  (layer.ln_2.weight, blk.norm2.weight), (layer.ln_2.bias, blk.norm2.bias),
                  (layer.mlp[0].weight, blk.mlp.fc1.weight), (layer.mlp[0].bias, blk.mlp.fc1.bias),
                  (layer.mlp[3].weight, blk.mlp.fc2.weight), (layer.mlp[3].bias, blk.mlp.fc2.bias)]
    with torch.no_grad():
        for dst, src in pairs:
            dst.copy_(src)
    return tm, tv_model


def test_every_method_gives_the_timm_models_maps():
    tm, tv_model = _tv_from_timm()
    timm_model = ExplainableViT(tm, name="timm", mean=IMAGENET[0], std=IMAGENET[1])
    converted = load_model(tv_model, device="cpu")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the hand-written weights are torchvision's model: same logits
        assert (tv_model(_normalise(x)) - timm_model(x)).abs().max() <= 1e-4
    for name in available_methods():
        method = get_method(name)
        a, b = method(timm_model, x), method(converted, x)
        assert torch.equal(a.target, b.target), name
        torch.testing.assert_close(b.patch, a.patch, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(b.pixel, a.pixel, rtol=1e-4, atol=1e-6, msg=name)


#: the ViT paper's Table 1 sizes (layers, width, MLP, heads) and the patch of each name
PAPER = {"vit_b_16": (12, 768, 3072, 12, 16), "vit_b_32": (12, 768, 3072, 12, 32), "vit_l_16": (24, 1024, 4096, 16, 16),
         "vit_l_32": (24, 1024, 4096, 16, 32), "vit_h_14": (32, 1280, 5120, 16, 14)}


def test_named_models_map_to_their_architecture():
    for name, (depth, width, mlp, heads, patch) in PAPER.items():
        probe = tv_backend._probe(f"tv:{name}", name, {})  # on the meta device: nothing allocated
        arch = tv_backend.architecture(probe, f"tv:{name}")
        assert (arch.depth, arch.embed_dim, arch.mlp_dim, arch.num_heads, arch.patch_size) == \
               (depth, width, mlp, heads, (patch, patch)), name
        assert (arch.img_size, arch.num_classes, arch.eps, arch.act) == ((224, 224), 1000, 1e-6, "gelu")
    enum = torchvision.models.get_model_weights("vit_b_16")
    assert tv_backend._stats(enum.IMAGENET1K_V1) == IMAGENET
    names = tv_backend._class_names(enum.IMAGENET1K_V1, 1000)
    assert len(names) == 1000 and names[281] == "tabby" and tv_backend._class_names(None, 5) is None


def test_refusals_before_any_work():
    with pytest.raises(UnsupportedModelError, match="tv:resnet50: ResNet is not a VisionTransformer"):
        load_model("tv:resnet50")
    with pytest.raises(UnsupportedModelError, match="tv:swin_t: Swin uses shifted-window attention"):
        load_model("tv:swin_t")
    with pytest.raises(UnknownNameError, match="no model 'vit_b_17'.*similar: vit_b_16"):
        load_model("tv:vit_b_17")
    with pytest.raises(UnknownNameError, match="vit_b_16 has no weights 'NOPE' .*IMAGENET1K_V1"):
        load_model("tv:vit_b_16.NOPE")  # checked before any download
    stems = [ConvStemConfig(8, 4, 2), ConvStemConfig(8, 3, 4)]
    stem = VisionTransformer(**{**SIZES["small"], "conv_stem_configs": stems})
    with pytest.raises(UnsupportedModelError, match="hybrid CNN stem"):
        load_model(stem)
    with pytest.raises(UnsupportedModelError, match="representation layer"):
        load_model(VisionTransformer(**SIZES["small"], representation_size=16))
    with pytest.raises(UnsupportedModelError, match="tv:ResNet: ResNet is not a VisionTransformer"):
        load_model(torchvision.models.resnet18(weights=None, num_classes=3))
    with pytest.raises(UnknownNameError, match="model object torch.nn.modules.linear.Linear is not one fvit converts"):
        load_model(torch.nn.Linear(2, 2))


def test_pretrained_weights_path_without_download(monkeypatch):
    """`tv:vit_b_32.IMAGENET1K_V1` through torchvision's own builder and weights enum; only the
    file read is replaced (seeded random tensors of the checkpoint's shapes, no network)."""
    from torchvision.models._api import WeightsEnum

    calls = []
    b32 = dict(image_size=224, patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    with torch.device("meta"):
        shapes = VisionTransformer(**b32).state_dict()
    g = torch.Generator().manual_seed(0)
    state = {k: 0.02 * torch.randn(v.shape, generator=g) for k, v in shapes.items()}

    def fake_state_dict(self, *args, **kwargs):
        calls.append(self.name)
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_state_dict)
    model = load_model("tv:vit_b_32.IMAGENET1K_V1", device="cpu")
    assert calls == ["IMAGENET1K_V1"] and model.weights == "tv:vit_b_32.IMAGENET1K_V1"
    assert (model.input_size, model.patch_size, model.num_classes) == ((224, 224), (32, 32), 1000)
    assert (model.mean, model.std) == IMAGENET and model.class_name(281) == "tabby"
    with torch.device("meta"):
        reference = VisionTransformer(**b32)
    reference.load_state_dict(state, assign=True)
    reference.eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(x) - reference(_normalise(x))).abs().max() <= 1e-4
    with pytest.raises(FvitError, match="the pretrained weights fix num_classes"):
        load_model("tv:vit_b_32", num_classes=10)


@pytest.fixture()
def registered(monkeypatch):
    """A small ViT builder in torchvision's own model registry (as a user's custom builder is)."""
    from torchvision.models import _api

    def builder(*, weights=None, progress=True, **kwargs):
        return VisionTransformer(**{**SIZES["small"], **kwargs})

    monkeypatch.setitem(_api.BUILTIN_MODELS, TEST_NAME, builder)
    return TEST_NAME


def test_checkpoint_loads_and_sizes_are_read_from_it(tmp_path, registered):
    tv_model = _tv("small", seed=4)
    state = {k: v.contiguous() for k, v in tv_model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = load_model(f"tv:{registered}", checkpoint=path, device="cpu")
    assert model.weights == f"checkpoint:{path}" and model.name == f"tv:{registered}"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - tv_model(_normalise(x))).abs().max() <= 1e-4
    # old torchvision key names (mlp.linear_1 / linear_2) and a wrapped .pth load the same
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in state.items()}
    torch.save({"model": old}, tmp_path / "old.pth")
    with torch.no_grad():
        assert torch.equal(load_model(f"tv:{registered}", checkpoint=tmp_path / "old.pth", device="cpu")(x), model(x))
    # a 48 px / 7-class checkpoint of the same builder: image size and classes are read from the file
    bigger = _tv("small", image_size=48, num_classes=7)
    torch.save(bigger.state_dict(), tmp_path / "big.pth")
    m48 = load_model(f"tv:{registered}", checkpoint=tmp_path / "big.pth", device="cpu")
    assert m48.input_size == (48, 48) and m48.num_classes == 7
    with pytest.raises(CheckpointError, match=r"not fit torchvision vit_b_16: .*conv_proj.weight: \(32, 3, 8, 8\)"):
        load_model("tv:vit_b_16", checkpoint=path)  # a checkpoint of the wrong size, refused before building
    with pytest.raises(CheckpointError, match="does not fit torchvision"):
        load_model(f"tv:{registered}", checkpoint=path, num_classes=3)


# ---------------------------------------------------------------------------------- CLI
def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _pngs(tmp_path, n=2):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_cli_explain_and_bench_on_a_checkpoint(tmp_path, registered):
    tv_model = _tv("small", seed=6)
    path = tmp_path / "w.pth"
    torch.save(tv_model.state_dict(), path)
    paths = _pngs(tmp_path)
    spec = ["--model", f"tv:{registered}", "--checkpoint", path]
    r = _run(["explain", *paths, *spec, "--method", "gradcam", "--device", "cpu", "--out", tmp_path / "out"])
    assert r.exit_code == 0, r.output
    from fvit.data.images import load_images

    model = load_model(f"tv:{registered}", checkpoint=path, device="cpu")
    expect = get_method("gradcam")(model, load_images(paths, (32, 32)))
    for i, p in enumerate(paths):
        record = json.loads((tmp_path / "out" / f"{p.stem}.json").read_text())
        assert record["predicted_class"] == int(expect.logits[i].argmax()) and record["predicted_label"] is None
        np.testing.assert_allclose(record["patch_map"], expect.patch[i].numpy(), rtol=1e-5, atol=1e-7)
    r = _run(["bench", "segmentation", "--data", "world:eval,2", *spec, "--batch-size", "2", "--no-progress",
              "--methods", "raw_attention", "--device", "cpu", "--out", tmp_path / "seg"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "seg" / "results.json").read_text())["settings"]["weights"] == f"checkpoint:{path}"
    from fvit.denoise import SmallDDPM, small_unet_config
    from fvit.denoise.small_unet import save_small_ddpm

    den = save_small_ddpm(SmallDDPM(32, small_unet_config(32, width=8), seed=0), tmp_path / "ddpm")
    r = _run(["certify", paths[0], *spec, "--denoiser", den, "--samples", "4", "--n0", "2", "--k", "4",
              "--device", "cpu"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args_of, needle", [
    (lambda t: ["--model", "tv:resnet50"], "tv:resnet50: ResNet is not a VisionTransformer"),
    (lambda t: ["--model", "tv:vit_b_16", "--checkpoint", _small_checkpoint(t)], "does not fit torchvision vit_b_16"),
    (lambda t: ["--model", "tv:vit_b_16", "--checkpoint", t / "missing.pth"], "no such file"),
], ids=["resnet50", "wrong-size", "missing-checkpoint"])
def test_cli_bad_specs_exit_2_with_one_line(tmp_path, args_of, needle):
    paths = _pngs(tmp_path, 1)
    r = _run(["explain", paths[0], *args_of(tmp_path), "--device", "cpu", "--out", tmp_path / "o"])
    assert r.exit_code == 2 and needle in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def _small_checkpoint(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(_tv("small").state_dict(), path)
    return path


def test_cli_bench_refuses_a_bad_model_before_any_row(tmp_path):
    r = _run(["bench", "segmentation", "--data", "world:eval,2", "--model", "tv:resnet50", "--no-progress",
              "--device", "cpu", "--out", tmp_path / "seg"])
    assert r.exit_code == 2 and "tv:resnet50: ResNet is not a VisionTransformer" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "seg" / "rows.jsonl").exists()
