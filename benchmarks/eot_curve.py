"""How many EOT draws does the adaptive explanation attack through DDS need?

On the demo world's trained models (`fvit demo`'s cache; trained on first use), the soft top-k
explanation attack runs adaptively through DDS with 1, 2, 4, ... DDS draws per step (expectation over
the noise), on the same held-out images, and the attacked DDS maps are scored against the clean
ones (same evaluation noise). More draws cost proportionally more; the curve shows where they stop
lowering the overlap. Ratios are against eot = 1 measured in the same run.

    python benchmarks/eot_curve.py [--images 16] [--eot 1,2,4,8] [--sigmas 8/255,1/4] \
        [--methods raw_attention,gradcam] [--steps 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--eot", default="1,2,4,8")
    ap.add_argument("--sigmas", default="8/255,1/4")
    ap.add_argument("--methods", default="raw_attention,gradcam")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--objective", default="soft-topk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="full")
    a = ap.parse_args(argv)

    import torch

    from fvit.attacks import get_explanation_attack
    from fvit.dds import DDS, DDSExplainer
    from fvit.demo.settings import get_settings
    from fvit.demo.world_models import eval_split, get_world_models
    from fvit.explain import get_method
    from fvit.metrics import mean_interval, format_interval, topk_overlap
    from fvit.utils import parse_number
    from fvit.viz.tables import Table

    torch.set_num_threads(torch.get_num_threads())
    settings = get_settings(a.preset, a.seed)
    models = get_world_models(settings, progress=False)
    data = eval_split(settings, a.images)
    x, ids = data.images, list(data.ids)
    model = models.classifier
    draws = [int(v) for v in a.eot.split(",")]
    rows = []
    for s_text in a.sigmas.split(","):
        sigma = parse_number(s_text, "--sigmas")
        dds = DDS(models.denoiser, sigma=sigma, samples=2, seed=a.seed, max_batch=256)
        attack_dds = dds.replace(samples=1)
        for name in a.methods.split(","):
            method = get_method(name)
            explainer, attacked_by = DDSExplainer(method, dds, fuse="mean"), DDSExplainer(method, attack_dds, fuse="mean")
            clean = explainer(model, x, keys=ids)
            base = None
            for eot in draws:
                atk = get_explanation_attack(a.objective, 8 / 255, steps=a.steps, k=10, eot=eot, schedule="apgd",
                                             seed=a.seed)
                t0 = time.perf_counter()
                res = atk.run(attacked_by, model, x, target=clean.target, clean_maps=clean.patch, keys=ids)
                seconds = time.perf_counter() - t0
                adv = explainer(model, res.adv, target=clean.target, keys=ids)
                ov = topk_overlap(clean.patch.float(), adv.patch.float(), 10).tolist()
                ci = mean_interval(ov)
                base = base if base is not None else ci["mean"]
                rows.append([s_text, name, eot, format_interval(ci), ci["mean"] / base if base else None, seconds])
                print(rows[-1], flush=True)
    table = Table(f"Adaptive {a.objective} attack through DDS (fusion mean, m = 2, 1 sample per draw, "
                  f"{a.steps} APGD steps, 8/255 l_inf): top-k overlap vs EOT draws per step ({a.images} images)",
                  ["sigma", "method", "EOT draws", "overlap [95 % CI]", "overlap / overlap(eot=1)", "seconds"],
                  rows, digits=[0, 0, 0, 0, 3, 1])
    text = table.to_markdown()
    print(text)
    return text


if __name__ == "__main__":
    main()
