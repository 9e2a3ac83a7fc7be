"""The book's first page sums up the chapters: each of the paper's findings, and whether it held
on each model the chapters ran (the book's two embedded models, ``toy`` and ``toy-smollm``),
beside the paper's own number.

Each chapter publishes its claims table (:func:`vlmnb.views.downloads.publish` with ``claims=``,
the table :func:`vlmnb.views.side_by_side.claims` makes) as ``claims.csv`` next to its other
downloads; :func:`collect` reads them all back and :func:`summary_html` draws the table that the
book's ``findings`` directive (``book/_ext/findings.py``) puts on the first page at build time.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from vlmnb.views.downloads import CLAIMS_FILE

__all__ = ["collect", "models_in", "summary_html"]

HELD = " held"  # suffix of the verdict columns ("toy: held")


def collect(folder: str | Path) -> pd.DataFrame:
    """Every chapter's claims under ``folder`` (``<chapter>/claims.csv``), in chapter order, with a
    ``chapter`` column; empty when no chapter has published claims yet."""
    folder = Path(folder)
    frames = []
    for path in sorted(folder.glob(f"*/{CLAIMS_FILE}")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not {"claim", "paper"} <= set(frame.columns):
            raise ValueError(f"{path}: not a claims table (needs the columns claim and paper)")
        frames.append(frame.assign(chapter=path.parent.name))
    if not frames:
        return pd.DataFrame(columns=["chapter", "claim", "paper"])
    out = pd.concat(frames, ignore_index=True, sort=False).fillna("")
    return out[["chapter", "claim", "paper"] + [c for c in out.columns if c not in ("chapter", "claim", "paper")]]


def models_in(findings: pd.DataFrame) -> list[str]:
    """The models whose verdicts the table holds, in column order."""
    return [c[:-len(":" + HELD)] for c in findings.columns if c.endswith(":" + HELD)]


def summary_html(findings: pd.DataFrame, chapter_titles: dict[str, str] | None = None, link: str | None = None) -> str:
    """An HTML table: per finding, its chapter (a link to ``<link><chapter>.html`` when ``link``
    is given), the paper's number, and per model whether it held (with the measured value under it)."""
    if findings.empty:
        return "<p>No chapter has been run yet: run <code>make book</code> to fill this table.</p>"
    models = models_in(findings)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["chapter", "the paper's finding", "paper"] + models)
    rows = []
    for r in findings.to_dict("records"):
        title = (chapter_titles or {}).get(r["chapter"], r["chapter"])
        chapter = html.escape(title)
        if link is not None:
            chapter = f'<a href="{html.escape(link + r["chapter"], quote=True)}.html">{chapter}</a>'
        cells = [chapter, html.escape(r["claim"]), html.escape(r["paper"])]
        for m in models:
            verdict, value = r.get(f"{m}:{HELD}", ""), r.get(m, "")
            css = {"held": "vlmnb-held", "not held": "vlmnb-not-held"}.get(verdict, "vlmnb-na")
            cells.append(f'<span class="{css}">{html.escape(verdict or "n/a")}</span>'
                         + (f"<br><small>{html.escape(value)}</small>" if value else ""))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<div class="vlmnb-table-scroll" style="overflow-x:auto;max-width:100%"><table class="vlmnb-findings">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
