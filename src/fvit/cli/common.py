"""Helpers shared by the CLI command modules (argument parsing, error exits)."""

from __future__ import annotations

import typer

from fvit.errors import FvitError
from fvit.utils import parse_number


def number(text: str, what: str) -> float:
    return parse_number(text, what)


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error and return an Exit to raise."""
    typer.echo(f"fvit: error: {message}", err=True)
    return typer.Exit(code)


__all__ = ["FvitError", "fail", "number"]
