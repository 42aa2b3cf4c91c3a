"""fvit.models: wrapper attributes, normalisation, attention recording, checkpoints, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fvit.errors import CheckpointError, InputError, UnknownNameError
from fvit.models import ExplainableViT, load_model, tiny_vit

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=7)


def _small(**kw):
    return load_model("vit_tiny_patch16_224", pretrained=False, **{**SMALL, **kw})


def test_attributes_are_read_from_the_model():
    m = _small()
    assert isinstance(m, ExplainableViT) and not m.training
    assert (m.input_size, m.patch_size, m.grid_size) == ((32, 32), (8, 8), (4, 4))
    assert (m.num_prefix_tokens, m.num_tokens, m.num_classes, m.num_heads, m.depth) == (1, 17, 7, 2, 2)
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.5, 0.5, 0.5)  # timm pretrained_cfg of vit_tiny
    d = load_model("deit_tiny_distilled_patch16_224", pretrained=False, **SMALL)
    assert (d.num_prefix_tokens, d.num_tokens) == (2, 18)
    assert d.mean == pytest.approx((0.485, 0.456, 0.406))
    t = tiny_vit(img_size=24, patch_size=6, embed_dim=32, depth=3, num_heads=4)
    assert (t.grid_size, t.depth, t.num_heads, t.num_classes) == ((4, 4), 3, 4, 10)


def test_forward_normalises_inside():
    m = _small()
    x = torch.rand(2, 3, 32, 32)
    expect = m.timm_model((x - 0.5) / 0.5)
    assert torch.allclose(m(x), expect, atol=1e-6)
    with pytest.raises(InputError, match=r"\(16, 16\)"):
        m(torch.rand(1, 3, 16, 16))


def test_record_attention_and_gradients():
    m = _small()
    x = torch.rand(3, 3, 32, 32)
    fused_before = [blk.attn.fused_attn for blk in m.timm_model.blocks]
    with torch.no_grad(), m.record() as rec:
        m(x)
    assert [a.shape for a in rec.attentions] == [(3, 2, 17, 17)] * 2
    assert torch.allclose(rec.attentions[0].sum(-1), torch.ones(3, 2, 17), atol=1e-5)  # post-softmax
    with m.record(grad=True) as rec:
        logits = m(x)
        logits[:, 1].sum().backward()
    assert all(g is not None and g.shape == (3, 2, 17, 17) for g in rec.gradients)
    assert [blk.attn.fused_attn for blk in m.timm_model.blocks] == fused_before
    assert all(not mod._forward_hooks for mod in m.modules())
    m.zero_grad(set_to_none=True)


def _save(state, path, wrap=None):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)


@pytest.mark.parametrize("filename, wrap", [("w.safetensors", None), ("w.pth", None), ("w.pt", "model"),
                                            ("w2.pth", "state_dict")])  # fmt: skip
def test_checkpoint_round_trip(tmp_path, filename, wrap):
    src = _small()
    state = {k: v.contiguous() for k, v in src.timm_model.state_dict().items()}
    path = tmp_path / filename
    _save(state, path, wrap)
    loaded = load_model("vit_tiny_patch16_224", checkpoint=path, **SMALL)  # pretrained=True ignored
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), src(x))


def test_wrapper_state_dict_round_trip(tmp_path):
    src = tiny_vit(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    path = tmp_path / "wrapper.pth"
    torch.save(src.state_dict(), path)  # keys prefixed "timm_model."
    loaded = load_model("tiny", pretrained=False, checkpoint=path, img_size=16, patch_size=4, embed_dim=32,
                        depth=1, num_heads=2, seed=5)  # fmt: skip
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(loaded(x), src(x))


def test_mismatched_checkpoint_names_file_and_keys(tmp_path):
    state = _small(num_classes=3).timm_model.state_dict()
    state.pop("cls_token")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_model("vit_tiny_patch16_224", checkpoint=path, **SMALL)
    msg = str(err.value)
    assert "other.safetensors" in msg and "missing cls_token" in msg and "head.weight" in msg


def test_unreadable_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_model("tiny", checkpoint=bad)
    with pytest.raises(CheckpointError, match="nope.safetensors: no such file"):
        load_model("tiny", checkpoint=tmp_path / "nope.safetensors")


def test_hub_unreachable_suggests_alternatives(monkeypatch):
    import timm

    def offline(*_a, **_k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError, match="checkpoint=PATH.*pretrained=False") as err:
        load_model("vit_base_patch16_224")
    # the library speaks of its own arguments; the CLI adds its flags (tests/test_cli_robustness.py)
    assert "--" not in str(err.value) and err.value.params == ("checkpoint", "pretrained")


def test_unknown_names_and_tiny_without_weights():
    with pytest.raises(UnknownNameError, match="vit_bass_patch16_224"):
        load_model("vit_bass_patch16_224", pretrained=False)
    with pytest.raises(CheckpointError, match="no pretrained weights; pass checkpoint=PATH or pretrained=False"):
        load_model("tiny")


def test_explaining_leaves_every_submodule_training_flag_as_it_was():
    from fvit.explain import get_method
    from fvit.models import eval_mode

    m = tiny_vit(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    m.train()
    m.timm_model.blocks.eval()  # mixed flags: the wrapper and head train, the blocks do not
    before = [mod.training for mod in m.modules()]
    with eval_mode(m):
        assert not any(mod.training for mod in m.modules())
    assert [mod.training for mod in m.modules()] == before
    fresh = tiny_vit(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    flags = [mod.training for mod in fresh.modules()]
    get_method("rollout")(fresh, torch.rand(1, 3, 16, 16))
    assert [mod.training for mod in fresh.modules()] == flags  # the timm model stays in eval mode


@pytest.mark.parametrize("name, match", [
    ("vit_tiny*", r"'vit_tiny\*' is a pattern \(\d+ timm models match: vit_tiny_patch16_224"),
    ("vit_tiny_patch16_224.no_such_tag", "no pretrained tag 'no_such_tag' for vit_tiny_patch16_224 .*augreg_in21k"),
    ("VIT_TINY_PATCH16_224", "unknown model 'VIT_TINY_PATCH16_224'.*similar timm names: vit_tiny_patch16_224"),
    ("vit_tiny_patch16_224 ", "unknown model 'vit_tiny_patch16_224 '"),
    ("tiny.x", "unknown model 'tiny.x'"),
], ids=["pattern", "unknown-tag", "wrong-case", "trailing-space", "local-with-tag"])
def test_load_model_refuses_what_timm_refuses(name, match):
    with pytest.raises(UnknownNameError, match=match):
        load_model(name, pretrained=False)


def test_load_model_names_resolve_to_one_model(monkeypatch):
    import timm

    assert load_model("TINY", pretrained=False).name == "tiny"  # the registry's canonical name
    m = load_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False, img_size=32, depth=1)
    assert m.timm_model.pretrained_cfg["tag"] == "augreg_in21k"
    # a local name that timm also knows is ambiguous
    real = timm.is_model
    monkeypatch.setattr(timm, "is_model", lambda n: n == "tiny" or real(n))
    with pytest.raises(UnknownNameError, match="'tiny' is ambiguous"):
        load_model("tiny", pretrained=False)


def test_mean_std_override_and_unknown_family():
    m = load_model("tiny", pretrained=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 1.0))
    x = torch.rand(2, 3, 32, 32)
    expect = m.timm_model((x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
                          / torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1))
    assert torch.allclose(m(x), expect, atol=1e-6)
    assert load_model(m, mean=(0.5, 0.5, 0.5)) is m and m.mean == (0.5, 0.5, 0.5)  # an ExplainableViT: as it is
    with pytest.raises(InputError, match=r"std=\(1.0, 0.0, 1.0\): expected 3 finite numbers \(std > 0\)"):
        load_model("tiny", pretrained=False, std=(1.0, 0.0, 1.0))
    with pytest.raises(UnknownNameError, match=r"unknown model family 'hff' \(did you mean hf:\?\); families: timm:"):
        load_model("hff:google/vit-base-patch16-224")
    assert load_model("timm:tiny", pretrained=False).name == "tiny"  # the explicit timm prefix


def test_timm_class_names_from_timms_imagenet_metadata():
    import timm

    from fvit.models.loading import timm_class_names

    tm = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False, img_size=32, depth=1)
    names = timm_class_names(tm)
    assert len(names) == 1000 and names[281] == "tabby, tabby cat" and names[0] == "tench, Tinca tinca"
    few = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False, img_size=32, depth=1,
                            num_classes=7)
    assert timm_class_names(few) is None  # a new head: ImageNet's names do not apply
    assert ExplainableViT(tm, class_names=names).class_name(281) == "tabby, tabby cat"
