"""What the strong adversary and the certificate cost: the denoiser's forward and backward, one
explanation-attack step with and without DDS, one certification sample, per chunk size.

On the demo world's models (trained on first use into the fvit cache, as `fvit demo` does) or, with
``--random``, on untrained models of the same shapes. Per-sample milliseconds (process CPU time on a
CPU, wall time after synchronising on a GPU), achieved GFLOP/s of the denoiser against the machine's
nominal peak (`bench_pipeline.device_peak`), and the ratios the performance issue asks for, all
measured in the same run:

- denoiser forward + backward / forward (per chunk size);
- one adaptive attack step through DDS / (denoiser forward+backward + the method's differentiable pass
  with its backward on the same batch): the hidden overhead of the attack;
- certification sampling (``certify_methods``) per sample / bare denoise + classify + explain per sample.

    python benchmarks/bench_attack.py [--images 32] [--chunks 16,32,64,128,256] [--methods raw_attention,gradcam]
        [--repeats 3] [--random] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def clock(fn, device, repeats: int) -> float:
    """Fastest of ``repeats`` timings (after one warm-up) of ``fn()``, in seconds."""
    import torch

    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        else:
            t0 = time.process_time()
            fn()
            best = min(best, (time.process_time() - t0) / max(1, torch.get_num_threads()))
    return best


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--chunks", default="16,32,64,128,256")
    ap.add_argument("--methods", default="raw_attention,gradcam,transformer_attribution")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random", action="store_true", help="untrained models of the demo's shapes (no training)")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)

    import torch

    from bench_pipeline import counting, device_peak
    from fvit.attacks.explanation import get_explanation_attack
    from fvit.certify import CertifyConfig, certify_methods
    from fvit.dds import DDS, DDSExplainer
    from fvit.demo.settings import get_settings
    from fvit.demo.world_models import build_classifier, build_denoiser, eval_split, get_world_models
    from fvit.explain import get_method
    from fvit.utils import resolve_device
    from fvit.viz.tables import Table

    device = resolve_device(a.device)
    settings = get_settings("full")
    if a.random:
        model, den = build_classifier(settings).to(device).eval(), build_denoiser(settings).to(device).eval()
    else:
        wm = get_world_models(settings, device=device, progress=False)
        model, den = wm.classifier, wm.denoiser
    x = eval_split(settings, a.images).images.to(device)
    t = torch.full((1,), 15, device=device, dtype=torch.long)
    desc, _, peak = device_peak(device)
    with counting() as fc:
        with torch.inference_mode():
            den.predict_eps(x[:1] * 2 - 1, t)
    flops = fc.get_total_flops()
    rows = []
    for chunk in [int(c) for c in a.chunks.split(",")]:
        xb = x.repeat((chunk + len(x) - 1) // len(x), 1, 1, 1)[:chunk] * 2 - 1
        tb = t.expand(chunk)

        def fwd():
            with torch.inference_mode():
                den.predict_eps(xb, tb)

        def fwd_bwd():  # the input gradient only, as the attacks take it
            leaf = xb.clone().requires_grad_(True)
            torch.autograd.grad(den.predict_eps(leaf, tb).sum(), leaf)

        f, fb = clock(fwd, device, a.repeats), clock(fwd_bwd, device, a.repeats)
        rows.append([chunk, 1e3 * f / chunk, 1e3 * fb / chunk, fb / f, flops * chunk / f / 1e9, 100 * flops * chunk / f / peak])
    den_table = Table(f"SmallDDPM per sample (32x32, {flops / 1e9:.2f} GFLOP forward); peak: {desc}",
                      ["chunk", "forward ms", "fwd+bwd ms", "fwd+bwd / fwd", "forward GFLOP/s", "% of peak"],
                      rows, digits=[0, 2, 2, 2, 1, 1])

    dds = DDS(den, sigma=8 / 255, samples=1, seed=0, max_batch=256)
    ids = [f"img{i}" for i in range(len(x))]
    step_rows = []
    for name in a.methods.split(","):
        method = get_method(name)
        target = model(x).argmax(1)
        clean = method(model, x)
        # one step = the marginal cost of a step (3 steps minus 1 step, halved): the last evaluation of
        # a run needs no gradient, so a run's mean per evaluation would understate a step
        one, three = (get_explanation_attack("soft-topk", 8 / 255, steps=n, k=10, schedule="constant") for n in (1, 3))

        def step_cost(explainer) -> float:
            def run(atk):
                return lambda: atk.run(explainer, model, x, target=target, clean_maps=clean.patch, keys=ids)

            return (clock(run(three), device, a.repeats) - clock(run(one), device, a.repeats)) / 2

        plain = step_cost(method)
        explainer = DDSExplainer(method, dds, fuse="mean")
        with_dds = step_cost(explainer)

        def parts():
            leaf = x.clone().requires_grad_(True)
            samples = dds.denoise_differentiable(leaf, torch.Generator(device=device).manual_seed(0))[:, 0]
            e = method.differentiable(model, samples, target, surrogate=10.0)
            torch.autograd.grad(e.patch.sum() + e.logits.sum(), leaf)  # input gradient only, as the attack

        p = clock(parts, device, a.repeats)
        step_rows.append([name, 1e3 * plain / len(x), 1e3 * with_dds / len(x), 1e3 * p / len(x), with_dds / p])
    step_table = Table(f"One explanation-attack step per image ({len(x)} images, soft-topk, 1 DDS draw of 1 sample)",
                       ["method", "plain ms", "through DDS ms", "parts ms (denoise fwd+bwd + method pass)",
                        "DDS step / parts"], step_rows, digits=[0, 2, 2, 2, 2])

    n = 256
    config = CertifyConfig(k=10, n0=16, n=n, mc_batch=64)
    cert_s = clock(lambda: certify_methods(model, dds.replace(samples=64), x[:4], config,
                                           attentions=["raw_attention"], seed=0, keys=ids[:4]), device, 1)
    bare_dds = dds.replace(samples=64)
    method = get_method("raw_attention")

    def bare():
        with torch.inference_mode():
            for _ in range((n + 16) // 64):
                s = bare_dds.denoise(x[:4], keys=ids[:4]).flatten(0, 1)
                method(model, s)

    bare_s = clock(bare, device, 1)
    cert_table = Table("Certification sampling vs a bare denoise + classify + explain forward (4 images, "
                       f"n0 + n = {16 + n}, chunk 64, raw attention)",
                       ["certify ms / sample", "bare ms / sample", "bare / certify (throughput share)"],
                       [[1e3 * cert_s / (4 * (n + 16)), 1e3 * bare_s / (4 * 64 * ((n + 16) // 64)),
                         (bare_s / (64 * ((n + 16) // 64))) / (cert_s / (n + 16))]], digits=[2, 2, 2])
    text = "\n\n".join(t.to_markdown() for t in (den_table, step_table, cert_table))
    print(text)
    return text


if __name__ == "__main__":
    main()
