"""`fvit demo`: the papers' experiment end to end on the embedded world (no downloads)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: str = typer.Option("fvit-demo", "--out", help="Folder for report.md, results.json, figures."),
        quick: bool = typer.Option(False, "--quick", help="Reduced setting (CI-sized, its own cache entry)."),
        retrain: bool = typer.Option(False, "--retrain", help="Retrain the world's ViT and DDPM."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps ..."),
        seed: int = typer.Option(0, "--seed", help="Seed of the world's data and the models (own cache entry)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Train (first use, cached) or load a small ViT and DDPM on a generated world with exact masks,
        then run attack, six explanation methods ± DDS, segmentation, perturbation, certification."""
        from fvit.cli.common import device_option, exit_on_error, out_path, output_dir

        with exit_on_error(flags={"retrain": "--retrain", "seed": "--seed"}):
            out = output_dir(out_path(out))  # a file, a read-only place: one line before any training
            device_option(device)
            from fvit.demo.run import run_demo

            run_demo(out, quick=quick, retrain=retrain, device=device, seed=seed, progress=progress,
                     log=typer.echo)
