"""The `fvit` command line: a thin typer app; each command group lives in its own module with a
`register(app)` function and only parses arguments and calls the library."""

from __future__ import annotations

import importlib
import sys

import typer

from fvit.errors import FvitError

app = typer.Typer(
    name="fvit",
    help="Faithful ViT explanations under attack: explain, smooth with DDS, attack, evaluate, certify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group (fvit.cli.<name>), each exposing register(app).
_COMMAND_MODULES = ("explain", "dds", "certify", "bench", "demo")


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fvit.cli.{name}")
        except ModuleNotFoundError as e:  # a command group not written yet
            if e.name == f"fvit.cli.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    from fvit.memory import keep_freed_cpu_memory

    keep_freed_cpu_memory()  # CPU batches reuse freed memory (see its docstring)
    try:
        app()
    except FvitError as e:
        from fvit.cli.common import cli_message

        typer.echo(f"fvit: error: {cli_message(e)}", err=True)
        sys.exit(2)
