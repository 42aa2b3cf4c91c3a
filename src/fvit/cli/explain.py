"""`fvit methods` and `fvit explain`: list the explanation methods; explain images with one.

``fvit explain IMAGE... --model NAME --method M --out DIR`` writes, per image, ``<stem>.png`` (jet
heat map blended on the image at its own size) and ``<stem>.json`` (prediction, target, method,
model, patch-level map, sizes). Images are resized (no crop) to the model's input size and
explained in batches of ``--batch-size`` (one batched pass per batch). ``--model tiny`` is the
project's small random test ViT (32x32 inputs, 10 classes; needs ``--no-pretrained``).

The explanation callable is built by `_build_explainer` (the hook where smoothing options such as
DDS plug in: anything with the signature ``(model, images, target) -> Explanation`` works).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import torch
import typer

from fvit.cli.common import exit_on_error
from fvit.errors import InputError

Explainer = Callable[..., "object"]


def _build_explainer(method: str, model, dds: Optional[dict] = None) -> Explainer:
    """The callable ``(model, images, target) -> Explanation`` that `fvit explain` runs: the plain
    method, or its FViT version (``DDSExplainer``) when ``dds`` holds the smoothing options (strings
    passed straight to `fvit.dds.make_dds`)."""
    from fvit.cli.common import parse_method

    explainer = parse_method(method)
    model.require_token_methods(explainer.name)
    if dds is None:
        return explainer
    from fvit.dds import make_dds_explainer

    return make_dds_explainer(explainer, device=model.device, **dds)


def _check_paths(paths: List[Path]) -> None:
    for p in paths:
        if not p.is_file():
            raise InputError(f"image {p}: no such file")


def _unique_stems(paths: List[Path]) -> list[str]:
    """Output names: the file stem, suffixed _2, _3 ... when two inputs share a stem."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        stems.append(p.stem if n == 1 else f"{p.stem}_{n}")
    return stems


def _write_outputs(path: Path, stem: str, out: Path, explanation, index: int, model, method: str,
                   dds: Optional[dict] = None) -> None:
    from fvit.data.images import load_image
    from fvit.viz.heatmap import save_overlay

    original = load_image(path)
    save_overlay(original, explanation.pixel[index], out / f"{stem}.png")
    logits = explanation.logits[index].float()
    record = {
        "image": str(path),
        "model": model.name,
        "method": method,
        "dds": dds,
        "predicted_class": int(logits.argmax()),
        "predicted_probability": float(torch.softmax(logits, 0).max()),
        "target": int(explanation.target[index]),
        "target_logit": float(logits[explanation.target[index]]),
        "image_size": list(original.shape[-2:]),
        "input_size": list(model.input_size),
        "patch_grid": list(model.grid_size),
        "patch_map": explanation.patch[index].float().cpu().tolist(),
    }
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))


def explain_images(
    paths: List[Path],
    *,
    model,
    explainer: Explainer,
    method: str,
    target: Optional[int],
    batch_size: int,
    out: Path,
    dds: Optional[dict] = None,
) -> list[Path]:
    """Explain ``paths`` in batches and write ``<stem>.png`` / ``<stem>.json`` into ``out``."""
    from fvit.data.images import load_images

    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(paths)
    written = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = load_images(chunk, model.input_size).to(model.device)
        explanation = explainer(model, images, target)
        for i, path in enumerate(chunk):
            stem = stems[start + i]
            _write_outputs(path, stem, out, explanation, i, model, method, dds)
            written.append(out / f"{stem}.json")
    return written


def methods_command() -> None:
    """List the explanation methods (name, whether they need gradients, aliases, description)."""
    from fvit.explain import METHODS

    for name, method in METHODS.items():
        grad = "gradients" if method.needs_grad else "forward only"
        if method.name == "lrp":
            grad = "relevance pass"
        aliases = f" (aliases: {', '.join(method.aliases)})" if method.aliases else ""
        params = ", ".join(f"{k}={v}" for k, v in method.defaults.items())
        params = f" [parameters: {params}]" if params else ""
        typer.echo(f"{name:<24} {grad:<15} {method.description}{aliases}{params}")


def explain_command(
    images: List[Path] = typer.Argument(..., help="image files (PNG/JPEG/..., any size and mode)"),
    model: str = typer.Option("vit_base_patch16_224", "--model", help="timm ViT name, or 'tiny' (test ViT)"),
    method: str = typer.Option("transformer_attribution", "--method",
                               help="see `fvit methods`; parameters as name:key=value[,key=value] "
                                    "(e.g. rollout:start_layer=1, lrp:rules=orig)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="local .safetensors/.pth weights"),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights (no hub access)"),
    target: Optional[int] = typer.Option(None, "--target", help="class to explain (default: prediction)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="classifier size"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 or auto"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per batched pass"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    dds: bool = typer.Option(False, "--dds", help="FViT: smooth the explanation with DDS (noise + diffusion denoiser)"),
    sigma: str = typer.Option("8/255", "--sigma", help="DDS noise level in [0,1] pixel units (e.g. 8/255)"),
    samples: int = typer.Option(8, "--samples", min=1, help="DDS noisy samples per image"),
    denoise: str = typer.Option("one-shot", "--denoise", help="one-shot | N-steps | ddim:N | ancestral:N | fvit-demo"),
    denoiser: str = typer.Option("guided-diffusion-256", "--denoiser",
                                 help="guided-diffusion-256[:PATH] | diffusers:PATH | PATH (small DDPM folder)"),
    fuse: str = typer.Option("max-drop10", "--fuse", help="fusion of the per-sample maps: max-drop10 | mean"),
    mapping: str = typer.Option("carlini", "--mapping", help="sigma -> t* mapping: carlini | fvit-demo"),
    seed: int = typer.Option(0, "--seed", help="DDS noise seed"),
) -> None:
    """Explain images: writes <stem>.png (heat-map overlay) and <stem>.json per image into --out.

    With --dds the explanation is the FViT one: the method runs on SAMPLES denoised noisy copies of
    each image for one fixed target (default: the smoothed prediction) and the maps are fused."""
    from fvit.models import load_model

    with exit_on_error():
        _check_paths(images)
        vit = load_model(model, pretrained=not no_pretrained, checkpoint=checkpoint, num_classes=num_classes,
                         device=device)  # fmt: skip
        dds_options = (dict(sigma=sigma, samples=samples, denoise=denoise, denoiser_spec=denoiser, fuse=fuse,
                            mapping=mapping, seed=seed) if dds else None)  # fmt: skip
        explainer = _build_explainer(method, vit, dds_options)
        name = getattr(explainer, "spec", None) or getattr(explainer, "name", method)
        written = explain_images(images, model=vit, explainer=explainer, method=name, target=target,
                                 batch_size=batch_size, out=out, dds=dds_options)  # fmt: skip
    typer.echo(f"wrote {len(written)} explanations ({name}, {vit.name}) to {out}")


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)
    app.command("explain")(explain_command)
