"""Append-only, resumable results store: JSON Lines, one header record then one row per
(image id, setting).

- The header holds the experiment config (model, dds params, attack, seed, data spec, ...). Opening
  an existing file with a different config raises `StoreConfigError`; the same config resumes.
- Rows are written (and flushed) as each batch finishes: one `write` per batch.
- A torn last line (a kill mid-write) is dropped and the file truncated to the last full line.
- Duplicate (id, setting) keys keep the first row. Final tables are computed from rows only.
- Sharded runs: each rank appends to its own file (`rows.rank{r}.jsonl`) and rank 0 merges every
  shard into `rows.jsonl` (see `merge_store_dir`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from fvit.errors import FvitError

FORMAT_VERSION = 1
ROWS_FILE = "rows.jsonl"


class StoreConfigError(FvitError):
    """The store on disk was written by a run with a different config."""


def _canonical(obj: Any) -> Any:
    """JSON round trip: tuples -> lists, numbers normalised, so configs compare as written."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def row_key(row: dict) -> tuple[str, str]:
    return (str(row["id"]), str(row.get("setting", "")))


def _sort_key(row: dict) -> tuple[str, str]:
    """(setting, id): the order tables and the merged file use, never the completion order."""
    return (str(row.get("setting", "")), str(row["id"]))


def shard_name(rank: int, world_size: int) -> str:
    return ROWS_FILE if world_size <= 1 else f"rows.rank{rank}.jsonl"


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("rows.rank*.jsonl"))


def store_files(directory: Path) -> list[Path]:
    """The merged file first (when present), then the rank shards (sorted)."""
    main = directory / ROWS_FILE
    return ([main] if main.exists() else []) + _shards(directory)


def _check_config(header: dict, config: dict, path: Path) -> None:
    theirs = header.get("config")
    if theirs != config:
        diff = sorted(k for k in set(theirs or {}) | set(config) if (theirs or {}).get(k) != config.get(k))
        raise StoreConfigError(
            f"{path} holds results of a different experiment config (differs in: {', '.join(diff)}); "
            f"use another folder or delete it", params=("out",)
        )


def _load_rows(directory: Path, config: dict, repair: Path | None = None) -> dict[tuple[str, str], dict]:
    """Every row of every store file in `directory` (first row per key wins), each file's header
    checked against `config`; the file `repair` has a torn last line cut off."""
    rows: dict[tuple[str, str], dict] = {}
    for p in store_files(directory):
        header, file_rows = read_jsonl(p, repair=(p == repair))
        if header is None:
            continue
        _check_config(header, config, p)
        for r in file_rows:
            rows.setdefault(row_key(r), r)
    return rows


def read_jsonl(path: Path, repair: bool = False) -> tuple[dict | None, list[dict]]:
    """(header or None, rows). A torn final line is ignored (and cut off the file when `repair`)."""
    if not path.exists():
        return None, []
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn write
    records, offset = [], 0
    for line in data[:good_end].split(b"\n"):
        offset += len(line) + 1
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if offset >= good_end:  # a torn line that happened to end in a newline is still last
                good_end = offset - len(line) - 1
                break
            raise FvitError(f"{path}: corrupt line {len(records) + 1} (not JSON)") from None
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    if not records:
        return None, []
    header, rows = records[0], records[1:]
    if header.get("type") != "header":
        raise FvitError(f"{path}: first record is not a results-store header")
    return header, rows


class ResultsStore:
    """One experiment's rows in `directory` (this rank's shard file; reads every shard)."""

    def __init__(self, directory: str | Path, config: dict, *, rank: int = 0, world_size: int = 1,
                 fsync: bool = False):
        self.dir = Path(directory)
        self.config = _canonical(config)
        self.rank, self.world_size, self.fsync = rank, world_size, fsync
        self.path = self.dir / shard_name(rank, world_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rows = _load_rows(self.dir, self.config, repair=self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_lines([{"type": "header", "version": FORMAT_VERSION, "config": self.config}])

    def _write_lines(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    # -- rows ---------------------------------------------------------------------------------
    def done_ids(self, settings: Iterable[str]) -> set[str]:
        """Ids that have a row for every one of `settings`."""
        settings = [str(s) for s in settings]
        ids = {k[0] for k in self._rows}
        return {i for i in ids if all((i, s) in self._rows for s in settings)}

    def append(self, rows: list[dict]) -> int:
        """Append the rows not yet stored (one write); returns how many were new."""
        new = []
        for r in rows:
            r = _canonical(r)
            if "id" not in r:
                raise FvitError("a results row needs an 'id'")
            k = row_key(r)
            if k not in self._rows:
                self._rows[k] = r
                new.append(r)
        if new:
            self._write_lines(new)
        return len(new)

    def rows(self, setting: str | None = None) -> list[dict]:
        """Stored rows sorted by (setting, id), so tables never depend on completion order."""
        rows = sorted(self._rows.values(), key=_sort_key)
        return rows if setting is None else [r for r in rows if str(r.get("setting", "")) == setting]

    def __len__(self) -> int:
        return len(self._rows)


def merge_store_dir(directory: str | Path, config: dict) -> Path:
    """Merge `rows.jsonl` and every `rows.rank*.jsonl` in `directory` into `rows.jsonl` (atomic
    replace), then remove the shards. Returns the merged path."""
    directory = Path(directory)
    config = _canonical(config)
    shards = _shards(directory)
    merged = _load_rows(directory, config)
    out = directory / ROWS_FILE
    tmp = directory / (ROWS_FILE + ".tmp")
    records = [{"type": "header", "version": FORMAT_VERSION, "config": config}]
    records += sorted(merged.values(), key=_sort_key)
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out)
    for p in shards:
        p.unlink()
    return out
