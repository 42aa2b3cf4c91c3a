"""Write a set of tables as report.md + one CSV and one JSON per table into a folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from fvit.viz.tables import Table


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "table"


def write_report(out_dir: str | Path, tables: Iterable[tuple[str, Table]], *, title: str = "fvit benchmark",
                 preamble: str = "", figures: Iterable[str | Path] = ()) -> Path:
    """tables: (file stem, Table). Writes report.md, <stem>.csv, <stem>.json; returns report.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    if preamble:
        parts += [preamble, ""]
    for stem, table in tables:
        stem = slug(stem)
        (out / f"{stem}.csv").write_text(table.to_csv(), encoding="utf-8")
        (out / f"{stem}.json").write_text(table.to_json_text(), encoding="utf-8")
        parts += [table.to_markdown(), f"([CSV]({stem}.csv), [JSON]({stem}.json))", ""]
    for fig in figures:
        fig = Path(fig)
        parts += [f"![{fig.stem}]({fig.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
