"""`fvit bench certify DATASET`: the tightness check of the faithful region (paper section 6.2).

The `fvit bench` group belongs to fvit.cli.bench, which calls :func:`register_bench`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer

from fvit.cli import certify as certify_cli
from fvit.cli.common import exit_on_error, number
from fvit.errors import FvitError


def parse_factors(text: str) -> tuple[float, ...]:
    try:
        factors = tuple(float(number(t, "--factors")) for t in text.split(",") if t.strip())
    except FvitError:
        raise FvitError(f"--factors: expected comma-separated numbers like 1.5,2, got {text!r}") from None
    if not factors or any(f <= 0 for f in factors):
        raise FvitError(f"--factors must be positive numbers, got {text!r}")
    return factors


def load_dataset(spec: str, size, limit: Optional[int], seed: int):
    from fvit.data import open_dataset

    return open_dataset(spec, size, limit=limit, seed=seed)


def stack_dataset(dataset) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from fvit.data import collate

    batch = collate([dataset[i] for i in range(len(dataset))])
    if (batch["label"] < 0).any():
        raise FvitError("the tightness check needs labelled images (some labels are -1)")
    return batch["image"], batch["label"], batch["id"]


def run_bench_certify(dataset: str, *, model: str, checkpoint: Optional[str], pretrained: bool,
                      denoiser: str, sigma: str, samples: int, n0: int, k: int, beta: float, alpha: float,
                      norm: str, linf_conversion: str, attention: str, protocol: str, mapping: str,
                      denoise: str, mc_batch: int, seed: int, device: Optional[str],
                      max_batch: Optional[int], factors: str, limit: Optional[int], attack_steps: int,
                      radius: str, gradient: str, out: Path, properties: str = "prediction,topk",
                      eot: int = 2, check_samples: Optional[int] = None, certificate: str = "gaussian") -> dict:
    from fvit.certify.tightness import raise_on_violations, run_tightness, tightness_markdown

    factor_values = parse_factors(factors)
    sigma_value = number(sigma, "--sigma")
    net = certify_cli.load_model(model, checkpoint=checkpoint, pretrained=pretrained, device=device)
    ds = load_dataset(dataset, getattr(net, "input_size", 224), limit, seed)
    images, labels, ids = stack_dataset(ds)
    param = next(iter(net.parameters()), None)
    if param is not None:
        images, labels = images.to(param.device), labels.to(param.device)
    dds = certify_cli.build_dds(denoiser, sigma=sigma_value, mapping=mapping, denoise=denoise,
                                samples=min(mc_batch, max(samples, n0)), seed=seed, device=device,
                                max_batch=max_batch)
    report = run_tightness(net, dds, images, labels, factors=factor_values, attack_steps=attack_steps,
                           properties=tuple(p.strip() for p in properties.split(",") if p.strip()), eot=eot,
                           check_samples=check_samples, k=k, beta=beta, alpha_conf=alpha, n0=n0, n=samples,
                           norm=norm, linf_conversion=linf_conversion, attention=attention, protocol=protocol,
                           certificate=certificate, radius=radius, gradient=gradient, seed=seed,
                           max_batch=max_batch)
    for rec, item_id in zip(report["images"], ids):
        rec["id"] = item_id
    report["config"].update(dataset=dataset, model=model, denoiser=denoiser, limit=limit)
    out.mkdir(parents=True, exist_ok=True)
    (out / "certify_tightness.json").write_text(json.dumps(report, indent=2))
    markdown = tightness_markdown(report)
    (out / "certify_tightness.md").write_text(markdown)
    typer.echo(markdown)
    typer.echo(f"wrote {out / 'certify_tightness.json'} and {out / 'certify_tightness.md'}")
    raise_on_violations(report)
    return report


def bench_certify_command(
    dataset: str = typer.Argument(..., help="Data set spec (e.g. imagenet-val:DIR, world)."),
    model: str = typer.Option(..., "--model"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint"),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained"),
    denoiser: str = typer.Option("guided-diffusion-256", "--denoiser"),
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
    out: Path = typer.Option(Path("results/certify"), "--out"),
) -> None:
    """Tightness and soundness of the certificates: attacks on the prediction (PGD through DDS) and on
    the top-k set (explanation attack through DDS) at factor * R; a confirmed success inside a
    certified radius fails the run."""
    with exit_on_error():
        run_bench_certify(dataset, model=model, checkpoint=checkpoint, pretrained=pretrained,
                          denoiser=denoiser, sigma=sigma, samples=samples, n0=n0, k=k, beta=beta,
                          alpha=alpha, norm=norm, linf_conversion=linf_conversion, attention=attention,
                          protocol=protocol, mapping=mapping, denoise=denoise, mc_batch=mc_batch,
                          seed=seed, device=device, max_batch=max_batch, factors=factors, limit=limit,
                          attack_steps=attack_steps, radius=radius, gradient=gradient, out=out,
                          properties=properties, eot=eot, check_samples=check_samples, certificate=certificate)


def register_bench(bench_app: typer.Typer) -> None:
    """Add the `certify` subcommand to the `fvit bench` group."""
    bench_app.command("certify")(bench_certify_command)
