"""fvit.bench.experiments on a tiny random ViT and the generated world (fast, CPU)."""

import json
import math

import pytest
import torch

from fvit.bench import ResultsStore
from fvit.bench import experiments as ex
from fvit.data import open_dataset
from fvit.dds import DDS
from fvit.denoise import FunctionDenoiser, linear_schedule
from fvit.models import tiny_vit

METHODS = ["raw_attention", "rollout"]
ATTACK = ex.AttackSpec("pgd", 8 / 255, steps=2)  # random start: exercises the per-batch seeding


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    model = tiny_vit(num_classes=8, img_size=32, depth=2, embed_dim=32, num_heads=2)
    data = open_dataset("world:eval,6", 32)
    # a cheap stand-in denoiser (eps = 0): DDS noise + "denoising" stay seeded and batched
    dds = DDS(FunctionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(1000)), sigma=8 / 255, samples=2)
    return model, data, dds


def _seg(setup, store=None, **kw):
    model, data, dds = setup
    return ex.run_segmentation(model, data, METHODS, dds=dds, attack=ATTACK, store=store, batch_size=2,
                               progress=False, topk=4, **kw)


def test_segmentation_keys_and_values(setup):
    res = _seg(setup)
    assert list(res) == ["raw_attention", "raw_attention+dds", "rollout", "rollout+dds"]
    for r in res.values():
        assert r["n"] == 6 and 0 <= r["pixel_acc"] <= 1 and 0 <= r["miou"] <= 1 and 0 <= r["map"] <= 1
        assert 0 <= r["robust_acc"] <= 1 and 0 <= r["topk_overlap"] <= 1 and r["k"] == 4


def test_with_clean_rows_equal_a_run_without_attack(setup):
    model, data, dds = setup
    both = _seg(setup, with_clean=True)
    clean = ex.run_segmentation(model, data, METHODS, dds=dds, attack=None, batch_size=2, progress=False)
    assert [k for k in both if not k.endswith("@clean")] == list(clean)
    for k in clean:
        assert _close({**clean[k], "seconds": None}, {**both[f"{k}@clean"], "seconds": None})
        assert _close({**both[k], "seconds": None}, {**_seg(setup)[k], "seconds": None})
    # no attack: nothing extra to score
    assert list(ex.run_segmentation(model, data, METHODS, attack=None, batch_size=2, progress=False,
                                    with_clean=True)) == METHODS


def test_killed_and_resumed_run_gives_the_same_table(setup, tmp_path):
    cfg = {"experiment": "segmentation", "seed": 0}
    clean = _seg(setup, ResultsStore(tmp_path / "clean", cfg))
    # "kill" after one batch, then tear the last line as a kill mid-write would
    partial = ResultsStore(tmp_path / "resumed", cfg)
    _seg(setup, partial, max_batches=1)
    rows_file = tmp_path / "resumed" / "rows.jsonl"
    with open(rows_file, "a") as f:
        f.write('{"id": "world-eval-000002", "setting": "rollo')
    assert len(ResultsStore(tmp_path / "resumed", cfg)) == 2 * len(METHODS) * 2  # 2 images x 4 keys
    resumed = _seg(setup, ResultsStore(tmp_path / "resumed", cfg))
    assert list(resumed) == list(clean)
    for k in clean:
        assert _close(clean[k], resumed[k])
    # and an uninterrupted in-memory run agrees too
    for k, v in _seg(setup).items():
        assert _close(v, clean[k])


def _close(a: dict, b: dict) -> bool:
    keys = set(a) - {"seconds"}
    return keys == set(b) - {"seconds"} and all(
        (a[k] is None and b[k] is None) or (isinstance(a[k], (int, float)) and math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12))
        for k in keys)


def test_perturbation_radii_and_auc_convention(setup):
    model, data, dds = setup
    res = ex.run_perturbation(model, data, ["rollout"], dds=None, radii=[0, "2/255"], attack=ATTACK,
                              batch_size=3, progress=False)
    assert list(res) == ["rollout"] and list(res["rollout"]) == ["0", "2/255"]
    for r in res["rollout"].values():
        assert 0 <= r["pos_auc"] <= 90 and 0 <= r["neg_auc"] <= 90 and r["n"] == 6
    only = ex.run_perturbation(model, data, ["rollout"], radii=[0], attack=ATTACK, batch_size=3,
                               progress=False, only_correct=True)
    assert only["rollout"]["0"]["n"] == round(res["rollout"]["0"]["acc"] * 6)


def test_ablation_and_sensitivity(setup):
    model, data, dds = setup
    ab = ex.run_ablation(model, data, "rollout", dds=dds, attack=ATTACK, batch_size=3, progress=False)
    assert list(ab) == list(ex.ABLATION_VARIANTS)
    for r in ab.values():
        assert 0 <= r["robust_acc"] <= 1 and r["reference"] == "label" and 0 <= r["miou"] <= 1
        assert r["pos_auc"] is not None and r["n"] == 6
    sens = ex.run_sensitivity(model, data, dds=dds, sigmas=["4/255", "8/255"], radii=[0, "2/255"],
                              attack=ATTACK, batch_size=3, progress=False)
    assert list(sens) == ["baseline", "4/255", "8/255"] and all(list(v) == ["0", "2/255"] for v in sens.values())


def test_dds_keys_need_a_dds(setup):
    from fvit.errors import FvitError

    model, data, _ = setup
    with pytest.raises(FvitError, match="need a DDS"):
        ex.run_segmentation(model, data, ["rollout+dds"], progress=False)
    json.dumps(ex.AttackSpec().as_config())
