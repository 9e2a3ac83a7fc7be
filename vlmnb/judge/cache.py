"""A persistent sqlite cache of judge results, safe with concurrent writers."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

from vlmnb.core.paths import cache_dir
from vlmnb.judge.result import JudgeResult

__all__ = ["JudgeCache", "default_cache_path"]


def default_cache_path() -> Path:
    """``judge.sqlite`` in :func:`vlmnb.core.paths.cache_dir` (``$VLMNB_CACHE_DIR`` if set, else
    ``<work tree>/.cache/vlmnb``)."""
    return cache_dir() / "judge.sqlite"


class JudgeCache:
    """A persistent sqlite cache of judge results.

    Keyed by a SHA-256 of (judge name, model, prompt version, original, modified). Only
    successful results are stored, so a failed call is retried on the next run. Writes are
    single ``INSERT OR REPLACE`` statements in WAL mode with a busy timeout: several processes
    or threads may write at once, and an interrupted run leaves every finished entry intact.
    Nothing secret is stored: only the texts, the model name and the parsed result.
    """

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0):
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Switching to WAL needs an exclusive lock, and sqlite answers "database is locked" at once
        # (without its busy handler) while another connection is opening the same new file: retry.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._create()
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _create(self) -> None:
        con = self._connect()
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # WAL persists in the file
                con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS judge_results ("
                " key TEXT PRIMARY KEY, judge TEXT, model TEXT, version TEXT,"
                " original TEXT, modified TEXT, result TEXT, created REAL)")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return con

    @staticmethod
    def key(judge: str, model: str, version: str, original: str, modified: str) -> str:
        """The cache key of one judgement: SHA-256 of the JSON list of its five parts."""
        blob = json.dumps([judge, model, version, original, modified], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, judge: str, model: str, version: str, original: str, modified: str) -> JudgeResult | None:
        """The stored result for this judge, model, version and pair, or None."""
        k = self.key(judge, model, version, original, modified)
        con = self._connect()
        try:
            row = con.execute("SELECT result FROM judge_results WHERE key=?", (k,)).fetchone()
        finally:
            con.close()
        return JudgeResult.from_dict(json.loads(row[0])) if row else None

    def put(self, judge: str, model: str, version: str, original: str, modified: str,
            result: JudgeResult) -> None:
        """Store a successful result (failures are ignored, so they are retried next time)."""
        if not result.ok:
            return
        k = self.key(judge, model, version, original, modified)
        con = self._connect()
        try:
            con.execute(
                "INSERT OR REPLACE INTO judge_results VALUES (?,?,?,?,?,?,?,?)",
                (k, judge, model, version, original, modified,
                 json.dumps(result.to_dict(), ensure_ascii=False), time.time()))
        finally:
            con.close()

    def __len__(self) -> int:
        con = self._connect()
        try:
            return con.execute("SELECT COUNT(*) FROM judge_results").fetchone()[0]
        finally:
            con.close()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"
