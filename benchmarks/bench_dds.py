"""DDS throughput: the reference style vs fvit's batched DDS, on one tiny denoiser and tiny ViT.

Reference style (FViT demo / [Re] code): a Python loop over images and samples, batch 1, fp32,
pixel noise + a second q_sample noise, 45 ancestral steps on a 250-step respaced chain
(mapping "fvit-demo", sampler "fvit-demo"), then the ViT on the one sample.
Ours: all B x m samples in one batched pass under inference_mode, Carlini t* and one-shot x0
prediction (optionally bf16 autocast), then the ViT on all samples batched.

The speed-up is decomposed honestly: batching alone (same 45-step demo chain, looped vs batched)
and fewer steps alone (one-shot looped vs the 45-step loop) are reported too.

    python benchmarks/bench_dds.py [--images 4] [--samples 4] [--size 32] [--width 32] [--bf16]
"""

from __future__ import annotations

import argparse
import time

import torch


def build(size: int, width: int, device: str):
    from fvit.denoise import SmallDDPM, small_unet_config

    den = SmallDDPM(size, small_unet_config(size, width), seed=0).to(device).eval()
    try:
        from fvit.models import tiny_vit

        model = tiny_vit(num_classes=10, img_size=size, patch_size=max(4, size // 8), seed=0)
    except ImportError:  # fvit.models not there: a stand-in classifier
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, 10))
    return den, model.to(device).eval()


def looped(den, model, images, samples, mapping, denoise, sigma):
    """Reference style: one image, one sample at a time (batch 1), no inference_mode."""
    from fvit.dds import DDS

    preds = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            for j in range(samples):
                dds = DDS(den, sigma=sigma, mapping=mapping, denoise=denoise, samples=1, seed=i * samples + j)
                x = dds._run(images[i:i + 1], torch.Generator(images.device).manual_seed(i * samples + j))
                preds.append(model(x[:, 0]).argmax(1))
    return torch.stack(preds)


def batched(den, model, images, samples, mapping, denoise, sigma, autocast=None):
    from fvit.dds import DDS

    dds = DDS(den, sigma=sigma, mapping=mapping, denoise=denoise, samples=samples, seed=0,
              max_batch=images.shape[0] * samples, autocast=autocast)
    ctx = torch.autocast(images.device.type, dtype=torch.bfloat16) if autocast else torch.autocast(images.device.type, enabled=False)
    with ctx:
        return dds.predict_counts(model, images)


def _sync() -> None:
    if torch.cuda.is_available():  # CUDA kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--sigma", default="8/255")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    from fvit.utils import parse_number

    a.sigma = parse_number(a.sigma, "--sigma")  # options are strings; the library takes numbers
    from fvit.denoise import timestep_for_sigma
    from fvit.utils import resolve_device
    from fvit.viz.tables import Table

    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    den, model = build(a.size, a.width, str(device))
    images = torch.rand(a.images, 3, a.size, a.size, generator=torch.Generator().manual_seed(0)).to(device)
    n, m, s = a.images, a.samples, a.sigma
    t_demo = timestep_for_sigma(s, den.schedule, "fvit-demo")
    t_carl = timestep_for_sigma(s, den.schedule, "carlini")
    rows = [
        ("reference: loop, batch 1, fp32, fvit-demo chain", t_demo,
         timed(lambda: looped(den, model, images, m, "fvit-demo", "fvit-demo", s))),
        ("batched, fp32, same fvit-demo chain (equal steps)", t_demo,
         timed(lambda: batched(den, model, images, m, "fvit-demo", "fvit-demo", s))),
        ("loop, batch 1, fp32, one-shot (equal steps to ours)", 1,
         timed(lambda: looped(den, model, images, m, "carlini", "one-shot", s), 2)),
        ("**ours**: batched, fp32, one-shot, inference_mode", 1,
         timed(lambda: batched(den, model, images, m, "carlini", "one-shot", s), 3)),
    ]
    if a.bf16:
        rows.append(("ours: batched, bf16 autocast, one-shot", 1,
                     timed(lambda: batched(den, model, images, m, "carlini", "one-shot", s, "bf16"), 3)))
    ref = rows[0][2]
    table = Table(
        title=(f"DDS throughput: {n} images x {m} samples, {a.size} px, small DDPM width {a.width} "
               f"({sum(p.numel() for p in den.parameters()) / 1e6:.2f} M params), sigma {s} "
               f"(t* carlini {t_carl}, fvit-demo {t_demo}), device {device}, torch threads {torch.get_num_threads()}"),
        columns=["pipeline", "denoiser calls / sample", "seconds", "images/s", "speed-up vs reference"],
        rows=[[name, calls, sec, n / sec, f"{ref / sec:.1f}x"] for name, calls, sec in rows], digits=[0, 0, 3, 2, 0])
    lines = [table.to_markdown(),
             f"Decomposition: batching alone (45-step chain) {rows[0][2] / rows[1][2]:.1f}x; "
             f"batching at one step {rows[2][2] / rows[3][2]:.1f}x; "
             f"fewer steps alone (looped, 45 -> 1) {rows[0][2] / rows[2][2]:.1f}x."]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
