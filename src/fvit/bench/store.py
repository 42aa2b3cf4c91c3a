"""Append-only, resumable results store: JSON Lines, one header record then one row per
(image id, setting).

- The header holds the experiment config (model, dds params, attack, seed, data spec, ...). Opening
  an existing file with a different config raises `StoreConfigError`; the same config resumes.
  The header of a new file is written atomically (a temporary file and a rename).
- One writer at a time: a store holds an exclusive lock (``fcntl.flock``) on a lock file in its
  folder (``.fvit-store.lock``; rank r > 0 of a sharded run: ``.fvit-store.rank{r}.lock``) until it
  is closed; another process opening it gets `StoreLockedError` naming the folder and the pid
  holding it. Stores opened twice in one process share the lock.
- Rows are written (and flushed) as each batch finishes: one `write` per batch.
- A torn last line (no final newline: a kill mid-write) is dropped and the file truncated to the
  last full line. Any other damage (a line that is not JSON or not an object, a row without an id,
  a second header) raises `StoreDamagedError` naming the file, the line and what to do; with
  ``discard_damaged=True`` that line and every line after it are cut off (their rows are
  recomputed) and the rows before it are kept.
- Duplicate (id, setting) keys keep the first row. Final tables are computed from rows only.
- Sharded runs: each rank appends to its own file (`rows.rank{r}.jsonl`) and rank 0 merges every
  shard into `rows.jsonl` (see `merge_store_dir`); a single process that finds shard files (a
  sharded run killed, resumed without torchrun) merges them when it opens the store.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any, Iterable

from fvit.errors import FvitError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

FORMAT_VERSION = 1
ROWS_FILE = "rows.jsonl"
LOCK_FILE = ".fvit-store.lock"


class StoreConfigError(FvitError):
    """The store on disk was written by a run with a different config."""


class StoreLockedError(FvitError):
    """Another process is writing into the store's folder."""


class StoreDamagedError(FvitError):
    """A store file holds a line that is not a valid record (``path``, ``line``: 1-based)."""

    def __init__(self, message: str, path: Path, line: int, params: tuple[str, ...] = ("discard_damaged", "out")):
        super().__init__(message, params=params)
        self.path, self.line = Path(path), int(line)


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


# -- the lock ---------------------------------------------------------------------------------
_HELD: dict[str, list] = {}  # lock file (resolved) -> [fd, number of open stores of this process]


def lock_name(rank: int = 0) -> str:
    return LOCK_FILE if rank == 0 else f".fvit-store.rank{rank}.lock"


def acquire_lock(directory: Path, rank: int = 0) -> str | None:
    """Take the exclusive lock of the store in `directory` (shared with this process's other
    stores there); `StoreLockedError` when another process holds it. Returns the key to release
    (None where the file system has no locks)."""
    if fcntl is None:
        return None
    path = Path(directory) / lock_name(rank)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StoreLockedError(
            f"{directory}: another process (pid {other or 'unknown'}) is writing results into this folder; "
            "wait for it to finish (then rerun to resume) or use another folder", params=("out",)) from None
    except OSError:  # no locks on this file system (some network mounts): run unlocked
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    return key


def release_lock(key: str | None) -> None:
    held = _HELD.get(key) if key is not None else None
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor releases the flock


# -- reading and checking ---------------------------------------------------------------------
def _damage(path: Path, line: int, what: str, kept: int) -> StoreDamagedError:
    return StoreDamagedError(
        f"{path}: line {line} is damaged ({what}); the {kept} row(s) before it are intact: rerun discarding "
        f"the damaged tail (line {line} and every line after it; those rows are recomputed), or use another "
        "folder", path, line)


def _scan(path: Path) -> tuple[list[tuple[int, int, Any]], int, StoreDamagedError | None]:
    """([(line number, byte offset, record)] of the valid prefix, end of the last full line,
    the first damage or None). A final line without a newline is a torn write, not damage."""
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    records: list[tuple[int, int, Any]] = []
    offset = 0
    lines = data[:good_end].split(b"\n")[:-1] if good_end else []
    for n, line in enumerate(lines, 1):
        start, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        rows = max(len(records) - 1, 0)
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return records, start, _damage(path, n, "not JSON", rows)
        if not records:
            if not (isinstance(rec, dict) and rec.get("type") == "header" and isinstance(rec.get("config"), dict)):
                return records, start, _damage(path, n, "the first record is not a results-store header", 0)
        elif not isinstance(rec, dict):
            return records, start, _damage(path, n, f"a {type(rec).__name__}, not a JSON object", rows)
        elif rec.get("type") == "header":
            return records, start, _damage(path, n, "a second header line", rows)
        elif not isinstance(rec.get("id"), (str, int)) or isinstance(rec.get("id"), bool):
            return records, start, _damage(path, n, "a row without an 'id'", rows)
        elif not isinstance(rec.get("setting", ""), str):
            return records, start, _damage(path, n, "a row whose 'setting' is not a string", rows)
        records.append((n, start, rec))
    return records, good_end, None


def read_jsonl(path: Path, repair: bool = False, discard_damaged: bool = False
               ) -> tuple[dict | None, list[dict], dict[tuple[str, str], int]]:
    """(header or None, rows, row key -> line number). A torn final line is ignored (and cut off
    the file when `repair`); other damage raises `StoreDamagedError`, or with `discard_damaged`
    (and `repair`) is cut off with everything after it."""
    if not path.exists():
        return None, [], {}
    records, end, damage = _scan(path)
    if damage is not None and not (discard_damaged and repair):
        raise damage
    if repair and end < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(end)
    if not records:
        return None, [], {}
    header = records[0][2]
    lines = {}
    rows = []
    for n, _, rec in records[1:]:
        rows.append(rec)
        lines.setdefault(row_key(rec), n)
    return header, rows, lines


def _check_config(header: dict, config: dict, path: Path) -> None:
    theirs = header.get("config")
    if theirs != config:
        diff = sorted(k for k in set(theirs or {}) | set(config) if (theirs or {}).get(k) != config.get(k))
        raise StoreConfigError(
            f"{path} holds results of a different experiment config (differs in: {', '.join(diff)}); "
            f"use another folder or delete it", params=("out",)
        )


def _load_rows(directory: Path, config: dict, repair: Path | None = None, discard_damaged: bool = False,
               locations: dict | None = None) -> dict[tuple[str, str], dict]:
    """Every row of every store file in `directory` (first row per key wins), each file's header
    checked against `config`; the file `repair` has a torn last line (and, with
    `discard_damaged`, a damaged tail) cut off. `locations` receives key -> (file, line)."""
    rows: dict[tuple[str, str], dict] = {}
    for p in store_files(directory):
        header, file_rows, lines = read_jsonl(p, repair=(p == repair), discard_damaged=discard_damaged)
        if header is None:
            continue
        _check_config(header, config, p)
        for r in file_rows:
            k = row_key(r)
            if k not in rows:
                rows[k] = r
                if locations is not None:
                    locations[k] = (p, lines[k])
    return rows


def append_text(path: Path, text: str, fsync: bool = False) -> None:
    """Append `text` to `path` in one write (and flush; fsync when asked)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def _header_text(config: dict) -> str:
    return json.dumps({"type": "header", "version": FORMAT_VERSION, "config": config}, sort_keys=True) + "\n"


def _replace_text(path: Path, text: str) -> None:
    """Write `text` as `path` through a temporary file and a rename (mode from the umask)."""
    from fvit.utils import write_text_atomic

    write_text_atomic(path, text)


class ResultsStore:
    """One experiment's rows in `directory` (this rank's shard file; reads every shard). Holds the
    folder's lock until `close` (or until it is garbage collected)."""

    def __init__(self, directory: str | Path, config: dict, *, rank: int = 0, world_size: int = 1,
                 fsync: bool = False, discard_damaged: bool = False):
        self.dir = Path(directory)
        self.config = _canonical(config)
        self.rank, self.world_size, self.fsync = rank, world_size, fsync
        self.discard_damaged = discard_damaged
        self.path = self.dir / shard_name(rank, world_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = acquire_lock(self.dir, rank)
        self._finalizer = weakref.finalize(self, release_lock, self._lock)
        try:
            if world_size <= 1 and _shards(self.dir):
                # a sharded run's files (any world size): merge them first (rows are per image)
                merge_store_dir(self.dir, self.config, discard_damaged=discard_damaged)
            self._load()
            if not self.path.exists() or self.path.stat().st_size == 0:
                _replace_text(self.path, _header_text(self.config))
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        self._where: dict[tuple[str, str], tuple[Path, int]] = {}
        self._rows = _load_rows(self.dir, self.config, repair=self.path, discard_damaged=self.discard_damaged,
                                locations=self._where)

    def close(self) -> None:
        """Release the folder's lock (the rows stay readable in memory)."""
        self._finalizer()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_lines(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in records)
        try:
            append_text(self.path, text, self.fsync)
        except OSError as e:  # disk full: the rows already stored stay (a torn last line is cut on resume)
            raise FvitError(f"{self.path}: cannot append results ({e.strerror or type(e).__name__}); the rows "
                            "stored before are kept: free some space and rerun to resume", params=("out",)) from None

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

    def location(self, row: dict) -> tuple[Path, int] | None:
        """(file, line) a stored row was read from (None: written by this run)."""
        return self._where.get(row_key(row))

    def missing_field(self, rows: Iterable[dict], field: str | None = None) -> StoreDamagedError | None:
        """The damage error for the first stored row (in file order) of `rows` without `field`;
        without `field`: without a field that most rows of its setting have (the diagnosis of a
        summary that failed on the rows). None when no stored row lacks one."""
        rows = [r for r in rows if isinstance(r, dict)]
        if field is not None:
            lacking = {id(r): field for r in rows if field not in r}
        else:
            by_setting: dict[str, list[dict]] = {}
            for r in rows:
                by_setting.setdefault(str(r.get("setting", "")), []).append(r)
            lacking = {}
            for group in by_setting.values():
                counts: dict[str, int] = {}
                for r in group:
                    for k in r:
                        counts[k] = counts.get(k, 0) + 1
                common = [k for k, c in counts.items() if 2 * c > len(group)]
                for r in group:
                    gone = [k for k in common if k not in r]
                    if gone:
                        lacking[id(r)] = gone[0]
        hits = sorted((loc, lacking[id(r)]) for r in rows if id(r) in lacking
                      for loc in [self.location(r)] if loc is not None)
        if not hits:
            return None
        (path, line), name = hits[0]
        kept = sum(1 for p, n in self._where.values() if p == path and n < line)
        return _damage(path, line, f"a row without the field {name!r}", kept)

    def discard_from(self, path: Path, line: int) -> None:
        """Cut `path` (a file of this store) before its `line` (1-based) and reload the rows."""
        data = Path(path).read_bytes()
        end = 0
        for _ in range(line - 1):
            nl = data.find(b"\n", end)
            if nl < 0:
                break
            end = nl + 1
        with open(path, "r+b") as f:
            f.truncate(end)
        self._load()
        if self.path.stat().st_size == 0:
            _replace_text(self.path, _header_text(self.config))

    def __len__(self) -> int:
        return len(self._rows)


def merge_store_dir(directory: str | Path, config: dict, discard_damaged: bool = False) -> Path:
    """Merge `rows.jsonl` and every `rows.rank*.jsonl` in `directory` into `rows.jsonl` (atomic
    replace), then remove the shards. Returns the merged path."""
    directory = Path(directory)
    config = _canonical(config)
    shards = _shards(directory)
    out = directory / ROWS_FILE
    merged: dict[tuple[str, str], dict] = {}
    for p in store_files(directory):  # damaged tails are left out of the merge only when asked
        header, rows, _ = read_jsonl(p, repair=discard_damaged, discard_damaged=discard_damaged)
        if header is None:
            continue
        _check_config(header, config, p)
        for r in rows:
            merged.setdefault(row_key(r), r)
    records = sorted(merged.values(), key=_sort_key)
    _replace_text(out, _header_text(config) + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    for p in shards:
        p.unlink()
    return out
