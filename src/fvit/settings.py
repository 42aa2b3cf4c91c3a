"""The base of every settings object: a small frozen dataclass, typed and validated on creation.

Settings travel whole: a layer receives one object (`DDSConfig`, `CertifyConfig`, `AttackSpec`,
`BenchSettings`, ...), passes it on unchanged or with `replace(...)`, and records `to_dict()` in
its results. Strings such as ``"8/255"`` are parsed only in `fvit.cli`; here a number is a number
and a wrong type or value is an `InputError` naming the field (the library's keyword argument).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, TypeVar

from fvit.errors import InputError

S = TypeVar("S", bound="Settings")


NONFINITE = ("null", "string")


def json_ready(value: Any, *, nonfinite: str = "null") -> Any:
    """The one JSON sanitiser of fvit: settings and other dataclasses -> dicts, tuples -> lists,
    tensors / numpy arrays and scalars -> lists / numbers, paths and other objects -> str (an
    object with a string ``spec``, e.g. an explanation method: its spec). Non-finite floats ->
    None with ``nonfinite="null"`` (results files: JSON has no inf / nan), or the strings 'inf' /
    '-inf' / 'nan' with ``nonfinite="string"`` (certificate records, where an infinite radius is
    a value: `fvit.certify.CertificationResult.to_dict`)."""
    if nonfinite not in NONFINITE:
        raise InputError(f"json_ready: nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    return _json_ready(value, nonfinite == "string")


def _json_ready(value: Any, strings: bool) -> Any:
    if isinstance(value, Settings):  # its own to_dict (e.g. CertifyConfig names its map source)
        return _json_ready(value.to_dict(), strings)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_ready(getattr(value, f.name), strings) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _json_ready(v, strings) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, strings) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")) if strings else None
    if callable(getattr(value, "tolist", None)):  # torch tensors, numpy arrays and scalars
        return _json_ready(value.tolist(), strings)
    spec = getattr(value, "spec", None)  # explanation methods, samplers
    return spec if isinstance(spec, str) else str(value)


class Settings:
    """Mixin for ``@dataclass(frozen=True)`` settings: `replace`, `to_dict`, field checks."""

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"{type(self).__name__}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls: type[S], record: dict[str, Any]) -> S:
        """The settings a results record holds (its `to_dict()`, possibly with resolved extras,
        which are ignored): reproduce a run from its JSON."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items() if k in names}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (what results files record)."""
        return {f.name: json_ready(getattr(self, f.name)) for f in dataclasses.fields(self)}


def check_number(owner: str, field: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 open_lo: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a float (a real number, not a string), within [lo, hi] (``open_lo``: > lo)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{owner}: {field} must be a number, got {value!r} "
                         f"(strings such as '8/255' are parsed by the command line, not here)", params=(field,))
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{owner}: {field} must be finite, got {value!r}", params=(field,))
    if lo is not None and (v <= lo if open_lo else v < lo):
        raise InputError(f"{owner}: {field} must be {'>' if open_lo else '>='} {lo:g}, got {value!r}", params=(field,))
    if hi is not None and v > hi:
        raise InputError(f"{owner}: {field} must be <= {hi:g}, got {value!r}", params=(field,))
    return v


def check_int(owner: str, field: str, value: Any, *, lo: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int (not a bool, not a string), at least ``lo``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise InputError(f"{owner}: {field} must be an integer, got {value!r}", params=(field,))
    v = int(value)
    if lo is not None and v < lo:
        raise InputError(f"{owner}: {field} must be >= {lo}, got {value!r}", params=(field,))
    return v


def check_choice(owner: str, field: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{owner}: {field} must be one of {', '.join(choices)}, got {value!r}", params=(field,))
    return value


def set_field(obj: Any, field: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__``."""
    object.__setattr__(obj, field, value)
