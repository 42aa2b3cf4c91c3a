"""The Explainer protocol: plain methods and DDSExplainer take the same call, targets may be callables."""

from __future__ import annotations

import pytest
import torch

from fvit.dds import DDS, DDSExplainer
from fvit.denoise import FunctionDenoiser, linear_schedule
from fvit.explain import ClassTarget, Explainer, RankTarget, get_method
from fvit.models import tiny_vit


@pytest.fixture(scope="module")
def model():
    return tiny_vit(num_classes=5, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, seed=1)


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))


def _dds(samples=3):
    den = FunctionDenoiser(lambda x_t, t: 0.1 * x_t, linear_schedule(1000))
    return DDS(den, sigma=0.1, samples=samples, seed=2)


def test_plain_and_smoothed_explainers_share_one_call(model, x):
    plain, smooth = get_method("gradcam"), DDSExplainer("gradcam", _dds())
    for explainer in (plain, smooth):
        assert isinstance(explainer, Explainer)
        out = explainer(model, x, None, generator=None, keys=["a", "b", "c"])
        assert out.patch.shape == (3, 4, 4)
    assert (plain.spec, smooth.spec) == ("gradcam", "gradcam+dds")
    # a plain method is deterministic: generator / keys change nothing
    g = torch.Generator().manual_seed(9)
    assert torch.equal(plain(model, x, generator=g).patch, plain(model, x, keys=["p", "q", "r"]).patch)


def test_predict_is_what_a_none_target_explains(model, x):
    with torch.no_grad():
        logits = model(x)
    plain = get_method("rollout")
    assert plain.predict(model, x).tolist() == logits.argmax(1).tolist()
    dds = _dds(samples=5)
    smooth = DDSExplainer("rollout", dds)
    keys = ["a", "b", "c"]
    counts = torch.zeros(3, 5, dtype=torch.long)  # the majority vote recomputed from the samples
    with torch.no_grad():
        per_sample = model(dds.denoise(x, keys=keys).flatten(0, 1)).argmax(1).view(3, 5)
    for i in range(3):
        for c in per_sample[i].tolist():
            counts[i, c] += 1
    assert smooth.predict(model, x, keys=keys).tolist() == counts.argmax(1).tolist()
    assert smooth(model, x, keys=keys).target.tolist() == counts.argmax(1).tolist()


def test_callable_targets(model, x):
    with torch.no_grad():
        logits = model(x)
    second = logits.argsort(dim=1, descending=True)[:, 1]
    m = get_method("transformer_attribution")
    torch.testing.assert_close(m(model, x, RankTarget(1)).patch, m(model, x, second).patch)
    assert m(model, x, RankTarget(1)).target.tolist() == second.tolist()
    assert torch.equal(m(model, x, RankTarget(0)).target, m(model, x).target)
    assert m(model, x, ClassTarget(3)).target.tolist() == [3, 3, 3]
    assert m(model, x, lambda lg: lg.argmin(1)).target.tolist() == logits.argmin(1).tolist()
    # DDS applies the callable to the mean logits over its samples
    dds = _dds(samples=4)
    keys = ["a", "b", "c"]
    with torch.no_grad():
        mean = model(dds.denoise(x, keys=keys).flatten(0, 1)).view(3, 4, -1).mean(1)
    out = DDSExplainer("rollout", dds)(model, x, RankTarget(1), keys=keys)
    assert out.target.tolist() == mean.argsort(dim=1, descending=True)[:, 1].tolist()
    with pytest.raises(Exception, match="rank 7"):
        m(model, x, RankTarget(7))
