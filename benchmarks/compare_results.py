"""Compare two results.json files (e.g. `fvit demo` before and after a refactor), ignoring what
legitimately differs between runs: wall-clock timings, where the models came from, cache paths.

    python benchmarks/compare_results.py OLD/results.json NEW/results.json [--ignore KEY ...]

Prints every differing path (numbers compared exactly unless --rtol is given) and exits 1 when any
differs, 0 when the results are identical.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

#: Keys whose values are run-dependent by nature (timers, provenance of the cached models).
VOLATILE = {"timings", "seconds", "seconds_per_image", "models_source", "cache_dir", "trained", "wall_s",
            "threads", "resumed_parts"}


def diff(a, b, path: str, rtol: float, ignore: set[str], out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ignore:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'new' if k not in a else 'old'}")
                continue
            diff(a[k], b[k], f"{path}/{k}", rtol, ignore, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", rtol, ignore, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        same = (a == b) or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b)))
        if not same:
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default exact)")
    p.add_argument("--ignore", nargs="*", default=[], help="further keys to ignore anywhere")
    a = p.parse_args(argv)
    with open(a.old) as f:
        old = json.load(f)
    with open(a.new) as f:
        new = json.load(f)
    out: list[str] = []
    diff(old, new, "", a.rtol, VOLATILE | set(a.ignore), out)
    for line in out:
        print(line)
    print(f"{len(out)} difference(s)" if out else "identical (timings and model provenance ignored)")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
