"""Helpers shared by the CLI command modules (argument parsing, error exits)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer

from fvit.errors import FvitError
from fvit.utils import parse_number


def number(text: str, what: str) -> float:
    return parse_number(text, what)


@contextmanager
def exit_on_error(code: int = 2) -> Iterator[None]:
    """Inside a command: an FvitError becomes a one-line message on stderr and exit status `code`
    (no traceback)."""
    try:
        yield
    except FvitError as e:
        typer.echo(f"fvit: error: {e}", err=True)
        raise typer.Exit(code) from None


__all__ = ["FvitError", "exit_on_error", "number"]
