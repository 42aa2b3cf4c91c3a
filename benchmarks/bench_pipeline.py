"""The real pipeline's throughput: ViT-B/16 + the guided-diffusion 256 UNet, fvit vs the reference style.

Both networks have random weights (timm ``vit_base_patch16_224``; fvit's ADM UNet with the flags of
``256x256_diffusion_uncond.pt``, 552.8 M parameters, its zero-initialised output layers re-drawn so
that eps is not identically 0): the timings and FLOPs do not depend on the values.

Per stage (denoise / classify / explain (each of the six methods, with DDS) / attack (PGD on the
classifier)): seconds, achieved TFLOP/s and MFU = achieved FLOP/s / the device's peak (the peak
table is printed). FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-add; the networks' forward passes on the meta device, the explanations and the attack on
their warm-up call).

fvit: one-shot DDS (Carlini et al.: x0 from one denoiser call at t*), all N x m samples batched,
denoised once and shared by the six methods (`fvit.dds.memo`), explanations batched, autocast
"auto" (bf16 on CUDA), optionally channels_last / torch.compile, chunk size from free memory.
Reference style (the FViT demo / [Re] code): a Python loop over images and samples at batch 1, the
demo's 45-step ancestral chain (`fvit-demo` mapping and sampler), fp16 autocast on CUDA / fp32 on a
CPU, each method denoising its own samples. ``--ref-steps K < 45`` runs K of the chain's 45
network calls and scales that stage by 45 / K (said in the output).

End to end, per batch: fvit = denoise + classify + sum(explain) + attack;
reference = methods x (denoise + classify) + sum(explain) + attack.

    python benchmarks/bench_pipeline.py --images 64 --samples 8                  # a GPU
    python benchmarks/bench_pipeline.py --images 1 --samples 1 --ref-steps 1 \\
        --sizes 224 --threads 2 --ratio-images 0                                  # a CPU
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from contextlib import contextmanager

import torch

GPU_PEAKS = {  # dense TFLOP/s (no sparsity): (bf16 / fp16 tensor core, fp32 non-tensor-core)
    "H200": (989.0, 67.0), "H100 SXM": (989.0, 67.0), "H100 PCIe": (756.0, 51.0), "H100": (989.0, 67.0),
    "A100": (312.0, 19.5), "L40S": (362.0, 91.6), "L4": (121.0, 30.3), "A10": (125.0, 31.2),
    "RTX 4090": (165.2, 82.6), "V100": (125.0, 15.7), "T4": (65.0, 8.1),
}


def device_peak(device: torch.device) -> tuple[str, float, float]:
    """(description, low-precision peak FLOP/s, fp32 peak FLOP/s) of ``device``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (low, fp32) in GPU_PEAKS.items():
            if key.lower() in name.lower():
                return f"{name}: {low} TFLOP/s bf16/fp16 dense, {fp32} fp32 (table: {key})", low * 1e12, fp32 * 1e12
        return f"{name}: not in the peak table (MFU not computed)", float("nan"), float("nan")
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags") and not flags:
                    flags = line
                if line.startswith("cpu MHz"):
                    mhz = max(mhz, float(line.split(":")[1]))
    except OSError:
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8  # fp32 FLOP / cycle / core, 2 FMA units
    peak = torch.get_num_threads() * mhz * 1e6 * per_cycle
    desc = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads x {mhz / 1e3:.2f} GHz x "
            f"{per_cycle} fp32 FLOP/cycle = {peak / 1e9:.0f} GFLOP/s nominal (no AMX / bf16 peak used)")
    return desc, peak, peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(result, seconds, peak memory in bytes): wall time after synchronising on a GPU, the process's
    CPU time on a CPU (robust when other jobs share the cores; use one torch thread)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = clock()
    out = fn()
    sync(device)
    sec = clock() - t0
    mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return out, sec, mem


class _FlopCount:
    total = 0.0

    def get_total_flops(self) -> float:
        return self.total


@contextmanager
def counting():
    """Count FLOPs with FlopCounterMode's per-operator formulas, through a plain dispatch mode:
    FlopCounterMode's own module tracking breaks ``torch.autograd.grad`` on leaves (the attack, the
    gradient-based explanations)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    registry = FlopCounterMode(display=False).flop_registry
    count = _FlopCount()

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            rule = registry.get(func._overloadpacket)
            if rule is None and func is not torch.ops.prim.device.default:
                with self:  # composite ops (linear under inference_mode): count their parts
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if rule is not None:
                count.total += rule(*args, **kwargs, out_val=out)
            return out

    with Mode():
        yield count


def unet_config(channels: int = 256):
    """guided-diffusion 256's flags (``channels`` < 256: a narrower copy, for smoke tests only)."""
    import dataclasses

    from fvit.denoise import guided_diffusion_256_config

    cfg = guided_diffusion_256_config()
    if channels == cfg.model_channels:
        return cfg
    return dataclasses.replace(cfg, model_channels=channels, num_head_channels=max(channels // 4, 1),
                               norm_groups=min(32, channels // 2))


def random_guided_unet(channels: int = 256):
    """The guided-diffusion 256 UNet with random weights; the zero-initialised output convs are
    re-drawn (default init) so that the network's output depends on its input."""
    from fvit.denoise import UNet
    from fvit.denoise.guided import GuidedDiffusionDenoiser

    torch.manual_seed(0)
    unet = UNet(unet_config(channels))
    for mod in unet.modules():
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)) and not mod.weight.any():
            mod.reset_parameters()
            mod.weight.data.mul_(0.1)
    return GuidedDiffusionDenoiser(unet).eval()


def forward_flops(build, x_shape, *extra) -> float:
    """FLOPs of one forward pass of ``build()`` at batch 1, counted on the meta device."""
    with torch.device("meta"):
        net = build()
        x = torch.empty(x_shape)
        with torch.no_grad(), counting() as c:
            net(x, *[torch.zeros(1, dtype=torch.long) for _ in extra])
    return float(c.get_total_flops())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--sizes", default="224,256", help="denoiser working sizes (224: Carlini, 256: native)")
    ap.add_argument("--methods", default="raw_attention,rollout,gradcam,lrp,transformer_attribution,attribution_rollout")
    ap.add_argument("--sigma", default="8/255")
    ap.add_argument("--attack-steps", type=int, default=10, help="PGD steps (the papers: 10)")
    ap.add_argument("--ref-steps", type=int, default=45, help="chain calls run for the reference (45: all)")
    ap.add_argument("--ref", choices=("on", "off"), default="on")
    ap.add_argument("--max-batch", default="auto", help="DDS chunk size: an integer or 'auto' (free memory)")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
    ap.add_argument("--autocast", default="auto", help="DDS autocast: auto (bf16 on CUDA) | none | bf16 | fp16")
    ap.add_argument("--ratio-images", type=int, default=32, help="images for the explanation cost ratios (0: skip)")
    ap.add_argument("--ratio-batch", type=int, default=32)
    ap.add_argument("--ratio-repeats", type=int, default=2,
                    help="timings per method and batch size, interleaved; the fastest is kept (shared machines)")
    ap.add_argument("--unet-channels", type=int, default=256, help="256: the real UNet (smaller: smoke tests only)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--keep-freed-memory", choices=("on", "off"), default="on",
                    help="glibc keeps freed memory for reuse, as the fvit command does (fvit.memory)")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    from fvit.utils import parse_number

    a.sigma = parse_number(a.sigma, "--sigma")  # options are strings; the library takes numbers

    from fvit.attacks import get_attack
    from fvit.dds import DDS, DDSExplainer
    from fvit.dds.core import votes
    from fvit.dds.fusion import fuse
    from fvit.explain import get_method
    from fvit.explain.base import cpu_chunk
    from fvit.models import load_model
    from fvit.utils import resolve_device

    if a.threads:
        torch.set_num_threads(a.threads)
    from fvit.memory import keep_freed_cpu_memory

    kept = a.keep_freed_memory == "on" and keep_freed_cpu_memory()
    device = resolve_device(a.device)
    desc, peak_low, peak_fp32 = device_peak(device)
    n, m = a.images, a.samples
    methods = a.methods.split(",")
    model = load_model("vit_base_patch16_224", pretrained=False, device=device).eval()
    den = random_guided_unet(a.unet_channels).to(device)
    channels_last = a.channels_last == "on" or (a.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        den = den.to(memory_format=torch.channels_last)
    if a.compile:
        den.unet = torch.compile(den.unet)
    images = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    keys = [f"img{i}" for i in range(n)]
    labels = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(1)).to(device)
    attack = get_attack("pgd", 8 / 255, steps=a.attack_steps)

    print(f"device: {device}; peak: {desc}; clock: {'wall' if device.type == 'cuda' else 'process CPU time'}; "
          f"peak memory: {'max allocated per stage' if device.type == 'cuda' else 'process max RSS so far'}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ViT-B/16 "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), guided-diffusion UNet "
          f"({sum(p.numel() for p in den.parameters()) / 1e6:.1f} M params), random weights; "
          f"{n} images x {m} samples, sigma {a.sigma}, PGD {a.attack_steps} steps, channels_last {channels_last}, "
          f"compile {a.compile}, freed CPU memory kept for reuse {kept}")

    import timm

    from fvit.denoise import UNet

    vit_flops = forward_flops(lambda: timm.create_model("vit_base_patch16_224", pretrained=False), (1, 3, 224, 224))
    print(f"FLOPs (FlopCounterMode, batch 1): ViT-B/16 forward {vit_flops / 2e9:.1f} GMAC", end="")
    unet_flops = {}
    for size in map(int, a.sizes.split(",")):
        unet_flops[size] = forward_flops(lambda: UNet(unet_config(a.unet_channels)), (1, 3, size, size), 1)
        print(f"; UNet forward at {size}: {unet_flops[size] / 2e9:.0f} GMAC", end="")
    print("\n")

    # explanation FLOPs per sample: counted on a warm-up call at batch 1
    method_objs = {name: get_method(name) for name in methods}
    expl_flops = {}
    for name, meth in method_objs.items():
        with counting() as c:
            meth(model, images[:1], labels[:1])
        expl_flops[name] = float(c.get_total_flops())
    with counting() as c:
        attack(model, images[:1], labels[:1])
    attack_flops = float(c.get_total_flops())

    rows = []  # (pipeline, stage, seconds, flops, peak flop/s, memory)

    def add(pipe, stage, sec, flops, peak, mem, note=""):
        rows.append((pipe, stage, sec, flops, peak, mem, note))

    for size in map(int, a.sizes.split(",")):
        resize = "never" if size == 224 else "always"
        dds = DDS(den, sigma=a.sigma, samples=m, resize=resize, autocast=a.autocast,
                  max_batch=a.max_batch if a.max_batch == "auto" else int(a.max_batch))
        den_peak = peak_low if dds.autocast is not None else peak_fp32
        pipe = f"fvit, one-shot at {size}"
        if device.type == "cuda":  # warm-up (kernel selection, torch.compile, the chunk-size probe)
            dds.denoise(images[:1], keys=keys[:1])
        samples, sec, mem = timed(lambda: dds.denoise(images, keys=keys), device)
        chunk = dds.chunk_size(torch.zeros(1, 3, size, size, device=device))  # the denoiser's input size
        add(pipe, "denoise", sec, n * m * unet_flops[size], den_peak, mem,
            f"autocast {dds.settings()['autocast']}, chunk {chunk}")
        logits, sec, mem = timed(lambda: dds.logits(model, samples), device)
        add(pipe, "classify", sec, n * m * vit_flops, peak_fp32, mem)
        target = votes(logits).argmax(dim=1)
        for name, meth in method_objs.items():
            explainer = DDSExplainer(meth, dds)
            _, sec, mem = timed(lambda: explainer(model, images, target, keys=keys), device)
            add(pipe, f"explain: {name}", sec, n * m * expl_flops[name], peak_fp32, mem)
        _, sec, mem = timed(lambda: attack(model, images, labels), device)
        add(pipe, "attack", sec, n * attack_flops, peak_fp32, mem)
        if device.type == "cuda" and dds.autocast is not None:  # the low-precision x0 against fp32
            ref32 = DDS(den, sigma=a.sigma, samples=m, resize=resize, autocast="none",
                        max_batch=dds.max_batch).denoise(images, keys=keys)
            print(f"one-shot x0 at {size}, {dds.settings()['autocast']} vs fp32: max abs diff "
                  f"{(ref32 - samples).abs().max().item():.2e} (pixels in [0, 1])")

    if a.ref == "on":  # the reference style: batch 1, loops, 45-step demo chain, per-method denoising
        from fvit.dds.core import DDS as _DDS

        ref_ac = "fp16" if device.type == "cuda" else "none"
        scale = 45 / a.ref_steps
        pipe = "reference style"

        def ref_denoise():
            out = []
            with torch.no_grad():
                for i in range(n):
                    row = []
                    for j in range(m):
                        d = _DDS(den, sigma=a.sigma, mapping="fvit-demo", denoise="fvit-demo", samples=1,
                                 max_batch=1, autocast=ref_ac, resize="always")
                        d.t_star = min(d.t_star, a.ref_steps)  # the chain makes t* network calls
                        row.append(d._run(images[i:i + 1], torch.Generator(device).manual_seed(i * m + j)))
                    out.append(torch.cat(row, dim=1))
            return torch.cat(out)

        samples, sec, mem = timed(ref_denoise, device)
        note = f"autocast {ref_ac}, 256 px" + (f", {a.ref_steps} of 45 calls run, time x {scale:.3g}" if scale != 1 else "")
        flops_256 = unet_flops.get(256) or forward_flops(lambda: UNet(unet_config(a.unet_channels)), (1, 3, 256, 256), 1)
        add(pipe, "denoise", sec * scale, n * m * 45 * flops_256, peak_low if ref_ac != "none" else peak_fp32, mem, note)

        def ref_classify():
            with torch.no_grad():
                return torch.stack([torch.stack([model(samples[i, j:j + 1])[0] for j in range(m)]) for i in range(n)])

        logits, sec, mem = timed(ref_classify, device)
        add(pipe, "classify", sec, n * m * vit_flops, peak_fp32, mem)
        target = votes(logits).argmax(dim=1)
        for name, meth in method_objs.items():
            def ref_explain():
                maps = [torch.stack([meth(model, samples[i, j:j + 1], target[i:i + 1]).pixel[0] for j in range(m)])
                        for i in range(n)]
                return fuse(torch.stack(maps), "max-drop10")

            _, sec, mem = timed(ref_explain, device)
            add(pipe, f"explain: {name}", sec, n * m * expl_flops[name], peak_fp32, mem)
        _, sec, mem = timed(lambda: [attack(model, images[i:i + 1], labels[i:i + 1]) for i in range(n)], device)
        add(pipe, "attack", sec, n * attack_flops, peak_fp32, mem)

    # ---- report
    print("| pipeline | stage | seconds | images/s | TFLOP/s | MFU | peak memory (GB) | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for pipe, stage, sec, flops, peak, mem, note in rows:
        print(f"| {pipe} | {stage} | {sec:.3f} | {n / sec:.3g} | {flops / sec / 1e12:.3g} | "
              f"{100 * flops / sec / peak:.2f} % | {mem / 1e9:.2f} | {note} |")
    print()
    print(f"End to end, {len(methods)} methods with DDS (fvit: one denoising pass shared; reference: each method "
          "denoises and classifies its own samples):")
    print("| pipeline | seconds | images/s | TFLOP/s | MFU | vs reference |")
    print("|---|---:|---:|---:|---:|---:|")
    totals = {}
    for pipe in dict.fromkeys(r[0] for r in rows):
        rr = [r for r in rows if r[0] == pipe]
        k = len(methods) if pipe == "reference style" else 1
        sec = sum(r[2] * (k if r[1] in ("denoise", "classify") else 1) for r in rr)
        flops = sum(r[3] * (k if r[1] in ("denoise", "classify") else 1) for r in rr)
        peak_time = sum(r[3] * (k if r[1] in ("denoise", "classify") else 1) / r[4] for r in rr)
        totals[pipe] = (sec, flops, peak_time)
    ref_sec = totals.get("reference style", (float("nan"),))[0]
    for pipe, (sec, flops, peak_time) in totals.items():
        print(f"| {pipe} | {sec:.2f} | {n / sec:.3g} | {flops / sec / 1e12:.3g} | {100 * peak_time / sec:.2f} % | "
              f"{ref_sec / sec:.1f}x |")

    if a.ratio_images:  # explanation cost per image / (forward + backward), batch 1 and batch B
        print()
        x = torch.rand(a.ratio_images, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
        y = torch.randint(0, 1000, (a.ratio_images,), generator=torch.Generator().manual_seed(3)).to(device)

        def fwd_bwd(xx, yy):
            xx = xx.clone().requires_grad_(True)
            torch.autograd.grad(model(xx).gather(1, yy[:, None]).sum(), xx)

        fns = {"forward+backward": fwd_bwd, **{k: (lambda mm: lambda xx, yy: mm(model, xx, yy))(v)
                                                for k, v in method_objs.items()}}
        res = {}
        for name, fn in fns.items():
            fn(x[:1], y[:1])
            res[name] = {}
            for _ in range(a.ratio_repeats):
                for bs in (1, a.ratio_batch):
                    _, sec, _ = timed(lambda: [fn(x[i:i + bs], y[i:i + bs]) for i in range(0, a.ratio_images, bs)],
                                      device)
                    res[name][bs] = min(res[name].get(bs, float("inf")), sec / a.ratio_images)
        base = res["forward+backward"]
        print(f"Explanation cost, ViT-B/16, {a.ratio_images} images: seconds per image / forward+backward's "
              f"(fastest of {a.ratio_repeats} interleaved timings; on a CPU the methods run in chunks of "
              f"{cpu_chunk(model)} images, forward+backward in one piece)")
        print(f"| method | batch 1 (s/img) | batch {a.ratio_batch} (s/img) | ratio at 1 | ratio at {a.ratio_batch} | "
              f"batch {a.ratio_batch} speed-up |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in res.items():
            print(f"| {name} | {r[1]:.4f} | {r[a.ratio_batch]:.4f} | {r[1] / base[1]:.2f} | "
                  f"{r[a.ratio_batch] / base[a.ratio_batch]:.2f} | {r[1] / r[a.ratio_batch]:.2f}x |")


if __name__ == "__main__":
    main()
