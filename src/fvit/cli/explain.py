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

from fvit.errors import FvitError, InputError

Explainer = Callable[..., "object"]


def _build_explainer(method: str, model) -> Explainer:
    """The callable ``(model, images, target) -> Explanation`` that `fvit explain` runs.

    Extension point: wrap the method here (e.g. ``DDSExplainer(method, dds)``) and add its options to
    the command's signature."""
    from fvit.explain import get_method

    explainer = get_method(method)
    model.require_token_methods(explainer.name)
    return explainer


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


def _write_outputs(path: Path, stem: str, out: Path, explanation, index: int, model, method: str) -> None:
    from fvit.data.images import load_image
    from fvit.viz.heatmap import save_overlay

    original = load_image(path)
    save_overlay(original, explanation.pixel[index], out / f"{stem}.png")
    logits = explanation.logits[index].float()
    record = {
        "image": str(path),
        "model": model.name,
        "method": method,
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
            _write_outputs(path, stem, out, explanation, i, model, method)
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
        typer.echo(f"{name:<24} {grad:<15} {method.description}{aliases}")


def explain_command(
    images: List[Path] = typer.Argument(..., help="image files (PNG/JPEG/..., any size and mode)"),
    model: str = typer.Option("vit_base_patch16_224", "--model", help="timm ViT name, or 'tiny' (test ViT)"),
    method: str = typer.Option("transformer_attribution", "--method", help="see `fvit methods`"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="local .safetensors/.pth weights"),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights (no hub access)"),
    target: Optional[int] = typer.Option(None, "--target", help="class to explain (default: prediction)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="classifier size"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 or auto"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per batched pass"),
    out: Path = typer.Option(..., "--out", help="output folder"),
) -> None:
    """Explain images: writes <stem>.png (heat-map overlay) and <stem>.json per image into --out."""
    from fvit.models import load_model

    try:
        _check_paths(images)
        vit = load_model(model, pretrained=not no_pretrained, checkpoint=checkpoint, num_classes=num_classes,
                         device=device)  # fmt: skip
        explainer = _build_explainer(method, vit)
        name = getattr(explainer, "name", method)
        written = explain_images(images, model=vit, explainer=explainer, method=name, target=target,
                                 batch_size=batch_size, out=out)  # fmt: skip
    except FvitError as e:
        typer.echo(f"fvit: error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {len(written)} explanations ({name}, {vit.name}) to {out}")


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)
    app.command("explain")(explain_command)
