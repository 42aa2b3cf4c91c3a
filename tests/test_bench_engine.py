"""The experiment engine: registry, settings, store config, JSON sanitiser, a new entry in one file,
and the certify entry (rows rebuilt into run_tightness's report; resume)."""

import json
from dataclasses import dataclass

import pytest
import torch

from fvit.attacks.spec import AttackSpec
from fvit.bench.engine import (EXPERIMENTS, Experiment, experiment_names, get_experiment, json_ready, make_context,
                               needs_dds, register_experiment, resolve_settings, run_entry, run_experiment)
from fvit.bench.settings import BenchSettings, DataSpec, MethodsSpec, RunSpec
from fvit.bench.store import ResultsStore
from fvit.data import open_dataset
from fvit.dds import DDS, DDSConfig
from fvit.denoise import FunctionDenoiser, linear_schedule
from fvit.errors import FvitError, InputError
from fvit.models import tiny_vit
from fvit.settings import Settings


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_vit(num_classes=8, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    data = open_dataset("world:eval,4", 32)
    with torch.no_grad():
        data.labels = model(data.images).argmax(1)  # certifiable labels for a random model
    dds = DDS(FunctionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(1000)), sigma=8 / 255, samples=2)
    return model, data, dds


def test_registry_lists_every_entry_and_refuses_unknown_names():
    assert experiment_names() == ["segmentation", "perturbation", "ablation", "sensitivity", "explanation-attack",
                                  "frontier", "certify"]
    with pytest.raises(FvitError, match="unknown experiment 'nope'; available: segmentation, perturbation"):
        get_experiment("nope")
    with pytest.raises(FvitError, match="unknown experiment"):
        resolve_settings(BenchSettings("nope"))  # settings are plain values; the engine resolves the entry
    with pytest.raises(FvitError, match="unknown experiment 'nope'"):
        run_experiment(BenchSettings("nope"))


def test_settings_do_not_import_the_engine_and_entries_are_imported_explicitly():
    """No circle bench/settings.py <-> bench/engine.py (nor a lazy import inside a function), and
    the entries are registered by plain import statements in fvit/bench/__init__.py, no importlib."""
    import ast
    from pathlib import Path

    import fvit.bench
    import fvit.bench.settings

    imported = {n.module for n in ast.walk(ast.parse(Path(fvit.bench.settings.__file__).read_text()))
                if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith("fvit.bench") for m in imported), imported
    init = ast.parse(Path(fvit.bench.__file__).read_text())
    entries = [a.name for n in init.body if isinstance(n, ast.ImportFrom) and n.module == "fvit.bench"
               for a in n.names]
    assert entries == ["segmentation", "perturbation", "ablation", "sensitivity", "explanation_attack", "frontier",
                       "certify"]
    assert [get_experiment(n).__module__ for n in experiment_names()] == [f"fvit.bench.{e}" for e in entries]
    engine_src = Path(fvit.bench.engine.__file__).read_text()
    assert "importlib" not in engine_src and "ENTRY_MODULES" not in engine_src


def test_settings_are_typed_and_validated():
    with pytest.raises(InputError, match="radii must be a number, got '8/255'"):
        BenchSettings("perturbation", params=get_experiment("perturbation").Params(radii=("8/255",)))
    with pytest.raises(InputError, match="params of 'segmentation' must be SegmentationParams"):
        resolve_settings(BenchSettings("segmentation", params=get_experiment("perturbation").Params()))
    with pytest.raises(InputError, match="dds_mode must be one of off, on, both"):
        MethodsSpec(dds_mode="sometimes")
    with pytest.raises(InputError, match="eps must be a number"):
        AttackSpec("pgd", eps="8/255")
    s = BenchSettings("segmentation", methods=MethodsSpec(methods=("rollout", "ta"), dds_mode="both"))
    assert list(s.methods.resolve()) == ["rollout", "rollout+dds", "transformer_attribution",
                                         "transformer_attribution+dds"]
    assert needs_dds(s) and not needs_dds(BenchSettings("segmentation")) and needs_dds(BenchSettings("sensitivity"))
    d = resolve_settings(s).to_dict()
    assert s.params is None and resolve_settings(s).params == get_experiment("segmentation").Params()
    assert d["methods"]["methods"] == ["rollout", "ta"] and d["params"] == {"topk": 0, "with_clean": False,
                                                                            "figure": 0}


def test_store_config_leaves_out_row_keys_and_report_choices():
    entry = get_experiment("perturbation")()
    P = get_experiment("perturbation").Params
    a = BenchSettings("perturbation", params=P(radii=(0.0,)), data=DataSpec("world", limit=3))
    b = a.replace(params=P(radii=(0.0, 8 / 255), only_correct=True), run=RunSpec(progress=False, device="cpu"))
    assert entry.store_config(a) == entry.store_config(b)  # radii key rows; the rest is report / device
    # the image subset is part of the identity (issue 25: a --limit 12 rerun of a --limit 24 folder)
    assert entry.store_config(a.replace(data=DataSpec("world", limit=5)))["limit"] == 5
    assert entry.store_config(a)["limit"] == 3
    c = a.replace(params=P(radii=(0.0,), positive=False))
    assert entry.store_config(c)["params"]["positive"] is False and entry.store_config(c) != entry.store_config(a)
    assert entry.store_config(a)["attack"] == AttackSpec().as_config()  # the entry's default attack


def test_json_ready_is_strict_json():
    obj = {"a": float("inf"), "b": [float("nan"), 1.5, (2, 3)], "c": torch.tensor(0.25), "d": AttackSpec("fgsm", 0.5)}
    out = json_ready(obj)
    assert out == {"a": None, "b": [None, 1.5, [2, 3]], "c": 0.25,
                   "d": {"name": "fgsm", "eps": 0.5, "steps": None, "step_size": None, "options": {}}}
    json.dumps(out, allow_nan=False)  # would raise on a non-finite value left over


def test_one_json_sanitiser_one_noise_key_rule_one_model_device():
    """settings.to_dict, results files (engine) and certificate records (certify) share
    fvit.settings.json_ready; DDS and certification share fvit.seeding.noise_keys; every layer
    asks fvit.utils.module_device where a model lives."""
    import numpy as np

    from fvit import seeding, settings, utils
    from fvit.bench import engine
    from fvit.certify import core as certify_core
    from fvit.dds import core as dds_core
    from fvit.explain import get_method

    assert engine.json_ready is settings.json_ready and certify_core.noise_keys is seeding.noise_keys
    assert dds_core.noise_keys is seeding.noise_keys and dds_core.module_device is utils.module_device
    obj = {"r": float("inf"), "t": (1.0, float("nan"), -float("inf")), "m": get_method("rollout", start_layer=1),
           "a": np.arange(2), "s": np.float32(0.5)}
    assert settings.json_ready(obj, nonfinite="string") == {"r": "inf", "t": [1.0, "nan", "-inf"],
                                                            "m": "rollout:start_layer=1", "a": [0, 1], "s": 0.5}
    assert settings.json_ready(obj)["t"] == [1.0, None, None]
    with pytest.raises(InputError, match="nonfinite must be one of null, string"):
        settings.json_ready(1.0, nonfinite="drop")
    x = torch.zeros(2, 3, 4, 4)
    x[1] = 1
    keys = seeding.noise_keys(x)
    assert keys == seeding.content_keys(x) and keys[0] != keys[1] and seeding.noise_keys(x, [3, "b"]) == ["3", "b"]
    with pytest.raises(FvitError, match="1 noise keys for 2 images"):
        seeding.noise_keys(x, ["a"])
    assert utils.module_device(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert utils.module_device(object(), "meta") == torch.device("meta")  # no parameters: the default
    assert utils.module_device(torch.nn.ReLU()) == torch.device("cpu")


@dataclass(frozen=True)
class _CountParams(Settings):
    scale: int = 1
    unkeyed = ()


class _CountBright(Experiment):
    """A new experiment in a few lines: per image, scale x the number of pixels brighter than 0.5."""

    name = "count-bright-test"
    Params = _CountParams
    uses_methods = False

    def settings(self, ctx):
        return ["count"]

    def compute(self, batch, bctx, ctx):
        counts = (batch["image"] > 0.5).flatten(1).sum(1) * ctx.params.scale
        return [{"id": i, "setting": "count", "n": int(c)} for i, c in zip(batch["id"], counts)]

    def summarise(self, out, ctx):
        return {"total": sum(r["n"] for r in out.rows)}


def test_a_new_entry_runs_with_store_and_resume(setup, tmp_path):
    model, data, _ = setup
    register_experiment(_CountBright)
    try:
        s = BenchSettings("count-bright-test", params=_CountParams(scale=3), run=RunSpec(batch_size=1, progress=False))
        expect = 3 * int((data.images > 0.5).sum())
        store = ResultsStore(tmp_path, get_experiment(s.experiment)().store_config(s))
        first = run_entry(make_context(s, model=model, dataset=data), store=store, max_batches=2)
        assert first["total"] == 3 * int((data.images[:2] > 0.5).sum())  # killed after two images
        record = run_experiment(s, model=model, dataset=data, store=ResultsStore(tmp_path, store.config))
        assert record["results"] == {"total": expect} and record["bench_settings"]["params"] == {"scale": 3}
    finally:
        EXPERIMENTS._items.pop("count_bright_test", None)


def test_in_memory_run_writes_nothing(setup, tmp_path, monkeypatch):
    model, data, dds = setup
    monkeypatch.chdir(tmp_path)
    s = BenchSettings("segmentation", methods=MethodsSpec(methods=("rollout",), dds_mode="both"),
                      dds=dds.config, run=RunSpec(batch_size=2, progress=False))
    record = run_experiment(s, model=model, dataset=data, dds=dds)
    assert list(record["results"]) == ["rollout", "rollout+dds"] and "files" not in record
    assert record["settings"]["dds"] == dds.settings() and list(tmp_path.iterdir()) == []
    assert record["settings"]["methods"] == {"rollout": {"name": "rollout", "params": {"start_layer": 0}},
                                             "rollout+dds": {"name": "rollout", "params": {"start_layer": 0}}}


# ------------------------------------------------------------------------------------------------
# certify entry
# ------------------------------------------------------------------------------------------------

def _certify_settings(batch_size):
    from fvit.bench.certify import CertifyConfig, CertifyParams, TightnessConfig

    cert = CertifyConfig(k=3, n0=8, n=16, attention="raw_attention", mc_batch=2)
    tight = TightnessConfig(factors=(1.0, 2.0), attack_steps=1, eot=1, check_samples=8)
    return BenchSettings("certify", dds=DDSConfig(sigma=8 / 255, samples=2),
                         run=RunSpec(batch_size=batch_size, progress=False),
                         params=CertifyParams(certify=cert, tightness=tight))


def test_certify_entry_equals_run_tightness_and_resumes(setup, tmp_path):
    from fvit.bench.certify import tightness_report

    model, data, dds = setup
    s = _certify_settings(batch_size=4)  # one batch: the per-image seeds match one direct call
    direct = tightness_report(model, dds, data.images, data.labels, [data.item_id(i) for i in range(4)],
                              s.params, seed=0)
    store = ResultsStore(tmp_path, get_experiment("certify")().store_config(s))
    res = run_experiment(s, model=model, dataset=data, dds=dds, store=store)["results"]
    assert res["summary"] == direct["summary"]
    assert res["config"] == {**direct["config"], "dataset": "world", "model": "vit_base_patch16_224", "limit": None,
                             "denoiser": None}
    assert [c["predicted_class"] for c in res["certificates"]] == [c["predicted_class"] for c in direct["certificates"]]
    for rec, ref in zip(res["images"], direct["images"]):
        assert rec["properties"] == ref["properties"] and rec["label"] == ref["label"]
    attacked = sum(v["attacked"] for per in res["summary"].values() for v in per.values())
    assert attacked > 0  # something was certified and attacked: the comparison is not vacuous
    assert attacked == sum(len(p["attacks"]) for r in direct["images"] for p in r["properties"].values())
    # resume: nothing recomputed, the same report
    again = run_experiment(s, model=model, dataset=data, dds=dds, store=ResultsStore(tmp_path, store.config))
    assert again["results"]["summary"] == res["summary"]
    assert [r["id"] for r in again["results"]["images"]] == sorted(data.item_id(i) for i in range(4))
