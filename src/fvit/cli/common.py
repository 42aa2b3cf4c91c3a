"""Helpers shared by the CLI command modules: argument parsing and checks that run before anything
is computed (every bad value -> `FvitError` with a one-line message naming the option), error exits."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional

import typer

from fvit.errors import FvitError
from fvit.utils import check_output_dir, parse_number, resolve_device


def number(text: str, what: str) -> float:
    """A finite number ('0.03', '8/255'); nan / inf are refused, naming the option `what`."""
    return parse_number(text, what, finite=True)


def number_in(text: str, what: str, lo: float, hi: float, *, open_lo: bool = False,
              open_hi: bool = False, hint: str = "") -> float:
    """A finite number in [lo, hi] (or (lo, ...) / (..., hi) when open); FvitError naming `what`."""
    x = number(text, what)
    if x < lo or x > hi or (open_lo and x == lo) or (open_hi and x == hi):
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        raise FvitError(f"{what} {text}: outside {interval}{hint}")
    return x


def sigma_value(text: str, what: str = "--sigma") -> float:
    """A noise level in [0, 1] pixel units."""
    return number_in(text, what, 0.0, 1.0, hint=" (pixel units of [0, 1] images, e.g. 8/255)")


def probability(text, what: str) -> float:
    """A probability strictly between 0 and 1 (e.g. a confidence level alpha)."""
    return number_in(text, what, 0.0, 1.0, open_lo=True, open_hi=True)


def positive_int(value, what: str) -> int:
    """An integer >= 1."""
    if value is None or int(value) != value or int(value) < 1:
        raise FvitError(f"{what} {value}: must be an integer >= 1")
    return int(value)


def out_path(text, what: str = "--out") -> Path:
    """A path option given as text: an empty value ('--out ""', which would mean the current
    folder) is refused, naming the option."""
    if text is None or not str(text).strip():
        raise FvitError(f"{what} {str(text)!r}: an empty path; name a folder (e.g. {what} results)")
    return Path(text)


def output_dir(path: Path, what: str = "--out") -> Path:
    """Create `path` and check that it is a writable folder, before anything is computed."""
    return check_output_dir(path, what)


def device_option(text: Optional[str], what: str = "--device") -> Optional[str]:
    """Check that a --device value names a device that exists here (auto/None pass through)."""
    try:
        resolve_device(text)
    except FvitError as e:
        raise FvitError(f"{what} {e}") from None
    return text


#: --model's help, one text for every command (the families of `fvit.models.backends`)
MODEL_HELP = ("timm ViT name or 'tiny' (test ViT); hf:ID_OR_FOLDER (transformers ViT / DeiT: Hub id or "
              "save_pretrained folder); tv:NAME[.WEIGHTS] (torchvision ViT, e.g. tv:vit_b_16, weights or --checkpoint); "
              "world[:quick] (the demo's trained ViT for --seed)")

# library keyword argument (FvitError.params) -> the option that sets it, in every command that has
# it; a command with more options passes them to `exit_on_error(flags=...)`
OPTION_FLAGS: dict[str, str] = {
    "checkpoint": "--checkpoint PATH", "pretrained": "--no-pretrained", "denoiser": "--denoiser",
    "limit": "--limit", "out": "--out", "eps": "--eps", "step_size": "--step-size", "sigma": "--sigma",
    "dds": "--dds",
}


def cli_message(error: FvitError, flags: Optional[Mapping[str, str]] = None) -> str:
    """The error's one-line message followed by the command-line options that set the keyword
    arguments it names (``error.params``): the library speaks of ``checkpoint``, the CLI adds
    ``--checkpoint PATH``."""
    table = {**OPTION_FLAGS, **(flags or {})}
    options = [table[p] for p in getattr(error, "params", ()) if p in table]
    return f"{error} (command-line options: {', '.join(options)})" if options else str(error)


@contextmanager
def exit_on_error(code: int = 2, flags: Optional[Mapping[str, str]] = None) -> Iterator[None]:
    """Inside a command: an FvitError becomes a one-line message on stderr (`cli_message`, with the
    command's extra ``flags``) and exit status `code` (no traceback)."""
    try:
        yield
    except FvitError as e:
        typer.echo(f"fvit: error: {cli_message(e, flags)}", err=True)
        raise typer.Exit(code) from None


__all__ = ["FvitError", "MODEL_HELP", "OPTION_FLAGS", "cli_message", "device_option", "exit_on_error", "method_specs",
           "number", "number_in", "out_path", "output_dir", "parse_method", "parse_methods", "typed_parameters",
           "positive_int", "probability", "sigma_value"]


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


def _method_items(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """'lrp:rules=orig,relevance-dtype=float64' -> ('lrp', [('rules', 'orig'), ('relevance_dtype', 'float64')]);
    a method family's 'captum:IntegratedGradients:n_steps=32' keeps 'captum:NAME' as the name."""
    from fvit.explain.base import split_method_spec

    name, rest = split_method_spec(spec)
    items = []
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise FvitError(f"method spec {spec!r}: expected name:key=value[,key=value], got {item!r}")
        items.append((key, value))
    return name, items


def parse_method(spec: str):
    """'rollout' | 'rollout:start_layer=1' | 'lrp:rules=orig,relevance_dtype=float64' -> a method
    instance (fvit.explain.get_method with the parameters converted to their defaults' types)."""
    from fvit.explain import get_method, method_parameters

    name, items = _method_items(spec)
    defaults = method_parameters(name)
    params = {}
    for key, value in items:
        if key not in defaults:
            raise FvitError(f"method {name!r} has no parameter {key!r} (parameters: {', '.join(defaults) or 'none'})")
        params[key] = _convert(name, key, value, defaults[key])
    return get_method(name, **params)


def method_specs(text: str) -> list[str]:
    """A comma-separated list of method specs, split; 'key=value' items after a spec belong to it:
    'raw_attention,ta:start_layer=1,rules=orig,lrp' -> three specs."""
    specs: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item and specs:
            specs[-1] += f",{item}"
        else:
            specs.append(item)
    return specs


def typed_parameters(spec: str) -> list[str]:
    """The parameter names a method spec types, whatever their values ('rollout:start_layer=0' ->
    ['start_layer']): what a reproduction preset must not override."""
    return [key for key, _ in _method_items(spec)[1]]


def parse_methods(text: str) -> list:
    """The method instances of a comma-separated list of specs (`method_specs`)."""
    return [parse_method(s) for s in method_specs(text)]
