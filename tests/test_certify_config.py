"""CertifyConfig / TightnessConfig: validation naming the field, canonical names, the stated
``dds_samples`` rule, whole records; and the one vote count (fvit.dds.class_counts) in certify."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fvit.certify import CertifyConfig, TightnessConfig
from fvit.certify.core import _counts
from fvit.errors import InputError


def test_defaults_are_the_documented_ones():
    c = CertifyConfig()
    assert (c.k, c.beta, c.alpha, c.n0, c.n, c.norm, c.linf_conversion, c.protocol, c.certificate, c.attention,
            c.mc_batch, c.max_batch) == (10, 0.8, 0.001, 100, 1000, "l2", "sqrt_d", "two_stage", "gaussian",
                                         "raw_attention", 32, None)
    assert c.k0 == 3  # floor((1 - 0.8) 10) + 1 in exact arithmetic
    t = TightnessConfig()
    assert (t.factors, t.properties, t.attack_steps, t.step_size, t.eot, t.check_samples, t.alpha_check, t.radius,
            t.gradient) == ((0.9, 1.0, 1.5, 2.0), ("prediction", "topk"), 20, None, 2, None, 0.001, "own", "auto")


@pytest.mark.parametrize("mc_batch, n, n0, protocol, expected", [
    (32, 1000, 100, "two_stage", 32),   # the cap
    (32, 10, 20, "two_stage", 20),      # never more than the larger stage needs
    (64, 6, 4, "two_stage", 6),
    (5, 3, 0, "one_stage", 3),
    (1, 1000, 100, "two_stage", 1),
])
def test_dds_samples_is_min_of_mc_batch_and_the_larger_stage(mc_batch, n, n0, protocol, expected):
    assert CertifyConfig(mc_batch=mc_batch, n=n, n0=n0, protocol=protocol).dds_samples == expected


@pytest.mark.parametrize("field, value, needle", [
    ("k", 0, "k must be >= 1"), ("k", 2.5, "k must be an integer"), ("beta", 0.0, "beta must be > 0"),
    ("beta", 1.5, "beta must be <= 1"), ("beta", "0.8", "strings such as '8/255'"), ("alpha", 1.0, "alpha must be < 1"),
    ("alpha", 0, "alpha must be > 0"), ("n", 0, "n must be >= 1"), ("n0", -1, "n0 must be >= 0"),
    ("norm", "l1", "norm must be one of l2, linf"), ("linf_conversion", "cube", "unknown l_inf conversion"),
    ("protocol", "three_stage", "unknown certification protocol"), ("certificate", "cohen2", "unknown certificate"),
    ("attention", "no_such_method", "unknown explanation method"), ("attention", 3, "attention must be"),
    ("mc_batch", 0, "mc_batch must be >= 1"), ("max_batch", 0, "max_batch must be >= 1"),
])
def test_certify_config_errors_name_the_field(field, value, needle):
    with pytest.raises(InputError, match=needle) as info:
        CertifyConfig(**{field: value})
    assert info.value.params == (field,) and str(info.value).startswith("CertifyConfig: ")


def test_two_stage_protocols_need_selection_samples():
    with pytest.raises(InputError, match="needs n0 >= 1") as info:
        CertifyConfig(n0=0, protocol="two_stage_bonferroni")
    assert info.value.params == ("n0",)
    one = CertifyConfig(n0=0, protocol="one-stage")
    assert one.protocol == "one_stage" and not one.uses_selection


def test_aliases_are_stored_canonical():
    c = CertifyConfig(protocol="cohen", certificate="hu", linf_conversion="standard", beta=1)
    assert (c.protocol, c.certificate, c.linf_conversion) == ("two_stage", "renyi-hu", "sqrt_d")
    assert c.beta == 1.0 and isinstance(c.beta, float)


def test_frozen_replace_and_json_record():
    c = CertifyConfig(k=3, beta=0.6, n0=5, n=30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.k = 4
    assert c.replace(n=40).n == 40 and c.n == 30
    with pytest.raises(InputError, match="unknown setting"):
        c.replace(sigma=0.1)
    record = json.loads(json.dumps(c.to_dict()))
    assert CertifyConfig(**record) == c  # the record rebuilds the settings


def test_a_callable_map_source_is_recorded_by_name():
    def my_maps(model, images):
        return images[:, 0]

    assert CertifyConfig(attention=my_maps).to_dict()["attention"] == "my_maps"


def test_tightness_config_validation():
    t = TightnessConfig(factors=[1, 2.5], properties=["topk"], step_size="reference")
    assert t.factors == (1.0, 2.5) and all(isinstance(f, float) for f in t.factors) and t.properties == ("topk",)
    assert TightnessConfig(step_size=0.01).step_size == 0.01
    assert TightnessConfig(gradient="auto").gradient_mode == "exact"
    assert TightnessConfig(gradient="bpda").gradient_mode == "bpda"
    for field, value, needle in (("factors", (), "must not be empty"), ("factors", (1.0, -1.0), "factors must be > 0"),
                                 ("factors", "1.5,2", "must be a tuple"), ("properties", ("topk", "topk"), "distinct"),
                                 ("properties", ("region",), "must be one of"), ("step_size", "1/255", "parsed by the"),
                                 ("step_size", 0.0, "step_size must be > 0"), ("eot", 0, "eot must be >= 1"),
                                 ("check_samples", 0, "check_samples must be >= 1"),
                                 ("alpha_check", 1.0, "alpha_check must be < 1"), ("radius", "mine", "radius must be"),
                                 ("gradient", "fd", "gradient must be")):
        with pytest.raises(InputError, match=needle) as info:
            TightnessConfig(**{field: value})
        assert info.value.params == (field,)


def test_votes_are_counted_by_class_counts():
    preds = torch.tensor([[0, 2, 2, 3], [1, 1, 1, 1], [4, 0, 4, 0]])
    counts = _counts(preds, 6)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [[1, 0, 2, 1, 0, 0], [0, 4, 0, 0, 0, 0], [2, 0, 0, 0, 2, 0]])
