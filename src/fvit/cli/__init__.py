"""The `fvit` command line: a thin typer app; each command group lives in its own module with a
`register(app)` function and only parses arguments and calls the library."""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _click_errors

from fvit.errors import FvitError

class OneLineErrors(TyperGroup):
    """The root command: a usage error (a bad option value such as ``--batch-size abc``, an
    unknown option, a missing argument) is one line on stderr, ``fvit: error: ...``, exit status 2,
    instead of click's / typer's multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click_errors.NoArgsIsHelpError as e:  # `fvit`, `fvit bench`: the help text
            e.show()
            sys.exit(e.exit_code)
        except _click_errors.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            message = " ".join(e.format_message().split())
            typer.echo(f"fvit: error: {message}{where}", err=True)
            sys.exit(2)
        except _click_errors.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
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
