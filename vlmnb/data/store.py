"""A resumable, columnar store for experiment results.

Experiments write *tidy rows*, one measured number (or one generated text) per row::

    model  image_id  config        layer  metric  value  text   <free extra columns...>

grouped into *units of work*: a unit is one piece of the experiment that is computed in one
go (for example one image under one knockout configuration), named by a small key dict such
as ``{"model": ..., "image_id": ..., "config": ...}``. A unit is either fully in the store or
not at all, so a rerun with the same parameters skips the units already done, and an
interrupted run resumes where it stopped: nothing lost, nothing duplicated.

Typical loop::

    with ResultStore("runs/knockout", params) as store:
        for image in images:
            for config in configs:
                if store.has(model=name, image_id=image.image_id, config=config):
                    continue
                with store.unit(model=name, image_id=image.image_id, config=config) as u:
                    u.add(metric="f1", value=f1, text=description)
        df = store.frame()

Layout on disk (one folder per run)::

    <path>/meta.json                     parameters, library versions, creation time
    <path>/parts/part-000001-3fa9c1.parquet
    <path>/parts/part-000002-81b0de.parquet
    ...

Each part file holds the rows of the units completed since the previous flush; the keys of
those units are stored in the part's Parquet key-value metadata (``vlmnb.units``), so a unit
that produced no rows still counts as done. A part is written to a hidden temporary file,
fsync'ed and renamed into place (``os.replace``), so a crash leaves either the whole part or
none of it. Completed units are buffered and flushed every ``flush_every`` units or
``flush_seconds`` seconds, and always when the store is closed or the ``with`` block exits,
including by an exception such as KeyboardInterrupt. A hard kill loses at most the buffered
units, which the rerun recomputes. A unit whose ``with`` block raises is discarded.

A part that cannot be read (a truncated copy, say) raises :class:`CorruptPart` naming the file;
opening the store as a writer sets such a part aside into ``parts/corrupt/`` (its bytes are kept)
with a warning, and its units, no longer done, are recomputed by the run.

Parameters: a store remembers the parameters it was created with; opening it with *different*
ones raises :class:`ParamsMismatch` (a ValueError) naming them (results of other parameters must
not be mixed); :meth:`ResultStore.in_dir` gives every parameter set its own folder. One process
writes to a store at a time: a sweep over several processes writes one store per process and
combines them with :func:`merge`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import time
import warnings
from contextlib import contextmanager
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlmnb.core.errors import OneLineError
from vlmnb import __version__
from vlmnb.core.progress import progress_bar as tqdm

__all__ = ["ResultStore", "UnitLoop", "merge", "read_parts", "library_versions", "CORE_COLUMNS",
           "unit_id", "is_store", "list_parts", "part_units", "stored_params", "params_differ", "set_aside",
           "CorruptPart", "ParamsMismatch", "CORRUPT_DIR"]

FORMAT = "vlmnb.store/1"
META_FILE = "meta.json"
PARTS_DIR = "parts"
CORRUPT_DIR = "corrupt"  # inside parts/: unreadable parts set aside (never deleted)
_UNITS_KEY = b"vlmnb.units"
_PART_RE = re.compile(r"^part-(\d{6,})-[0-9a-f]+\.parquet$")

#: columns every row has, with their Arrow types (missing values are null)
CORE_COLUMNS: dict[str, pa.DataType] = {
    "model": pa.string(), "image_id": pa.string(), "config": pa.string(),
    "layer": pa.int64(), "metric": pa.string(), "value": pa.float64(), "text": pa.string(),
}


class CorruptPart(OneLineError, ValueError):
    """A part file that cannot be read (truncated, overwritten, not Parquet); names the file."""

    def __init__(self, path: Path, reason: str):
        self.part, self.reason = Path(path), " ".join(str(reason).split())
        super().__init__(f"corrupt result part {self.part} ({self.reason}); open the store "
                         f"as a writer (ResultStore(path, params)) to set it aside into "
                         f"{PARTS_DIR}/{CORRUPT_DIR}/ and recompute its units")


class ParamsMismatch(OneLineError, ValueError):
    """A store opened with parameters other than those its results were computed with."""

    def __init__(self, message: str, path: Path, differences: list[str]):
        self.store_path, self.differences = Path(path), differences
        super().__init__(message)


# ----------------------------------------------------------------------------- helpers
def _jsonable(obj: Any, where: str = "params") -> Any:
    """Normalise ``obj`` to plain JSON types (dicts with sorted str keys, lists, scalars)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(list(obj))]
    raise TypeError(f"{where} must hold only str, numbers, bool, None, lists and dicts "
                    f"(it is stored as JSON); got {type(obj).__name__}: {obj!r}")


def _canonical(obj: Any, where: str) -> str:
    return json.dumps(_jsonable(obj, where), sort_keys=True, separators=(",", ":"), allow_nan=True)


def unit_id(key: Mapping[str, Any]) -> str:
    """The canonical id of a unit key (JSON with sorted keys), as :meth:`ResultStore.done_keys`
    and :func:`part_units` spell it; the key's fields must be scalars."""
    if not key:
        raise ValueError("a unit key needs at least one field, e.g. image_id=...")
    for name, value in key.items():
        if isinstance(value, (dict, list, tuple)):
            raise TypeError(f"unit key field {name!r} must be a scalar, got {type(value).__name__}")
    return _canonical(dict(key), "unit key")


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape the results (without importing them)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "numpy", "pandas", "pyarrow"):
        try:
            out[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            out[dist] = None
    out["vlmnb"] = __version__
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _clean_value(column: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None:
        return None
    if column in ("model", "image_id", "config", "metric", "text"):
        return str(value)
    if column == "layer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"row column 'layer' must be an int or None, got {value!r} "
                             "(put layer windows such as '4-20' in 'config' or an extra column)")
        return value
    if column == "value":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"row column 'value' must be a number or None, got {value!r}") from None
    return value


def _rows_table(rows: list[dict], unit_ids: list[str]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in CORE_COLUMNS}
    for i, row in enumerate(rows):
        for name in row:
            if name not in columns:
                columns[name] = [None] * i
        for name, values in columns.items():
            values.append(row.get(name))
    arrays, fields = [], []
    for name, values in columns.items():
        if name in CORE_COLUMNS:
            arr = pa.array(values, type=CORE_COLUMNS[name])
        else:
            try:
                arr = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"extra column {name!r} mixes value types that cannot share a "
                                 f"column ({exc}); convert them to one type") from None
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    schema = pa.schema(fields, metadata={_UNITS_KEY: json.dumps(unit_ids).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def part_units(path: Path) -> list[str]:
    """The ids (:func:`unit_id`) of the units whose rows one part file holds.

    Raises :class:`CorruptPart` naming the file when it cannot be read."""
    try:
        meta = pq.read_schema(path).metadata or {}
        units = json.loads(meta[_UNITS_KEY]) if _UNITS_KEY in meta else None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptPart(path, f"{type(exc).__name__}: {exc}") from None
    if units is None:
        raise CorruptPart(path, f"no {_UNITS_KEY.decode()} metadata: not a vlmnb result part")
    return units


def set_aside(part: Path) -> Path:
    """Move a (corrupt) part file into ``parts/corrupt/`` of its store, keeping its bytes; returns
    its new path. Its units are then no longer done, so the next run recomputes them."""
    part = Path(part)
    folder, n = part.parent / CORRUPT_DIR, 0
    while (folder / f"{part.name}{f'.{n}' if n else ''}").exists():
        n += 1
    target = folder / f"{part.name}{f'.{n}' if n else ''}"
    try:
        folder.mkdir(exist_ok=True)
        os.replace(part, target)
    except OSError as exc:  # a read-only copy of a store, say
        raise CorruptPart(part, f"unreadable, and it cannot be moved into {folder}: {exc}") from None
    return target


def list_parts(root: str | os.PathLike) -> list[Path]:
    """The part files of the store at ``root``, in the order they were written."""
    folder = Path(root) / PARTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART_RE.match(p.name))


def _new_part_path(root: Path) -> Path:
    parts = list_parts(root)
    seq = int(_PART_RE.match(parts[-1].name).group(1)) + 1 if parts else 1
    return root / PARTS_DIR / f"part-{seq:06d}-{os.urandom(3).hex()}.parquet"


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a result store's folder (it holds the store's meta file)."""
    return (Path(path) / META_FILE).is_file()


def _read_meta(path: Path) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no result store at {path} (missing {META_FILE}); "
                                "create one with ResultStore(path, params)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def stored_params(path: str | os.PathLike) -> dict | None:
    """The parameters of the store at ``path``, or None when there is no store there."""
    return _read_meta(Path(path))["params"] if is_store(path) else None


def params_differ(stored: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The differences (``"key: a (stored) != b (now)"``) between two parameter sets, leaving
    out the keys in ``ignore``; empty when they match (as a store would accept them)."""
    skip = set(ignore)
    a, b = ({k: v for k, v in _jsonable(dict(d)).items() if k not in skip} for d in (stored, new))
    return _param_diff(a, b)


def _param_diff(stored: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(stored) | set(new)):
        a, b = stored.get(k, "<absent>"), new.get(k, "<absent>")
        if a != b and _canonical(a, k) != _canonical(b, k):  # NaN == NaN here
            out.append(f"{k}: {a!r} (stored) != {b!r} (now)")
    return out


# ----------------------------------------------------------------------------- store
class _Unit:
    """Rows of one unit of work, collected inside ``with store.unit(...)``."""

    def __init__(self, key: dict):
        self.key = key
        self.rows: list[dict] = []

    def add(self, **row: Any) -> None:
        """Add one row; the unit's key fields fill the columns the row leaves out."""
        self.rows.append(row)

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add several rows (dicts)."""
        for row in rows:
            self.rows.append(dict(row))


class UnitLoop:
    """The resumable loop over units of work, for any store with ``done(key)``, ``put(key, rows)``
    and ``path``: :class:`ResultStore`, or a view such as :class:`vlmnb.cli.sweep.ShardStore`.
    """

    def _check_open(self) -> None:
        pass  # a store that can be closed raises here

    def has(self, **key: Any) -> bool:
        """Keyword form of :meth:`done`: ``store.has(image_id="x", config="a")``."""
        return self.done(key)

    @contextmanager
    def unit(self, **key: Any) -> Iterator[_Unit]:
        """Collect one unit's rows; they are recorded only if the block finishes without error."""
        self._check_open()
        if self.done(key):
            raise ValueError(f"unit {unit_id(key)} is already in {self.path}; "
                             "skip it with `if store.has(...): continue`")
        unit = _Unit(key)
        yield unit
        self.put(key, unit.rows)

    def run(self, keys: Iterable[Mapping[str, Any]], compute: Callable[..., Iterable[Mapping[str, Any]]],
            progress: bool = True, desc: str | None = None) -> int:
        """For every key not done yet, store ``compute(**key)``'s rows; returns units computed."""
        keys = list(keys)
        todo = [k for k in keys if not self.done(k)]
        for key in tqdm(todo, desc=desc or self.path.name, disable=not progress or not todo):
            self.put(key, list(compute(**key)))
        return len(todo)


class ResultStore(UnitLoop):
    """Append-only, resumable table of tidy result rows (see the module docstring).

    Args:
        path: the run folder (created if missing).
        params: the experiment's parameters (JSON-like dict). Required for a new store; for
            an existing one they must equal the stored ones (``None`` adopts them).
        versions: record library versions (torch, transformers, vlmnb, python, ...) in the
            meta file; a resume under other versions warns and is noted there.
        flush_every: write a part file after this many completed units ...
        flush_seconds: ... or when this many seconds passed since the last write.
    """

    def __init__(self, path: str | os.PathLike, params: Mapping[str, Any] | None = None,
                 versions: bool = True, flush_every: int = 64, flush_seconds: float = 60.0):
        self.path = Path(path)
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self._pending: list[tuple[str, list[dict]]] = []
        self._pending_ids: set[str] = set()
        self._last_flush = time.monotonic()
        self._closed = False
        meta_path = self.path / META_FILE
        if meta_path.is_file():
            self.meta = _read_meta(self.path)
            if params is not None:
                new = _jsonable(dict(params))
                diff = _param_diff(self.meta["params"], new)
                if diff:
                    raise ParamsMismatch(
                        f"the result store at {self.path} holds results for other parameters "
                        f"({'; '.join(diff)}); write to another path (ResultStore.in_dir(root, "
                        f"params) gives each parameter set its own folder) or move {self.path} away",
                        self.path, diff)
            if versions:
                self._note_versions()
        else:
            if params is None:
                raise FileNotFoundError(f"no result store at {self.path}; pass params to create one")
            if self.path.exists() and any(p.name != PARTS_DIR or any(p.iterdir()) for p in self.path.iterdir()):
                raise FileExistsError(f"{self.path} exists and is not a result store (no {META_FILE}); "
                                      "choose an empty or new folder")
            self.meta = {
                "format": FORMAT,
                "params": _jsonable(dict(params)),
                "versions": library_versions() if versions else None,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            (self.path / PARTS_DIR).mkdir(parents=True, exist_ok=True)
            _write_json(meta_path, self.meta)
        (self.path / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        self._done: set[str] = set()
        self.set_aside: list[Path] = []  # corrupt parts moved into parts/corrupt/ when opening
        for part in list_parts(self.path):
            try:
                self._done.update(part_units(part))
            except CorruptPart as exc:
                moved = set_aside(part)
                self.set_aside.append(moved)
                warnings.warn(f"corrupt result part {part} ({exc.reason}) set aside as {moved}; "
                              "its units will be recomputed", stacklevel=2)

    # -- construction helpers
    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> "ResultStore":
        """Open an existing store with the parameters it holds."""
        _read_meta(Path(path))
        return cls(path, None, **kwargs)

    @classmethod
    def in_dir(cls, root: str | os.PathLike, params: Mapping[str, Any], name: str = "run",
               **kwargs) -> "ResultStore":
        """A store in ``root/<name>-<hash of params>``: each parameter set gets its own folder."""
        digest = hashlib.sha256(_canonical(dict(params), "params").encode()).hexdigest()[:10]
        return cls(Path(root) / f"{name}-{digest}", params, **kwargs)

    @property
    def params(self) -> dict:
        """The parameters this store's results were computed with."""
        return self.meta["params"]

    def _note_versions(self) -> None:
        now = library_versions()
        stored = self.meta.get("versions") or {}
        diff = {k: (stored.get(k), v) for k, v in now.items() if stored and stored.get(k) != v}
        if diff:
            warnings.warn(f"resuming {self.path} under other library versions: " +
                          ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items()), stacklevel=3)
            self.meta.setdefault("resumed_with", []).append(
                {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "versions": now})
            _write_json(self.path / META_FILE, self.meta)

    def _remove_stale_tmp(self) -> None:
        # hidden *.tmp files are parts a killed writer never finished; they hold no done units
        for p in (self.path / PARTS_DIR).glob(".*.tmp"):
            p.unlink(missing_ok=True)

    # -- what is done
    def done(self, key: Mapping[str, Any]) -> bool:
        """True when the unit named by ``key`` (a dict) is complete (written or buffered)."""
        uid = unit_id(key)
        return uid in self._done or uid in self._pending_ids

    def done_keys(self) -> list[dict]:
        """Keys of all complete units."""
        return [json.loads(u) for u in sorted(self._done | self._pending_ids)]

    def __len__(self) -> int:
        """The number of complete units."""
        return len(self._done) + len(self._pending_ids)

    # -- writing
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the result store at {self.path} is closed")

    def put(self, key: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> None:
        """Record one complete unit: its key and all its rows (possibly none)."""
        self._check_open()
        key = dict(key)
        uid = unit_id(key)
        if uid in self._done or uid in self._pending_ids:
            raise ValueError(f"unit {uid} is already in {self.path}; check store.done(key) before computing it")
        clean = []
        for row in rows:
            full = {**{k: v for k, v in key.items()}, **dict(row)}
            bad = [c for c in full if not isinstance(c, str) or c.startswith("_")]
            if bad:
                raise ValueError(f"column names must be str not starting with '_': {bad}")
            clean.append({c: _clean_value(c, v) for c, v in full.items()})
        self._pending.append((uid, clean))
        self._pending_ids.add(uid)
        if (len(self._pending) >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered units as one part file (atomic); returns its path."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return None
        rows = [row for _, unit_rows in self._pending for row in unit_rows]
        uids = [uid for uid, _ in self._pending]
        table = _rows_table(rows, uids)
        final, sink = _new_part_path(self.path), pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write_bytes(final, sink.getvalue().to_pybytes())
        self._done.update(uids)
        self._pending.clear()
        self._pending_ids.clear()
        return final

    def close(self) -> None:
        """Flush buffered units; the store cannot be written afterwards."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        # flush even on an exception: the completed units are valid results
        self.close()

    # -- reading
    def frame(self) -> pd.DataFrame:
        """All rows as a DataFrame (in the order they were recorded); flushes first."""
        if not self._closed:
            self.flush()
        return read_parts(list_parts(self.path))

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}, units={len(self)})"


def read_parts(parts: Sequence[Path]) -> pd.DataFrame:
    """Concatenate part files into one DataFrame with the core columns first."""
    tables = []
    for p in parts:
        try:
            tables.append(pq.read_table(p))
        except (pa.ArrowException, OSError) as exc:
            raise CorruptPart(p, f"{type(exc).__name__}: {exc}") from None
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = pa.schema([pa.field(n, t) for n, t in CORE_COLUMNS.items()]).empty_table()
    df = table.replace_schema_metadata(None).to_pandas()
    df["layer"] = df["layer"].astype("Int64")
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- merge
def merge(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
          ignore_params: Sequence[str] = ("rank", "world_size"), repair: bool = False) -> ResultStore:
    """Combine stores written by several processes into the store at ``out``.

    The stores must share their parameters, except the keys in ``ignore_params`` (a
    process's rank, say), which the merged store leaves out. Part files are copied into
    ``out`` in the order given. Merging again is harmless: parts whose units are already in
    ``out`` are skipped. A unit present in two different sources is an error (the shards of a
    sweep must not overlap). A corrupt part of a source raises :class:`CorruptPart`, or with
    ``repair=True`` is set aside (:func:`set_aside`) and skipped (the sources' writer must then
    recompute its units before they can be merged).
    """
    if not paths:
        raise ValueError("merge needs at least one store path")
    metas = [_read_meta(Path(p)) for p in paths]
    ignore = set(ignore_params)
    common = [{k: v for k, v in m["params"].items() if k not in ignore} for m in metas]
    for p, c in zip(paths[1:], common[1:]):
        diff = _param_diff(common[0], c)
        if diff:
            raise ValueError(f"cannot merge {paths[0]} and {p}: their parameters differ ({'; '.join(diff)})")
    target = ResultStore(out, common[0], versions=False)
    if target.meta.get("versions") is None:
        target.meta["versions"] = metas[0].get("versions")
    sources = target.meta.setdefault("merged_from", [])
    for p in paths:
        if str(Path(p)) not in sources:
            sources.append(str(Path(p)))
    _write_json(target.path / META_FILE, target.meta)
    seen_in_this_merge: dict[str, str] = {}
    for p in paths:
        for part in list_parts(Path(p)):
            try:
                uids = part_units(part)
            except CorruptPart as exc:
                if not repair:
                    raise
                moved = set_aside(part)
                warnings.warn(f"corrupt result part {part} ({exc.reason}) set aside as {moved}; "
                              "its units will be recomputed by the next run", stacklevel=2)
                continue
            for u in uids:
                if u in seen_in_this_merge and seen_in_this_merge[u] != str(p):
                    raise ValueError(f"unit {u} is in both {seen_in_this_merge[u]} and {p}; "
                                     "the stores overlap and cannot be merged")
                seen_in_this_merge[u] = str(p)
            already = [u for u in uids if u in target._done]
            if len(already) == len(uids) and uids:
                continue
            if already:
                raise ValueError(f"{part} is partly merged into {out} already ({len(already)} of "
                                 f"{len(uids)} units); merge into a new folder")
            _atomic_write_bytes(_new_part_path(target.path), part.read_bytes())
            target._done.update(uids)
    return target
