"""`fvit methods` and `fvit explain`: list the explanation methods; explain images with one.

``fvit explain IMAGE... --model NAME --method M --out DIR`` writes, per image, ``<name>.png`` (jet
heat map blended on the image at its own size, longest side at most 1024 px) and ``<name>.json``
(full input path, prediction, target, method, model, patch-level map, sizes, and with DDS what
reproduces its noise). ``<name>`` is the file stem, or ``<k>-<stem>`` for every input when two stems
clash. Every input is checked (readable, within range and size limits) before anything is computed. Images are resized (no crop) to the model's input size and
explained in batches of ``--batch-size`` (one batched pass per batch). ``--model tiny`` is the
project's small random test ViT (32x32 inputs, 10 classes; needs ``--no-pretrained``); ``--model world``
/ ``--denoiser world`` are the demo's trained ViT and DDPM (`fvit.cli.world`).

The explanation callable is built by `_build_explainer` (the hook where smoothing options such as
DDS plug in: anything with the signature ``(model, images, target) -> Explanation`` works).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Optional

import torch
import typer

from fvit.cli.common import MODEL_HELP, FvitError, device_option, exit_on_error, out_path, output_dir, positive_int, sigma_value
from fvit.data._io import DEFAULT_MAX_PIXELS
from fvit.errors import FvitError
from fvit.utils import check_output_dir

Explainer = Callable[..., "object"]


def _build_explainer(method: str, model, dds=None, fuse: str = "max-drop10") -> Explainer:
    """The `fvit.explain.Explainer` that `fvit explain` runs: the plain method, or its FViT version
    (``DDSExplainer(method, make_dds(dds), fuse)``) when ``dds`` is a `DDSConfig`."""
    from fvit.cli.common import parse_method

    explainer = parse_method(method)
    explainer.check_model(model)  # the method's own capability check (CLS-token methods refuse Swin)
    if dds is None:
        return explainer
    from fvit.dds import DDSExplainer, make_dds

    return DDSExplainer(explainer, make_dds(dds, device=model.device), fuse=fuse)


#: Longest side of the overlay PNG (the heat map blended on the image): larger images are shrunk on
#: load (JPEG draft / integer reduce) instead of being decoded and blended at full size.
OVERLAY_MAX_SIDE = 1024


def _check_paths(paths: List[Path], max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> None:
    """Every path is a readable image file within the pixel limit (header only: no decoding)."""
    from fvit.data.images import image_size

    for p in paths:
        image_size(p, max_pixels)


def _check_decodable(paths: List[Path], size, max_pixels: Optional[int]) -> None:
    """Decode every image (at about the model's size) before anything is computed, so that a bad
    file stops the run before any output is written (one rule for every batch size)."""
    from fvit.data.images import load_images

    for p in paths:
        load_images([p], size, max_pixels)


def output_names(paths: List[Path]) -> list[str]:
    """Output file stems, unique by construction: the file stems when they are all distinct (also
    ignoring case, for case-insensitive file systems), else ``<k>-<stem>`` for every input (k = the
    input's 1-based position, zero-padded), so no generated name can equal another input's."""
    stems = [p.stem for p in paths]
    if len({s.casefold() for s in stems}) == len(stems):
        return stems
    width = len(str(len(paths)))
    return [f"{k:0{width}d}-{s}" for k, s in enumerate(stems, 1)]


def check_no_overwrite(paths: List[Path], out: Path) -> None:
    """Refuse (one line) when an output file (``<name>.png`` / ``<name>.json`` in ``out``) would be
    one of the input files (an input is never written over) or exists as a folder."""
    from fvit.errors import InputError
    from fvit.utils import check_output_file

    inputs = {}
    for p in paths:
        inputs[os.path.normcase(str(Path(p).resolve()))] = p
    for name in output_names(paths):
        for suffix in (".png", ".json"):
            target = check_output_file(Path(out) / f"{name}{suffix}", "--out")
            hit = inputs.get(os.path.normcase(str(target.resolve())))
            if hit is None and target.exists():
                hit = next((p for p in paths if Path(p).exists() and os.path.samefile(p, target)), None)
            if hit is not None:
                raise InputError(f"--out {out}: the output {target.name} would overwrite the input image {hit}; "
                                 "choose another --out folder")


def _dds_record(explainer, key: Optional[str]) -> Optional[dict]:
    """Every DDS setting (resolved) and the fusion, plus what reproduces this image's noise (seed,
    key, stream seed)."""
    d = getattr(explainer, "dds", None)
    if d is None:
        return None
    from fvit.seeding import NOISE_RULE

    return {**d.settings(), "fuse": explainer.fuse, "noise_key": key, "noise_seed": d.noise_seeds([key])[0],
            "noise_rule": NOISE_RULE}


def _save_atomic_png(save, path: Path) -> None:
    from fvit.utils import write_error

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        save(tmp)
        os.replace(tmp, path)
    except OSError as e:  # disk full, a folder of that name, ...
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_outputs(path: Path, stem: str, out: Path, explanation, index: int, model, method: str,
                   dds: bool = False, noise_key: Optional[str] = None, explainer=None,
                   max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> None:
    from fvit.data.images import image_size, load_image
    from fvit.utils import json_safe, write_text_atomic
    from fvit.viz.heatmap import save_overlay

    original = load_image(path, max_side=OVERLAY_MAX_SIDE, max_pixels=max_pixels)
    _save_atomic_png(lambda p: save_overlay(original, explanation.pixel[index], p), out / f"{stem}.png")
    logits = explanation.logits[index].float()
    record = {
        "image": str(path.resolve()),
        "model": model.name,
        "method": method,
        "dds": _dds_record(explainer, noise_key) if dds else None,
        "predicted_class": int(logits.argmax()),
        "predicted_label": model.class_name(int(logits.argmax())),
        "predicted_probability": float(torch.softmax(logits, 0).max()),
        "target": int(explanation.target[index]),
        "target_label": model.class_name(int(explanation.target[index])),
        "target_logit": float(logits[explanation.target[index]]),
        "image_size": list(image_size(path, max_pixels)),
        "overlay_size": list(original.shape[-2:]),
        "input_size": list(model.input_size),
        "patch_grid": list(model.grid_size),
        "patch_map": explanation.patch[index].float().cpu().tolist(),
    }
    write_text_atomic(out / f"{stem}.json", json.dumps(json_safe(record), indent=1, allow_nan=False))


def explain_images(
    paths: List[Path],
    *,
    model,
    explainer: Explainer,
    method: str,
    target: Optional[int],
    batch_size: int,
    out: Path,
    dds: bool = False,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
) -> list[Path]:
    """Explain ``paths`` in batches and write ``<name>.png`` / ``<name>.json`` into ``out`` (names
    from `output_names`). With DDS each image's noise is keyed by the hash of its input tensor, so
    its map does not depend on the batch; the key is recorded in its JSON."""
    from fvit.data.images import load_images
    from fvit.seeding import content_keys

    check_output_dir(out, "--out")
    check_no_overwrite(paths, out)
    _check_decodable(paths, model.input_size, max_pixels)
    names = output_names(paths)
    written = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = load_images(chunk, model.input_size, max_pixels)
        keys = content_keys(images) if dds else [None] * len(chunk)
        images = images.to(model.device)
        explanation = explainer(model, images, target, keys=keys)
        for i, path in enumerate(chunk):
            name = names[start + i]
            _write_outputs(path, name, out, explanation, i, model, method, dds, keys[i], explainer, max_pixels)
            written.append(out / f"{name}.json")
    return written


def methods_command() -> None:
    """List the explanation methods (name, whether they need gradients, aliases, description)."""
    from fvit.explain import METHODS
    from fvit.explain.base import FAMILY_DESCRIPTIONS

    for name, method in METHODS.items():
        grad = method.passes or ("gradients" if method.needs_grad else "forward only")
        aliases = f" (aliases: {', '.join(method.aliases)})" if method.aliases else ""
        params = ", ".join(f"{k}={v}" for k, v in method.defaults.items())
        params = f" [parameters: {params}]" if params else ""
        typer.echo(f"{name:<24} {grad:<15} {method.description}{aliases}{params}")
    for prefix, description in FAMILY_DESCRIPTIONS.items():
        typer.echo(f"{prefix + ':NAME':<24} {'':<15} {description}")


def explain_command(
    images: List[Path] = typer.Argument(..., help="image files (PNG/JPEG/..., any size and mode)"),
    model: str = typer.Option("vit_base_patch16_224", "--model", help=MODEL_HELP),
    method: str = typer.Option("transformer_attribution", "--method",
                               help="see `fvit methods`; parameters as name:key=value[,key=value] "
                                    "(e.g. rollout:start_layer=1, lrp:rules=orig)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="local .safetensors/.pth weights"),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="random weights (no hub access)"),
    target: Optional[int] = typer.Option(None, "--target", help="class to explain (default: prediction)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="classifier size"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 or auto"),
    batch_size: int = typer.Option(16, "--batch-size", help="images per batched pass (>= 1)"),
    out: str = typer.Option(..., "--out", help="output folder"),
    dds: bool = typer.Option(False, "--dds", help="FViT: smooth the explanation with DDS (noise + diffusion denoiser)"),
    sigma: str = typer.Option("8/255", "--sigma", help="DDS noise level in [0,1] pixel units (e.g. 8/255)"),
    samples: int = typer.Option(8, "--samples", help="DDS noisy samples per image (>= 1)"),
    denoise: str = typer.Option("one-shot", "--denoise", help="one-shot | N-steps | ddim:N | ancestral:N | fvit-demo"),
    denoiser: str = typer.Option("guided-diffusion-256", "--denoiser",
                                 help="guided-diffusion-256[:PATH] | diffusers:PATH | PATH (small DDPM folder) | "
                                      "world[:quick] (the demo's trained DDPM for --seed)"),
    fuse: str = typer.Option("max-drop10", "--fuse", help="fusion of the per-sample maps: max-drop10 | mean"),
    mapping: str = typer.Option("carlini", "--mapping", help="sigma -> t* mapping: carlini | fvit-demo"),
    seed: int = typer.Option(0, "--seed", help="DDS noise seed (each image's noise: from the seed and the image's "
                                               "pixels); the seed of the world models"),
    allow_large_images: bool = typer.Option(False, "--allow-large-images",
                                            help="open images over the decompression-bomb limit (~179 Mpx)"),
) -> None:
    """Explain images: writes <name>.png (heat-map overlay) and <name>.json per image into --out
    (<name>: the file stem, or <k>-<stem> for every input when two stems clash).

    With --dds the explanation is the FViT one: the method runs on SAMPLES denoised noisy copies of
    each image for one fixed target (default: the smoothed prediction) and the maps are fused."""
    from fvit.cli import world
    from fvit.models import load_model

    with exit_on_error(flags={"max_pixels": "--allow-large-images"}):
        max_pixels = None if allow_large_images else DEFAULT_MAX_PIXELS
        positive_int(batch_size, "--batch-size")
        positive_int(samples, "--samples")
        if num_classes is not None:
            positive_int(num_classes, "--num-classes")
            from fvit.utils import check_memory

            # the classifier head alone: num_classes x embedding width (<= 1280 in timm's ViTs) floats,
            # created and then initialised (x2)
            check_memory(num_classes * 1280 * 4 * 2, f"--num-classes {num_classes} (the classifier head)")
        dds_config = None
        if dds:
            from fvit.dds import DDSConfig, FUSIONS

            FUSIONS.resolve(fuse)
            dds_config = DDSConfig(denoiser=world.denoiser_spec(denoiser, seed), sigma=sigma_value(sigma), samples=samples, denoise=denoise,
                                   mapping=mapping, seed=seed)
        world.check_world_options(model, checkpoint, seed, denoiser if dds else None)
        if world.is_world(model) and num_classes is not None:
            raise FvitError(f"--model {model} is the demo's classifier with its own classes; drop --num-classes")
        device_option(device)
        out = output_dir(out_path(out))
        _check_paths(images, max_pixels)
        check_no_overwrite(images, out)
        log = lambda m: typer.echo(m, err=True)  # noqa: E731
        vit = world.prepare(model, denoiser if dds else None, seed, device=device, log=log)
        if vit is None:
            vit = load_model(model, pretrained=not no_pretrained, checkpoint=checkpoint, num_classes=num_classes,
                             device=device)  # fmt: skip
        classes = getattr(vit, "num_classes", None)
        if target is not None and isinstance(classes, int) and not 0 <= target < classes:
            raise FvitError(f"--target {target}: out of range of the model's classes [0, {classes})")
        explainer = _build_explainer(method, vit, dds_config, fuse)
        if dds:  # --samples (x --batch-size) so large that one batch cannot be held: refused before work
            from fvit.utils import check_memory, dds_batch_bytes

            batch = min(batch_size, len(images))
            size = getattr(getattr(explainer.dds, "denoiser", None), "image_size", None)
            check_memory(dds_batch_bytes(batch, samples, tuple(vit.input_size), size if isinstance(size, int) else None),
                         f"--samples {samples} with --batch-size {batch}", vit.device)
        name = getattr(explainer, "spec", None) or getattr(explainer, "name", method)
        written = explain_images(images, model=vit, explainer=explainer, method=name, target=target,
                                 batch_size=batch_size, out=out, dds=dds, max_pixels=max_pixels)  # fmt: skip
    for path in written:
        typer.echo(summary_line(path))
    typer.echo(f"wrote {len(written)} explanations ({name}, {vit.name}) to {out}")


def _class_text(index: int, label: Optional[str]) -> str:
    return f"class {index}" + (f" ({label})" if label else "")


def summary_line(record_path: Path) -> str:
    """``<name>: class 281 (tabby, tabby cat) p=0.912[, explained class 3 (...)]`` from a written JSON."""
    r = json.loads(Path(record_path).read_text())
    line = (f"{Path(record_path).stem}: {_class_text(r['predicted_class'], r.get('predicted_label'))} "
            f"p={r['predicted_probability']:.3f}")
    if r["target"] != r["predicted_class"]:
        line += f", explained {_class_text(r['target'], r.get('target_label'))}"
    return line


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)
    app.command("explain")(explain_command)
