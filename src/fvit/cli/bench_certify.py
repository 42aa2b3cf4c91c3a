"""`fvit bench certify DATASET`: the tightness check of the faithful region (paper section 6.2).

The `fvit bench` group belongs to fvit.cli.bench, which calls :func:`register_bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fvit.cli import certify as certify_cli
from fvit.cli import world
from fvit.cli.common import MODEL_HELP, exit_on_error, number, out_path
from fvit.errors import FvitError


def parse_factors(text: str) -> tuple[float, ...]:
    try:
        factors = tuple(float(number(t, "--factors")) for t in text.split(",") if t.strip())
    except FvitError:
        raise FvitError(f"--factors: expected comma-separated numbers like 1.5,2, got {text!r}") from None
    if not factors or any(f <= 0 for f in factors):
        raise FvitError(f"--factors must be positive numbers, got {text!r}")
    return factors


def certify_settings(dataset: str, *, model: str, checkpoint: Optional[str], pretrained: bool, denoiser: str,
                     sigma: str, samples: int, n0: int, k: int, beta: float, alpha: float, norm: str,
                     linf_conversion: str, attention: str, protocol: str, mapping: str, denoise: str, mc_batch: int,
                     seed: int, device: Optional[str], max_batch: Optional[int], factors: str, limit: Optional[int],
                     attack_steps: int, radius: str, gradient: str, out: Path, properties: str = "prediction,topk",
                     eot: int = 2, check_samples: Optional[int] = None, certificate: str = "gaussian",
                     batch_size: int = 8, progress: bool = True):
    """The `BenchSettings` of `fvit bench certify` (strings parsed here); ``samples`` is the
    certificate's n, ``DDSConfig.samples`` the DDS samples per denoising call."""
    from fvit.bench.certify import CertifyParams
    from fvit.bench.settings import BenchSettings, DataSpec, ModelSpec, RunSpec
    from fvit.certify import TightnessConfig

    # the certificate and its DDS, exactly as `fvit certify` parses them (DDS samples per call:
    # CertifyConfig.dds_samples)
    cert, dds = certify_cli.certify_settings(
        sigma=sigma, samples=samples, n0=n0, k=k, beta=beta, alpha=alpha, norm=norm, linf_conversion=linf_conversion,
        attention=attention, protocol=protocol, certificate=certificate, mc_batch=mc_batch, max_batch=max_batch,
        denoiser=denoiser, mapping=mapping, denoise=denoise, seed=seed, device=device, out=out)
    tight = TightnessConfig(factors=parse_factors(factors),
                            properties=tuple(p.strip() for p in properties.split(",") if p.strip()),
                            attack_steps=attack_steps, eot=eot, check_samples=check_samples, radius=radius,
                            gradient=gradient)
    world.check_world_options(model, checkpoint, seed)
    spec = (ModelSpec(name=model, checkpoint=world.world_classifier_path(model, seed), pretrained=False)
            if world.is_world(model) else ModelSpec(name=model, checkpoint=checkpoint, pretrained=pretrained))
    return BenchSettings("certify", out=out, model=spec,
                         data=DataSpec(spec=dataset, limit=limit),
                         run=RunSpec(seed=seed, batch_size=batch_size, device=device, progress=progress),
                         dds=dds, params=CertifyParams(certify=cert, tightness=tight))


def load_dataset(spec: str, size, limit: Optional[int], seed: int):
    from fvit.data import open_dataset

    return open_dataset(spec, size, limit=limit, seed=seed)


def run_bench_certify(dataset: str, **options) -> dict:
    """Run the 'certify' entry of the experiment engine (results store in --out: rerun to resume;
    torchrun shards the images); prints the tightness table. Returns the tightness report."""
    from fvit.bench.engine import run_experiment
    from fvit.certify.tightness import SoundnessViolation, tightness_markdown

    from fvit.bench.distributed import init_distributed

    settings = certify_settings(dataset, **options)
    dist = init_distributed()
    try:
        device = dist.device(settings.run.device)
        if not dist.is_main:
            dist.barrier()  # rank 0 trains the world models when missing; the others then load them
        if world.is_world(settings.model.name):
            net = certify_cli.load_model(settings.model.name, checkpoint=None, pretrained=False, device=device,
                                         seed=settings.run.seed)
        else:
            net = certify_cli.load_model(settings.model.name, checkpoint=settings.model.checkpoint,
                                         pretrained=settings.model.pretrained, device=device)
        certify_cli.prepare_denoiser(options.get("denoiser"), settings.run.seed, device)
        if dist.is_main:
            dist.barrier()
        ds = load_dataset(dataset, getattr(net, "input_size", 224), settings.data.limit, settings.run.seed)
        dds = certify_cli.build_dds(settings.dds, device=device)
        record = run_experiment(settings, model=net, dataset=ds, dds=dds, dist=dist)
    except SoundnessViolation:
        _echo(settings.out)
        raise
    finally:
        dist.close()
    _echo(settings.out)
    report = record["results"]
    if not (settings.out / "certify_tightness.md").exists():
        typer.echo(tightness_markdown(report))
    return report


def _echo(out: Path) -> None:
    md = out / "certify_tightness.md"
    if md.exists():
        typer.echo(md.read_text())
        typer.echo(f"wrote {out / 'certify_tightness.json'} and {md}")


def bench_certify_command(
    dataset: str = typer.Argument(..., help="Data set spec (e.g. imagenet-val:DIR, world)."),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint"),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained"),
    denoiser: str = typer.Option("guided-diffusion-256", "--denoiser", help="Denoiser spec, or world[:quick]."),
    sigma: str = typer.Option("8/255", "--sigma"),
    samples: int = typer.Option(1000, "--samples", help="Estimation samples n."),
    n0: int = typer.Option(100, "--n0"),
    k: int = typer.Option(10, "--k"),
    beta: float = typer.Option(0.8, "--beta"),
    alpha: float = typer.Option(0.001, "--alpha"),
    norm: str = typer.Option("l2", "--norm", help="l2 | linf."),
    linf_conversion: str = typer.Option("sqrt_d", "--linf-conversion", help="sqrt_d (R/sqrt(d)) | paper (R/d)."),
    certificate: str = typer.Option("gaussian", "--certificate",
                                    help="gaussian | renyi | renyi-re | renyi-hu (whose radii are attacked)."),
    attention: str = typer.Option("raw_attention", "--attention"),
    protocol: str = typer.Option("two_stage", "--protocol"),
    mapping: str = typer.Option("carlini", "--mapping"),
    denoise: str = typer.Option("one-shot", "--denoise"),
    mc_batch: int = typer.Option(certify_cli.DEFAULT_MC_BATCH, "--mc-batch"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch"),
    factors: str = typer.Option("0.9,1,1.5,2", "--factors", help="Attack radii as multiples of R."),
    properties: str = typer.Option("prediction,topk", "--properties", help="prediction,topk: what is attacked."),
    eot: int = typer.Option(2, "--eot", help="DDS draws per step of the top-k attack."),
    check_samples: Optional[int] = typer.Option(None, "--check-samples",
                                                help="Fresh samples judging each attack (default: --samples)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Random subset of this many images."),
    attack_steps: int = typer.Option(20, "--attack-steps"),
    radius: str = typer.Option("own", "--radius",
                               help="own (each property at its own radius: the soundness check) | region "
                                    "(both at min(P, Q), the paper)."),
    gradient: str = typer.Option("auto", "--gradient", help="auto | exact | bpda."),
    out: str = typer.Option("results/certify", "--out", help="Results store and report; rerun to resume."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per batch (a row's unit of resume)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Tightness and soundness of the certificates: attacks on the prediction (PGD through DDS) and on
    the top-k set (explanation attack through DDS) at factor * R; a confirmed success inside a
    certified radius fails the run."""
    with exit_on_error():
        out = out_path(out)
        run_bench_certify(dataset, model=model, checkpoint=checkpoint, pretrained=pretrained,
                          denoiser=denoiser, sigma=sigma, samples=samples, n0=n0, k=k, beta=beta,
                          alpha=alpha, norm=norm, linf_conversion=linf_conversion, attention=attention,
                          protocol=protocol, mapping=mapping, denoise=denoise, mc_batch=mc_batch,
                          seed=seed, device=device, max_batch=max_batch, factors=factors, limit=limit,
                          attack_steps=attack_steps, radius=radius, gradient=gradient, out=out,
                          properties=properties, eot=eot, check_samples=check_samples, certificate=certificate,
                          batch_size=batch_size, progress=progress)


def register_bench(bench_app: typer.Typer) -> None:
    """Add the `certify` subcommand to the `fvit bench` group."""
    bench_app.command("certify")(bench_certify_command)
