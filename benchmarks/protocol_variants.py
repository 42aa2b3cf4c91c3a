"""How much each reproduction variant changes the maps and the segmentation metrics on the demo world.

Run by hand (trains the demo models on first use, cached under $FVIT_CACHE):

    PYTHONPATH=src python benchmarks/protocol_variants.py --world quick --images 64

Per method variant (the `--protocol chefer2021` choices against fvit's defaults): the mean and
minimum per-image Spearman rank correlation of the patch maps with the default's, and the
segmentation metrics (pixel accuracy, mIoU, mAP) of both on the held-out world images. Then the
float precision of the relevance pass: LRP / Transformer Attribution with the whole model in
float64 is the reference; the float32 pass and the float32-forward + float64-relevance pass
(`relevance_dtype="float64"`) are compared with it. Then the DDS variants (noise construction,
sampler variance, respacing) with the demo's small DDPM. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from fvit.data import collate
from fvit.dds import DDS, DDSExplainer
from fvit.demo.settings import get_settings
from fvit.demo.world_models import eval_split, get_world_models
from fvit.denoise.schedule import linear_schedule, spaced_timesteps
from fvit.explain import get_method
from fvit.metrics import aggregate_segmentation, segmentation_rows


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).double().argsort(dim=1).argsort(dim=1).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman correlation of two (B, ...) maps (ties broken by position)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def seg(pixel: torch.Tensor, masks: torch.Tensor) -> dict:
    return aggregate_segmentation(segmentation_rows(pixel.float(), masks))


def fmt_seg(m: dict) -> str:
    return f"{m['pixel_acc']:.3f} / {m['miou']:.3f} / {m['map']:.3f}"


def explain_all(method, model, x, batch: int = 32):
    parts = [method(model, x[i:i + batch]) for i in range(0, len(x), batch)]
    return torch.cat([p.patch for p in parts]), torch.cat([p.pixel for p in parts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="quick", choices=("quick", "full"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--dds-images", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    settings = get_settings(args.world)
    t0 = time.perf_counter()
    wm = get_world_models(settings, device="cpu", progress=False)
    model, denoiser = wm.classifier, wm.denoiser
    data = eval_split(settings, args.images)
    batch = collate([data[i] for i in range(len(data))])
    x, masks = batch["image"], batch["mask"]
    print(f"demo world '{args.world}', {len(x)} held-out images, classifier accuracy "
          f"{wm.classifier_info.get('clean_accuracy')}, models ready in {time.perf_counter() - t0:.0f} s\n")

    print("| variant (vs default) | rank corr. mean (min) | default: pix acc / mIoU / mAP | variant: pix acc / mIoU / mAP |")
    print("|---|---:|---:|---:|")
    pairs = [
        ("rollout", dict(start_layer=1)),
        ("transformer_attribution", dict(start_layer=1)),
        ("lrp", dict(rules="orig")),
        ("transformer_attribution", dict(rules="orig")),
        ("attribution_rollout", dict(clamp_negative=False)),
    ]
    cache = {}
    for name, params in pairs:
        if name not in cache:
            cache[name] = explain_all(get_method(name), model, x)
        d_patch, d_pixel = cache[name]
        variant = get_method(name, **params)
        v_patch, v_pixel = explain_all(variant, model, x)
        rho = spearman(d_patch, v_patch)
        print(f"| `{variant.spec}` | {rho.mean():.3f} ({rho.min():.3f}) | {fmt_seg(seg(d_pixel, masks))} "
              f"| {fmt_seg(seg(v_pixel, masks))} |")

    print("\nFloat precision of the relevance pass (reference: the whole model in float64):\n")
    print("| method | fp32 vs fp64: rank corr. mean (min) | fp32 forward + fp64 relevance vs fp64: mean (min) |")
    print("|---|---:|---:|")
    model64 = copy.deepcopy(model).double()
    for spec in (("lrp", {}), ("lrp", {"rules": "orig"}), ("transformer_attribution", {})):
        name, params = spec
        ref, _ = explain_all(get_method(name, relevance_dtype="float64", **params), model64, x.double())
        p32, _ = explain_all(get_method(name, **params), model, x)
        p64, _ = explain_all(get_method(name, relevance_dtype="float64", **params), model, x)
        a, b = spearman(p32, ref), spearman(p64, ref)
        print(f"| `{get_method(name, **params).spec}` | {a.mean():.4f} ({a.min():.4f}) | {b.mean():.4f} ({b.min():.4f}) |")
    with torch.no_grad():  # the maps explain each model's own prediction: do the two ever differ?
        flips = int((model(x).argmax(1) != model64(x.double()).argmax(1)).sum())
    print(f"\nImages whose predicted class differs between the float32 and the float64 model: {flips} of {len(x)}.")

    n = min(args.dds_images, len(x))
    xd, md = x[:n], masks[:n]
    print(f"\nDDS variants (transformer_attribution + DDS, sigma 8/255, m = 4, {n} images, demo DDPM):\n")
    print("| variant (vs default) | rank corr. mean (min) | default: pix acc / mIoU / mAP | variant: pix acc / mIoU / mAP |")
    print("|---|---:|---:|---:|")
    ta = get_method("transformer_attribution")
    base_kw = dict(sigma=8 / 255, samples=4, max_batch=64)
    dds_pairs = [
        ("reference: seed 1 vs seed 0 (same settings)", dict(denoise="one-shot"), dict(denoise="one-shot", seed=1)),
        ("noise=q-sample (one-shot)", dict(denoise="one-shot"), dict(denoise="one-shot", noise="q-sample")),
        ("variance=learned (ancestral:10)", dict(denoise="ancestral:10", variance="fixed-small"),
         dict(denoise="ancestral:10", variance="auto")),
    ]
    for label, kd, kv in dds_pairs:
        dd, dv = DDS(denoiser, **base_kw, **{"seed": 0, **kd}), DDS(denoiser, **base_kw, **{"seed": 0, **kv})
        if (dd.sampler_variance, dd.noise, dd.seed) == (dv.sampler_variance, dv.noise, dv.seed):
            print(f"| {label} | identical: the demo DDPM predicts no variance ({dv.sampler_variance}) | | |")
            continue
        ed, ev = DDSExplainer(ta, dd)(model, xd), DDSExplainer(ta, dv)(model, xd)
        rho = spearman(ed.patch, ev.patch)
        print(f"| {label} | {rho.mean():.3f} ({rho.min():.3f}) | {fmt_seg(seg(ed.pixel, md))} | {fmt_seg(seg(ev.pixel, md))} |")
    sch = linear_schedule(1000)
    std_q = float(sch.noise_to_signal[15]) / 2
    print(f"\nq-sample noise at 8/255 (t* = 15): pixel std {std_q:.6f} vs sigma {8 / 255:.6f} "
          f"(variance ratio {(std_q / (8 / 255)) ** 2:.4f}).")
    old = lambda k: sorted({int(round(i * 999 / (k - 1))) for i in range(k)}) if k > 1 else [0]  # noqa: E731
    differ = [k for k in range(1, 1001) if sorted(set(spaced_timesteps(1000, k))) != old(k)]
    print(f"Respacing: the previous rule differs from guided-diffusion's for {len(differ)} of K = 1..1000 "
          f"(K = 250 {'differs' if 250 in differ else 'agrees'}); the demo chain uses K = 250, so no effect there.")


if __name__ == "__main__":
    main()
