"""Figures drawn as HTML: descriptions with the objects a knockout kept, lost or invented
highlighted (Fig. 5), and the fine details' mentions (Fig. 6). They are text, so they stay
searchable and selectable in the book."""
from __future__ import annotations

HIGHLIGHT = {"found": "#b8e186", "missed": "#fdb863", "hallucinated": "#f4a6c6"}


def highlight_html(text: str, words: dict) -> str:
    """``text`` as HTML with each listed word/phrase highlighted: ``words`` maps a phrase to
    one of "found", "missed", "hallucinated" (longest phrases first, case-insensitive)."""
    import html
    import re

    if not words:
        return html.escape(text)
    phrases = sorted(words, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(p) for p in phrases), re.IGNORECASE)
    out, last = [], 0
    for m in pattern.finditer(text):
        kind = words.get(m.group(0).lower(), words.get(m.group(0)))
        out.append(html.escape(text[last:m.start()]))
        color = HIGHLIGHT.get(kind, "#dddddd")
        out.append(f'<span style="background:{color};border-radius:3px;padding:0 2px" title="{kind}">'
                   f"{html.escape(m.group(0))}</span>")
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def knockout_panel_html(image, baseline: str, rows: list[dict], width: int = 160) -> str:
    """Fig. 5 style: the image, its baseline description, and per configuration the modified
    description with found / missed / hallucinated objects highlighted and its F1.

    ``rows``: dicts with config, text, f1, original_objects, modified_objects, matched
    (from the judge). The image is embedded as a PNG data URI (the page stays offline).
    """
    import base64
    import html
    import io

    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    legend = " ".join(f'<span style="background:{c};padding:0 4px;border-radius:3px">{k}</span>'
                      for k, c in HIGHLIGHT.items())
    parts = [f'<table style="font-size:0.85em"><tr><td rowspan="{len(rows) + 1}" style="vertical-align:top">'
             f'<img src="{uri}" width="{width}" alt="input image"/></td>'
             f"<td><b>baseline</b></td><td>{html.escape(baseline)}</td><td></td></tr>"]
    for row in rows:
        orig, mod = list(row.get("original_objects", [])), list(row.get("modified_objects", []))
        found = {m.lower() for m in mod if m.lower() in {o.lower() for o in orig}}
        words = {m.lower(): ("found" if m.lower() in found else "hallucinated") for m in mod}
        missed = [o for o in orig if o.lower() not in found]
        f1 = row.get("f1", float("nan"))
        parts.append(f"<tr><td><b>{html.escape(row['config'])}</b></td>"
                     f"<td>{highlight_html(row['text'], words)}"
                     + ("<br/><i>missed:</i> " + ", ".join(
                         f'<span style="background:{HIGHLIGHT["missed"]};padding:0 2px">{html.escape(m)}</span>'
                         for m in missed) if missed else "")
                     + f"</td><td>F1 {f1:.2f}</td></tr>")
    parts.append(f"</table><p style='font-size:0.8em'>{legend}</p>")
    return "".join(parts)


def detail_text_html(items: list) -> str:
    """The descriptions of gallery ``items`` as HTML, each detail's mention highlighted
    (characters ``span`` of ``text``)."""
    import html

    by_text: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for it in items:
        by_text.setdefault((it["image_id"], it["text"]), []).append(tuple(it["span"]))
    parts = []
    for (image_id, text), spans in by_text.items():
        out, last = [], 0
        for s, e in sorted(set(spans)):
            if s < last:
                continue
            out.append(html.escape(text[last:s]))
            out.append(f'<span style="background:{HIGHLIGHT["missed"]};border-radius:3px;padding:0 2px">'
                       f"{html.escape(text[s:e])}</span>")
            last = e
        out.append(html.escape(text[last:]))
        parts.append(f"<p style='font-size:0.85em'><b>{html.escape(str(image_id))}</b>: {''.join(out)}</p>")
    return "".join(parts)
