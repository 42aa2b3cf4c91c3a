"""`fvit timestep`: the diffusion timestep t* for a pixel noise level (DDS)."""

from __future__ import annotations

import typer

from fvit.cli.common import exit_on_error, sigma_value


def register(app: typer.Typer) -> None:
    @app.command("timestep")
    def timestep(
        sigma: str = typer.Option(..., "--sigma", help="pixel-space noise std, e.g. 0.03 or 8/255"),
        mapping: str = typer.Option("carlini", "--mapping", help="carlini (default) | fvit-demo"),
        steps: int = typer.Option(1000, "--steps", help="length T of the linear noise schedule"),
        schedule: str = typer.Option("linear", "--schedule", help="linear | cosine"),
    ) -> None:
        """Print t* (0-based timestep) for --sigma on a T-step schedule."""
        from fvit.denoise import get_schedule, timestep_for_sigma

        with exit_on_error(flags={"T": "--steps"}):
            typer.echo(timestep_for_sigma(sigma_value(sigma), get_schedule(schedule, steps), mapping))
