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


__all__ = ["FvitError", "exit_on_error", "number", "parse_method", "parse_methods"]


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _convert(method: str, key: str, text: str, default):
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in _TRUE + _FALSE:
            return low in _TRUE
        raise FvitError(f"method {method!r}: {key}={text!r} must be true or false")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise FvitError(f"method {method!r}: {key}={text!r} must be a {type(default).__name__}") from None
    return text.strip()


def parse_method(spec: str):
    """'rollout' | 'rollout:start_layer=1' | 'lrp:rules=orig,relevance_dtype=float64' -> a method
    instance (fvit.explain.get_method with the parameters converted to their defaults' types)."""
    from fvit.explain import get_method, method_parameters

    name, _, rest = str(spec).strip().partition(":")
    defaults = method_parameters(name)
    params = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise FvitError(f"method spec {spec!r}: expected name:key=value[,key=value], got {item!r}")
        if key not in defaults:
            raise FvitError(f"method {name!r} has no parameter {key!r} (parameters: {', '.join(defaults) or 'none'})")
        params[key] = _convert(name, key, value, defaults[key])
    return get_method(name, **params)


def parse_methods(text: str) -> list:
    """A comma-separated list of method specs; 'key=value' items after a spec belong to it:
    'raw_attention,ta:start_layer=1,rules=orig,lrp' -> three methods."""
    specs: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item and specs:
            specs[-1] += f",{item}"
        else:
            specs.append(item)
    return [parse_method(s) for s in specs]
