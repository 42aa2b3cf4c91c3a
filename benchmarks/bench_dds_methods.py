"""Several explanation methods with DDS on one batch: denoise per method vs one shared denoising pass.

An experiment ([Re] Table 3, `fvit bench`, `fvit demo`) explains every batch with all six methods
under DDS. Reference style: each method's run draws and denoises its own samples (the reference code
runs one script per method). fvit: the runners seed the DDS noise per batch, so all methods ask for
the same samples and `DDS`'s memo (fvit.dds.memo) serves them from one denoising pass; the maps are
bit-for-bit those of the per-method run (checked here).

    python benchmarks/bench_dds_methods.py [--images 16] [--samples 6] [--size 32] [--width 32]
"""

from __future__ import annotations

import argparse
import time

import torch

METHODS = ("raw_attention", "rollout", "gradcam", "lrp", "transformer_attribution", "attribution_rollout")


def explain_all(model, dds, images, seed: int = 0) -> dict[str, torch.Tensor]:
    from fvit.dds import DDSExplainer

    return {m: DDSExplainer(m, dds)(model, images, generator=torch.Generator().manual_seed(seed)).pixel
            for m in METHODS}


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    from fvit.dds import DDS, DenoiseMemo
    from fvit.denoise import SmallDDPM, small_unet_config
    from fvit.models import tiny_vit
    from fvit.viz.tables import Table

    if a.threads:
        torch.set_num_threads(a.threads)
    den = SmallDDPM(a.size, small_unet_config(a.size, a.width), seed=0).eval()
    model = tiny_vit(num_classes=6, img_size=a.size, patch_size=max(4, a.size // 8), seed=0).eval()
    images = torch.rand(a.images, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    kw = dict(sigma=8 / 255, samples=a.samples, max_batch=256)

    def run(memo: int):
        dds = DDS(den, memo=DenoiseMemo(memo) if memo else None, **kw)
        explain_all(model, dds, images)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            if dds.memo is not None:
                dds.memo.clear()  # each repeat starts cold: one miss, then hits
            maps = explain_all(model, dds, images)
        return (time.perf_counter() - t0) / a.repeats, maps

    ref_s, ref_maps = run(0)
    ours_s, ours_maps = run(2)
    same = all(torch.equal(ref_maps[m], ours_maps[m]) for m in METHODS)
    n = a.images * len(METHODS)
    table = Table(
        title=(f"Six DDS explanations of {a.images} images x {a.samples} samples, {a.size} px, small DDPM width "
               f"{a.width} ({sum(p.numel() for p in den.parameters()) / 1e6:.2f} M params), torch threads "
               f"{torch.get_num_threads()}"),
        columns=["pipeline", "denoising passes", "seconds", "explanations/s", "speed-up"],
        rows=[["reference style: each method denoises its own samples", len(METHODS), ref_s, n / ref_s, "1.0x"],
              ["**fvit**: one shared pass (DDS memo)", 1, ours_s, n / ours_s, f"**{ref_s / ours_s:.1f}x**"]],
        digits=[0, 0, 3, 1, 0])
    lines = [table.to_markdown(), f"Maps identical to the per-method run: {same}."]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
