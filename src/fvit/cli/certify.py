"""`fvit certify IMAGE...`: the faithful region of Algorithm 2 (corrected) per image.

Thin: parses the options into a `fvit.certify.CertifyConfig` and a `fvit.dds.DDSConfig` (every
option checked before anything is loaded), loads the model / denoiser / images through the library,
calls `fvit.certify.certify` with the config whole, prints a table and writes certify.json (both
settings recorded whole).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer

from fvit.cli import world
from fvit.errors import FvitError
from fvit.cli.common import (MODEL_HELP, device_option, exit_on_error, number_in, out_path, output_dir, parse_method,
                              positive_int, probability, sigma_value)
from fvit.utils import check_output_file, module_device

#: Default of --mc-batch, DDS samples per denoising call: `fvit.certify.config.DEFAULT_MC_BATCH`
#: (a literal here so that the command line starts without importing the statistics; a test checks
#: that the two agree).
DEFAULT_MC_BATCH = 32
#: Library settings (`CertifyConfig` / `DDSConfig` fields) -> the options that set them, named
#: after a settings error.
CERTIFY_FLAGS = {"k": "--k", "beta": "--beta", "alpha": "--alpha", "n0": "--n0", "n": "--samples",
                 "norm": "--norm", "linf_conversion": "--linf-conversion", "protocol": "--protocol",
                 "certificate": "--certificate", "attention": "--attention", "mc_batch": "--mc-batch",
                 "max_batch": "--max-batch", "mapping": "--mapping", "denoise": "--denoise", "seed": "--seed"}
#: Console width when stdout is not a terminal (pipes, logs, tests): wide enough for the table.
TABLE_WIDTH_NON_TTY = 200


def load_model(name: str, *, checkpoint: Optional[str], pretrained: bool, device: Optional[str], seed: int = 0):
    """The classifier: a `fvit.models.load_model` name, or world[:PRESET] (the demo's trained ViT
    for ``seed``, trained on first use: `fvit.cli.world`)."""
    if world.is_world(name):
        return world.prepare(name, None, seed, device=device, log=lambda m: typer.echo(m, err=True))
    from fvit.models import load_model as _load

    return _load(name, pretrained=pretrained, checkpoint=checkpoint, device=device)


def prepare_denoiser(spec: Optional[str], seed: int, device: Optional[str]) -> Optional[str]:
    """``spec`` for `fvit.dds.DDSConfig`: world[:PRESET] becomes the cached demo DDPM's folder
    (trained first when missing); other specs are unchanged."""
    if world.is_world(spec):
        world.prepare(None, spec, seed, device=device, log=lambda m: typer.echo(m, err=True))
    return world.denoiser_spec(spec, seed)


def load_images(paths: list[str], size):
    from fvit.data.images import load_images as _load

    return _load(paths, size)


def build_dds(config, *, device: Optional[str]):
    """The DDS of a `fvit.dds.DDSConfig` (loads ``config.denoiser``)."""
    from fvit.dds import make_dds

    return make_dds(config, device=device)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.4g}"
    return str(x)


#: Column order of the printed families: the headline first, then the others.
FAMILIES = ("gaussian", "renyi", "renyi-re", "renyi-hu")


def _radius_cell(radii: dict) -> str:
    mark = "" if radii["certificate"] else " *"
    return f"{_fmt(radii['prediction'])} / {_fmt(radii['topk'])} / {_fmt(radii['region'])}{mark}"


def print_table(results, *, title: str) -> None:
    """A rich table: class, p1/p2 bounds, and per certificate family the prediction / top-k / region
    radii, families that are not certificates marked with '*'."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=TABLE_WIDTH_NON_TTY)
    first = results[0][1]
    order = [first.certificate] + [f for f in FAMILIES if f != first.certificate]
    table = Table(title=title)
    for col in ("image", "class", "p1 lower", "p2 upper", *(f"{f} pred/top-k/region" for f in order),
                "certified patches", "status"):
        table.add_column(col, justify="left" if col in ("image", "status", "certified patches") else "right")
    for name, r in results:
        if r.abstained:
            status = f"abstain: {r.reason}"
        elif not r.is_certificate:
            status = f"{r.certificate}: not a certificate"
        else:
            status = "certified" if r.region > 0 else "certified radius 0"
        table.add_row(name, str(r.predicted_class), _fmt(r.p1_lower), _fmt(r.p2_upper),
                      *(_radius_cell(r.radii[f]) for f in order),
                      ",".join(map(str, r.certified_patches)) or "-", status)
    console.print(table)
    unit = "l2" if first.norm == "l2" else f"linf = l2 {LINF_TEXT[first.linf_conversion]}"
    typer.echo(f"Radii: supremum radii of OPEN balls in pixel units [0, 1], norm {unit}; confidence "
               f"1 - {first.alpha_conf:g} (prediction {first.alpha_split['prediction']:g} + top-k "
               f"{first.alpha_split['topk']:g}), k={first.k}, beta={first.beta:g} (k0={first.k0}).")
    typer.echo("gaussian: Cohen et al. prediction radius + Lipschitz top-k membership radius (Clopper-Pearson); "
               "renyi: Rényi prediction + exact top-k divergence at the worst vector of empirical-Bernstein "
               "bounds (methods whose maps are distributions by construction only; - = not applicable). "
               "certified patches: the top-k set S (flat patch indices) whose overlap the headline family certifies.")
    typer.echo("* = NOT a certificate: renyi-re / renyi-hu are the papers' formulas as published (raw "
               "frequencies, point-estimate attention, pooled or original top-k form).")


#: How an l_inf radius was derived from the l_2 one, for the printed table.
LINF_TEXT = {"sqrt_d": "/ sqrt(d) (standard)", "paper": "/ d (Algorithm 2 as printed)"}


def check_options(*, sigma: str, samples: int, n0: int, k: int, beta, alpha, mc_batch: int,
                  max_batch: Optional[int], device: Optional[str], out: Optional[Path]) -> dict[str, float]:
    """Parse and check the numeric options (one-line errors naming the option); returns sigma,
    beta and alpha as numbers."""
    value = sigma_value(sigma, "--sigma")
    positive_int(samples, "--samples")
    if n0 < 0:
        raise FvitError(f"--n0 {n0}: must be >= 0")
    positive_int(k, "--k")
    positive_int(mc_batch, "--mc-batch")
    if max_batch is not None:
        positive_int(max_batch, "--max-batch")
    beta_value = number_in(beta, "--beta", 0.0, 1.0, open_lo=True)
    alpha_value = probability(alpha, "--alpha")
    device_option(device)
    if out is not None:
        output_dir(out)
        check_output_file(Path(out) / "certify.json", "--out")
    return {"sigma": value, "beta": beta_value, "alpha": alpha_value}


def certify_settings(*, sigma: str, samples: int, n0: int, k: int, beta, alpha, norm: str, linf_conversion: str,
                     attention: str, protocol: str, certificate: str, mc_batch: int, max_batch: Optional[int],
                     denoiser: Optional[str], mapping: str, denoise: str, seed: int, device: Optional[str] = None,
                     out: Optional[Path] = None):
    """The options as settings: (`fvit.certify.CertifyConfig`, `fvit.dds.DDSConfig`), checked before
    anything is loaded. The DDS draws ``CertifyConfig.dds_samples`` samples per call (the rule
    that caps m at --mc-batch); ``--seed`` seeds both the DDS and the certification noise."""
    from fvit.certify import CertifyConfig
    from fvit.dds import DDSConfig

    numbers = check_options(sigma=sigma, samples=samples, n0=n0, k=k, beta=beta, alpha=alpha, mc_batch=mc_batch,
                            max_batch=max_batch, device=device, out=out)
    world.check_world_options(None, None, seed, denoiser)
    config = CertifyConfig(k=k, beta=numbers["beta"], alpha=numbers["alpha"], n0=n0, n=samples, norm=norm,
                           linf_conversion=linf_conversion, protocol=protocol, certificate=certificate,
                           attention=parse_method(attention), mc_batch=mc_batch, max_batch=max_batch)
    dds_config = DDSConfig(denoiser=world.denoiser_spec(denoiser, seed), sigma=numbers["sigma"], samples=config.dds_samples, mapping=mapping,
                           denoise=denoise, seed=seed, **({"max_batch": max_batch} if max_batch else {}))
    return config, dds_config


def check_k(k: int, net) -> None:
    """--k must not exceed the model's patch count (checked before any sampling)."""
    grid = getattr(net, "grid_size", None)
    if grid is not None and k > grid[0] * grid[1]:
        raise FvitError(f"--k {k}: larger than the model's {grid[0] * grid[1]} patches ({grid[0]}x{grid[1]} grid)")


def run_certify(images: list[str], *, model: str, checkpoint: Optional[str], pretrained: bool,
                denoiser: str, sigma: str, samples: int, n0: int, k: int, beta: float, alpha: float,
                norm: str, linf_conversion: str, attention: str, protocol: str, mapping: str,
                denoise: str, mc_batch: int, seed: int, device: Optional[str], max_batch: Optional[int],
                out: Optional[Path], certificate: str = "gaussian") -> list:
    from fvit.certify import certify
    from fvit.utils import json_safe, write_text_atomic

    # every option is checked before anything is loaded or computed
    config, dds_config = certify_settings(
        sigma=sigma, samples=samples, n0=n0, k=k, beta=beta, alpha=alpha, norm=norm, linf_conversion=linf_conversion,
        attention=attention, protocol=protocol, certificate=certificate, mc_batch=mc_batch, max_batch=max_batch,
        denoiser=denoiser, mapping=mapping, denoise=denoise, seed=seed, device=device, out=out)
    world.check_world_options(model, checkpoint, seed)
    net = load_model(model, checkpoint=checkpoint, pretrained=pretrained, device=device, seed=seed)
    prepare_denoiser(denoiser, seed, device)
    check_k(k, net)
    size = getattr(net, "input_size", 224)
    batch = load_images(images, size)
    batch = batch.to(module_device(net))
    dds = build_dds(dds_config, device=device)
    results = certify(net, dds, batch, config, seed=seed)
    print_table(list(zip(images, results)), title=f"Faithful region ({norm}, sigma={dds_config.sigma:.4g})")
    if out is not None:
        payload = {"config": {"model": model, "checkpoint": checkpoint, "pretrained": pretrained, "seed": seed,
                              "certify": config.to_dict(), "dds": dds_config.to_dict()},
                   "results": [dict(image=str(p), **r.to_dict()) for p, r in zip(images, results)]}
        text = json.dumps(json_safe(payload), indent=2, allow_nan=False)
        try:
            write_text_atomic(out / "certify.json", text)
        except FvitError as e:  # disk full after the whole run: keep the results on stdout
            typer.echo(text)
            raise FvitError(f"{e}; the results are printed above as JSON (save them with a redirect)") from None
        typer.echo(f"wrote {out / 'certify.json'}")
    return results


def certify_command(
    images: list[str] = typer.Argument(..., help="Image files."),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Local state dict (timm; torchvision for tv:)."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained"),
    denoiser: str = typer.Option("guided-diffusion-256", "--denoiser",
                                 help="Denoiser spec, or world[:quick] (the demo's trained DDPM for --seed)."),
    sigma: str = typer.Option("8/255", "--sigma", help="DDS noise level (pixel units)."),
    samples: int = typer.Option(1000, "--samples", help="Estimation samples n."),
    n0: int = typer.Option(100, "--n0", help="Selection samples (two-stage protocols)."),
    k: int = typer.Option(10, "--k", help="Top-k size."),
    beta: float = typer.Option(0.8, "--beta", help="Required top-k overlap."),
    alpha: float = typer.Option(0.001, "--alpha", help="Confidence level alpha (failure probability)."),
    norm: str = typer.Option("l2", "--norm", help="l2 | linf."),
    linf_conversion: str = typer.Option("sqrt_d", "--linf-conversion",
                                        help="sqrt_d (R/sqrt(d), standard) | paper (R/d, Algorithm 2 as printed)."),
    certificate: str = typer.Option("gaussian", "--certificate",
                                    help="Headline family: gaussian (tight, default) | renyi (sound Rényi) | "
                                         "renyi-re | renyi-hu (the papers as published; not certificates)."),
    attention: str = typer.Option("raw_attention", "--attention", help="Explanation method for w."),
    protocol: str = typer.Option("two_stage", "--protocol",
                                 help="two_stage (Cohen) | two_stage_bonferroni | one_stage."),
    mapping: str = typer.Option("carlini", "--mapping", help="Timestep mapping."),
    denoise: str = typer.Option("one-shot", "--denoise", help="Denoising procedure."),
    mc_batch: int = typer.Option(DEFAULT_MC_BATCH, "--mc-batch", help="DDS samples per denoising call: m = min(--mc-batch, max(--samples, --n0)) "
                                            "(CertifyConfig.dds_samples)."),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Max images per forward."),
    out: Optional[str] = typer.Option(None, "--out", help="Directory for certify.json."),
) -> None:
    """Certify the faithful region of each image: tight Gaussian certificates by default, the sound
    Rényi ones and the papers' formulas (labelled as not certificates) side by side."""
    with exit_on_error(flags=CERTIFY_FLAGS):
        out = None if out is None else out_path(out)
        run_certify(images, model=model, checkpoint=checkpoint, pretrained=pretrained, denoiser=denoiser,
                    sigma=sigma, samples=samples, n0=n0, k=k, beta=beta, alpha=alpha, norm=norm,
                    linf_conversion=linf_conversion, attention=attention, protocol=protocol,
                    mapping=mapping, denoise=denoise, mc_batch=mc_batch, seed=seed, device=device,
                    max_batch=max_batch, out=out, certificate=certificate)


def register(app: typer.Typer) -> None:
    app.command("certify")(certify_command)
