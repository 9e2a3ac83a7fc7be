"""A chapter's results as files to download: its result stores as Parquet, each figure's numbers as CSV.

The last cell of a chapter calls :func:`publish`, which writes

- ``<store folder name>.parquet`` for each result store the chapter used: every row of the store
  (:meth:`vlmnb.data.store.ResultStore.frame`), with the store's parameters in the file's
  key-value metadata (``vlmnb.params``);
- ``<figure>.csv`` for each figure the chapter drew: the numbers the figure shows, in the
  columns :data:`vlmnb.views.figure_data.COLUMNS` documents;

into ``<folder>/<chapter>/`` and shows them as a list of links. The book runner
(``python -m vlmnb book``) sets the folder and the links' base (:data:`DIR_ENV`,
:data:`URL_ENV`) so that the files land in the built site next to the pages; run by hand, the
files go to ``downloads/<chapter>/`` under the working directory, linked from there.
"""
from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlmnb.core.usage import UsageError
from vlmnb.views import figure_data

__all__ = ["publish", "Downloads", "Download", "DIR_ENV", "URL_ENV", "LINK_CLASS", "PARAMS_KEY", "CLAIMS_FILE"]

#: environment variables the book runner sets: where the files go, and that folder as seen from a page
DIR_ENV = "VLMNB_DOWNLOADS_DIR"
URL_ENV = "VLMNB_DOWNLOADS_URL"
DEFAULT_DIR = "downloads"
#: CSS class of each download link (the browser test follows them)
LINK_CLASS = "vlmnb-download"
PARAMS_KEY = b"vlmnb.params"
#: the file of a chapter's claims table (read back by :mod:`vlmnb.views.findings`)
CLAIMS_FILE = "claims.csv"


@dataclass
class Download:
    """One written file: its name, what it holds, its rows and columns."""

    name: str
    what: str
    rows: int
    columns: list[str]


@dataclass
class Downloads:
    """The files :func:`publish` wrote for one chapter; shown as a list of links."""

    chapter: str
    folder: Path
    url: str
    files: list[Download]

    def _repr_html_(self) -> str:
        items = []
        for f in self.files:
            href = html.escape(f"{self.url}/{self.chapter}/{f.name}", quote=True)
            items.append(f'<li><a class="{LINK_CLASS}" href="{href}" download>{html.escape(f.name)}</a>: '
                         f"{html.escape(f.what)} ({f.rows:,} rows; columns {html.escape(', '.join(f.columns))})</li>")
        if not items:
            return "<p>This chapter has no results to download.</p>"
        return f'<ul class="vlmnb-downloads">{"".join(items)}</ul>'

    def __repr__(self) -> str:  # names only: a page must not show the machine's paths
        return "\n".join(f"{self.chapter}/{f.name}: {f.what}, {f.rows} rows" for f in self.files) or "no downloads"


def _write_store(store, folder: Path) -> Download:
    frame = store.frame()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {**(table.schema.metadata or {}), PARAMS_KEY: json.dumps(store.params, sort_keys=True).encode()}
    name = f"{store.path.name}.parquet"
    pq.write_table(table.replace_schema_metadata(meta), folder / name)
    model = store.params.get("model")
    what = f"result store {store.path.name}" + (f" ({model})" if model else "")
    return Download(name, f"{what}, every row (Parquet)", len(frame), list(frame.columns))


def publish(chapter: str, stores: Iterable = (), *, claims: pd.DataFrame | None = None,
            folder: str | os.PathLike | None = None, url: str | None = None) -> Downloads:
    """Write the chapter's result ``stores`` (Parquet), the numbers of every figure drawn in
    this process (CSV, :func:`vlmnb.views.figure_data.drawn`) and its ``claims`` table (CSV,
    :data:`CLAIMS_FILE`: the verdicts on the paper's claims, per model, as
    :func:`vlmnb.views.side_by_side.claims` writes them; the book's first page sums them up) into
    ``folder/chapter/``, replacing what an earlier run left there; returns the links
    (``url/chapter/<file>``)."""
    if not chapter or "/" in chapter or chapter.startswith("."):
        raise UsageError(f"chapter must be a plain name such as '02_knockout', got {chapter!r}")
    base = Path(folder or os.environ.get(DIR_ENV) or DEFAULT_DIR)
    url = (url or os.environ.get(URL_ENV) or (str(folder) if folder else DEFAULT_DIR)).rstrip("/")
    target = base / chapter
    if target.exists():
        shutil.rmtree(target)  # files of an earlier run with other figures must not linger
    target.mkdir(parents=True)
    files = [_write_store(store, target) for store in stores]
    if claims is not None:
        claims.to_csv(target / CLAIMS_FILE, index=False)
        files.append(Download(CLAIMS_FILE, "the paper's claims and whether each held, per model", len(claims),
                              list(claims.columns)))
    for stem, table in figure_data.drawn():
        name = f"{stem}.csv"
        table.to_csv(target / name, index=False)
        files.append(Download(name, f"numbers of the figure drawn by {stem.split('-')[0]}", len(table),
                              list(table.columns)))
    return Downloads(chapter, target, url, files)
