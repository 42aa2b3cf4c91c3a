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
    # a random model gets every world label wrong: relabel so that accuracies are not all 0 (the clean
    # prediction for images 0-3, another class for 4-5)
    with torch.no_grad():
        pred = model(data.images).argmax(1)
    data.labels = torch.where(torch.arange(6) < 4, pred, (pred + 1) % 8)
    # a cheap stand-in denoiser (eps = 0): DDS noise + "denoising" stay seeded and batched
    dds = DDS(FunctionDenoiser(lambda x, t: torch.zeros_like(x), linear_schedule(1000)), sigma=8 / 255, samples=2)
    return model, data, dds


def _seg(setup, store=None, **kw):
    model, data, dds = setup
    return ex.run_segmentation(model, data, METHODS, dds=dds, attack=ATTACK, store=store, batch_size=2,
                               progress=False, topk=4, **kw)


FGSM = ex.AttackSpec("fgsm", 8 / 255)  # deterministic: the tests recompute the attacked images


def _batches(data, size):
    items = [data[i] for i in range(len(data))]
    for start in range(0, len(items), size):
        part = items[start:start + size]
        yield (torch.stack([it["image"] for it in part]), torch.tensor([it["label"] for it in part]),
               torch.stack([it["mask"] for it in part]), [it["id"] for it in part])


def _fgsm(model, x):
    from fvit.attacks import get_attack

    return get_attack("fgsm", 8 / 255)(model, x, model(x).argmax(1))


def test_segmentation_keys_and_values(setup):
    """Every number of a run under FGSM, recomputed independently from the explanations."""
    from fvit.dds import DDSExplainer
    from fvit.explain import get_method
    from fvit.metrics import SegmentationAccumulator, topk_overlap

    model, data, dds = setup
    res = ex.run_segmentation(model, data, METHODS, dds=dds, attack=FGSM, batch_size=2, progress=False, topk=4)
    assert list(res) == ["raw_attention", "raw_attention+dds", "rollout", "rollout+dds"]
    for key, r in res.items():
        name, with_dds = key.removesuffix("+dds"), key.endswith("+dds")
        explainer = DDSExplainer(get_method(name), dds) if with_dds else get_method(name)
        acc, overlaps, clean_hits, adv_hits, agree = SegmentationAccumulator(), [], [], [], []
        for x, labels, masks, ids in _batches(data, 2):
            adv = _fgsm(model, x)
            kw = {"keys": ids} if with_dds else {}
            e, e_clean = explainer(model, adv, **kw), explainer(model, x, **kw)
            acc.update(e.pixel.float(), masks)
            overlaps += topk_overlap(e_clean.patch.float(), e.patch.float(), 4).tolist()
            pred_clean = dds.smoothed_predict(model, x, keys=ids) if with_dds else model(x).argmax(1)
            pred_adv = e.target if with_dds else model(adv).argmax(1)
            clean_hits += (pred_clean == labels).tolist()
            adv_hits += (pred_adv == labels).tolist()
            agree += (pred_adv == pred_clean).tolist()
        expect = acc.result()
        for metric in ("pixel_acc", "miou", "map"):
            assert math.isclose(r[metric], expect[metric], rel_tol=1e-9), (key, metric)
        assert r["n"] == 6 and r["k"] == 4
        assert math.isclose(r["topk_overlap"], sum(overlaps) / 6, rel_tol=1e-9)
        assert math.isclose(r["clean_acc"], sum(clean_hits) / 6)
        assert math.isclose(r["robust_acc"], sum(adv_hits) / 6)
        assert math.isclose(r["agreement"], sum(agree) / 6)
    # plain methods see the same attacked images: same accuracies, different maps
    assert res["rollout"]["robust_acc"] == res["raw_attention"]["robust_acc"]


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
    res = ex.run_perturbation(model, data, ["rollout"], dds=None, radii=[0, 2 / 255], attack=ATTACK,
                              batch_size=3, progress=False)
    assert list(res) == ["rollout"] and list(res["rollout"]) == ["0", "2/255"]
    assert all(r["n"] == 6 for r in res["rollout"].values())
    # radius 0 recomputed: hits of the rollout maps on the clean images, trapezoid AUC x 100
    from fvit.explain import explain
    from fvit.metrics import perturbation_auc, perturbation_hits
    from fvit.metrics.perturbation import DEFAULT_FRACTIONS

    x, labels = data.images, data.labels
    pixel = explain(model, x, "rollout").pixel
    for field, positive in (("pos_auc", True), ("neg_auc", False)):
        hits = perturbation_hits(model, x, pixel, labels, DEFAULT_FRACTIONS, positive)
        assert math.isclose(res["rollout"]["0"][field], perturbation_auc(hits, DEFAULT_FRACTIONS), rel_tol=1e-9)
    assert res["rollout"]["0"]["acc"] == 4 / 6  # the relabelled set (see the fixture)
    only = ex.run_perturbation(model, data, ["rollout"], radii=[0], attack=ATTACK, batch_size=3,
                               progress=False, only_correct=True)
    assert only["rollout"]["0"]["n"] == round(res["rollout"]["0"]["acc"] * 6)


def test_ablation_variants_match_the_plain_and_dds_runs(setup):
    """Ablation 'no_both' is the plain method, 'full' the DDS one: the same numbers as the segmentation
    and perturbation runners give them under the same (deterministic) attack."""
    model, data, dds = setup
    ab = ex.run_ablation(model, data, "rollout", dds=dds, attack=FGSM, batch_size=3, progress=False)
    assert list(ab) == list(ex.ABLATION_VARIANTS)
    seg = ex.run_segmentation(model, data, ["rollout"], dds=dds, attack=FGSM, batch_size=3, progress=False)
    pert = ex.run_perturbation(model, data, ["rollout"], dds=dds, radii=[8 / 255], attack=FGSM,
                               batch_size=3, progress=False)
    for variant, key in (("no_both", "rollout"), ("full", "rollout+dds")):
        r = ab[variant]
        assert r["reference"] == "label" and r["n"] == 6
        assert math.isclose(r["robust_acc"], seg[key]["robust_acc"])
        for metric in ("pixel_acc", "miou", "map"):
            assert math.isclose(r[metric], seg[key][metric], rel_tol=1e-9), (variant, metric)
        for auc in ("pos_auc", "neg_auc"):
            assert math.isclose(r[auc], pert[key]["8/255"][auc], rel_tol=1e-9), (variant, auc)
    # no_smoothing: no noise, and the stand-in denoiser (eps = 0) returns its input, so every sample is
    # the attacked image itself and the smoothed prediction is the plain one
    assert ab["no_smoothing"]["robust_acc"] == ab["no_both"]["robust_acc"]


def test_sensitivity_accuracies_recomputed(setup):

    model, data, dds = setup
    sens = ex.run_sensitivity(model, data, dds=dds, sigmas=[4 / 255, 8 / 255], radii=[0, 8 / 255],
                              attack=FGSM, batch_size=3, progress=False)
    assert list(sens) == ["baseline", "4/255", "8/255"] and all(list(v) == ["0", "8/255"] for v in sens.values())
    smoothers = {"4/255": dds.replace(sigma=4 / 255), "8/255": dds}
    hits = {(g, r): 0 for g in sens for r in ("0", "8/255")}
    for x, labels, _, ids in _batches(data, 3):
        for r, images in (("0", x), ("8/255", _fgsm(model, x))):
            hits["baseline", r] += int((model(images).argmax(1) == labels).sum())
            for g, smoother in smoothers.items():
                hits[g, r] += int((smoother.smoothed_predict(model, images, keys=ids) == labels).sum())
    assert {(g, r): sens[g][r] for g in sens for r in sens[g]} == {k: v / 6 for k, v in hits.items()}


def test_dds_keys_need_a_dds(setup):
    from fvit.errors import FvitError

    model, data, _ = setup
    with pytest.raises(FvitError, match="need a DDS"):
        ex.run_segmentation(model, data, ["rollout+dds"], progress=False)


def test_attack_spec_config_is_plain_json():
    cfg = ex.AttackSpec("PGD-L2", 0.5, steps=3, options={"norm": "l2"}).as_config()
    assert json.loads(json.dumps(cfg)) == {"name": "pgd_l2", "eps": 0.5, "steps": 3, "step_size": None, "norm": "l2"}
    assert ex.AttackSpec().as_config() == {"name": "pgd", "eps": 8 / 255, "steps": None, "step_size": None}
