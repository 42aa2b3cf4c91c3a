"""Images/s per explanation method: batch 1 (a Python loop over images, as the reference code runs)
versus one batched pass per ``--batch`` images, and each method's cost relative to one forward +
backward pass (input gradient of the target logit) at the same batch size.

On a CPU the clock is the process's CPU time (robust when other jobs share the cores; with one
torch thread it is the compute time); on a GPU wall time after synchronising.

    python benchmarks/bench_explain.py --model vit_tiny_patch16_224 --images 32 --batch 32 --threads 1

Random weights (no hub access needed); prints the model, device, threads and a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from fvit.explain import available_methods, get_method
from fvit.models import load_model


def forward_backward(model, images: torch.Tensor, target: torch.Tensor) -> None:
    """The reference cost: one forward and one backward pass to the input."""
    x = images.clone().requires_grad_(True)
    torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)


def run(method, model, images: torch.Tensor, batch: int, target: torch.Tensor) -> float:
    """Seconds to explain all ``images`` in chunks of ``batch`` (each chunk is one call)."""
    cuda = model.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    start = clock()
    for i in range(0, images.shape[0], batch):
        method(model, images[i : i + batch], target[i : i + batch])
    if cuda:
        torch.cuda.synchronize()
    return clock() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--images", type=int, default=32, help="images per measurement")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the batched pass")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=",".join(available_methods()))
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds per mode; the best is kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model, pretrained=False, device=args.device)
    images = torch.rand(args.images, 3, *model.input_size, device=model.device)
    target = torch.randint(0, model.num_classes, (args.images,), device=model.device)
    print(f"model: {args.model} (random weights, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"input {model.input_size}, depth {model.depth}, tokens {model.num_tokens})")
    print(f"device: {model.device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads: {torch.get_num_threads()}, images per measurement: {args.images}, best of {args.repeats}, "
          f"clock: {'wall' if model.device.type == 'cuda' else 'process CPU time'}")
    print()
    print(f"| method | batch 1 (img/s) | batch {args.batch} (img/s) | speed-up | cost / (fwd+bwd) at 1 | "
          f"at {args.batch} |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for name in ["forward+backward", *args.methods.split(",")]:
        method = forward_backward if name == "forward+backward" else get_method(name)
        run(method, model, images[:2], 2, target[:2])  # warm-up
        times = {1: [], args.batch: []}
        for _ in range(args.repeats):  # alternate the modes so that load changes hit both alike
            for bs in times:
                times[bs].append(run(method, model, images, bs, target))
        single, batched = (args.images / min(times[bs]) for bs in (1, args.batch))
        base = base or (single, batched)
        print(f"| {getattr(method, 'name', name)} | {single:.2f} | {batched:.2f} | {batched / single:.2f}x | "
              f"{base[0] / single:.2f} | {base[1] / batched:.2f} |", flush=True)


if __name__ == "__main__":
    main()
