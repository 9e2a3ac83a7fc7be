"""Interactive attention explorer: hover a generated word, see where it looks, layer by layer.

:func:`explore` turns a recorded generation into a self-contained HTML widget (no server, no
CDN, no network request): the image, the generated description as hoverable words, a layer
slider with an optional mean over a window of layers, the selected word's head-averaged
attention over the image tokens painted over the image through the token geometry (peak
marked), an optional outline of the object's true mask, and a small per-layer chart of the
word's attention shares (system / image / query / generated). It works in JupyterLab (trusted
output) and in the static HTML book; where JavaScript does not run, a static figure of the
default selection is shown instead.

Data (see :func:`export_data`): sub-word tokens are grouped into words through the character
offsets of the generation; a word's attention row is the mean over its tokens of the rows of
the steps that produced them (``Recording`` row convention). Rows are quantised to one byte per
image token with a per-(layer, word) offset and scale (the row's minimum and ``(max - min) /
255``), so every value is within ``(max - min) / 510`` of the recorded one and a nearly uniform
map keeps its contrast; shares are quantised with the fixed scale ``1 / 255``.

Bytes per image: ``4/3 * L * W * (N + 12)`` bytes of attention payload (base64) for ``L``
layers, ``W`` words and ``N`` image tokens with a box, plus the image, the mask outlines, the
static fallback figure and about 19 kB of script and style. Measured on the toy model (8 layers,
81 image tokens, a 14-word description with two masked objects): 13.9 kB of attention payload
and 50 kB of HTML in all (image 0.5 kB, outlines 2.6 kB, static figure 9 kB). LLaVA-1.5-7B (32
layers, 576 tokens, 40 words) would need about 1.0 MB of payload, so by default every second
layer is kept (``budget_kb=768``; choose with ``layers=range(0, 32, 2)`` or ``budget_kb=None``).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlmnb.core.vocab import SPAN_NAMES
from vlmnb.engine.record import Record
from vlmnb.views import plots
from vlmnb.data import match_category

ASSETS = Path(__file__).resolve().parent / "explorer_assets"
FORMAT_VERSION = 1

# A word: letters/digits, with inner apostrophes or hyphens ("don't", "double-decker").
WORD_PATTERN = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*")

_COUNTER = itertools.count()


# ============================================================================ words
@dataclass(frozen=True)
class Word:
    """One word of the generated text and the generated tokens that spell it.

    ``start``/``end`` are character offsets into the text; ``tokens`` are indices of generated
    tokens (and so of recording rows) whose characters overlap the word.
    """

    text: str
    start: int
    end: int
    tokens: tuple[int, ...]


def group_words(text: str, offsets: Sequence[tuple[int, int]]) -> list[Word]:
    """Group generated tokens into words using each token's ``(start, end)`` character offsets.

    A token belongs to every word its characters overlap (a leading space does not count), so
    ``["un", "believ", "able"]`` make one word and punctuation-only tokens belong to none.
    Words with no token (text not covered by ``offsets``) are dropped.
    """
    offsets = [(int(s), int(e)) for s, e in offsets]
    words = []
    for match in WORD_PATTERN.finditer(text):
        a, b = match.span()
        tokens = tuple(i for i, (s, e) in enumerate(offsets) if s < b and e > a)
        if tokens:
            words.append(Word(match.group(0), a, b, tokens))
    return words


def match_masks(text: str, words: Sequence[Word], names: Sequence[str]) -> list[int]:
    """For each word, the index into ``names`` of the mask it refers to, or -1.

    A mask name (``"red circle"``, ``"dining table"``) that occurs in the text as whole words
    marks every word of each occurrence (longest names first). Remaining words are tried as
    COCO synonyms of a name (``"man"`` -> ``"person"``) through :func:`vlmnb.data.match_category`.
    """
    out = [-1] * len(words)
    lowered = text.lower()
    for index in sorted(range(len(names)), key=lambda i: -len(names[i])):
        pattern = re.compile(r"(?<![^\W_])" + r"\s+".join(map(re.escape, names[index].lower().split()))
                             + r"(?![^\W_])")
        for m in pattern.finditer(lowered):
            for w, word in enumerate(words):
                if out[w] < 0 and word.start >= m.start() and word.end <= m.end():
                    out[w] = index
    if any(o < 0 for o in out) and names:
        for w, word in enumerate(words):
            if out[w] < 0:
                found = match_category(word.text, names)
                if found is not None:
                    out[w] = list(names).index(found)
    return out


# ============================================================================ quantisation
def quantize_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``(..., n)`` -> ``(uint8 q (..., n), float32 offset (...), float32 scale (...))``.

    ``value ~= offset + q * scale`` with ``offset`` the row minimum and ``scale = (max - min) /
    255``, so the error is at most ``scale / 2`` (plus float32 rounding) and the quantised
    map keeps its full contrast, even where attention is nearly uniform. A constant row gets
    scale 1 and ``q = 0``.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    if values.shape[-1] == 0:
        raise ValueError("cannot quantise rows of length 0")
    low = values.min(axis=-1).astype(np.float32)
    top = values.max(axis=-1)
    span = top - low.astype(np.float64)
    scale = np.where(span > 0, span / 255.0, 1.0).astype(np.float32)
    q = np.rint((values - low.astype(np.float64)[..., None]) / scale.astype(np.float64)[..., None])
    return q.clip(0, 255).astype(np.uint8), low, scale


def dequantize_rows(q: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_rows` (float32)."""
    return (np.asarray(offset, dtype=np.float32)[..., None]
            + q.astype(np.float32) * np.asarray(scale, dtype=np.float32)[..., None])


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def _unb64(text: str, dtype, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


# ============================================================================ export
def _source_parts(source, text, offsets):
    recording = getattr(source, "recording", source)
    if recording is None:
        raise ValueError("this generation has no recording; generate with "
                         "record=vlmnb.Record(fractions=True, image_rows=True)")
    if not hasattr(recording, "image_rows"):
        raise TypeError(f"explore needs a vlmnb.Generation or vlmnb.Recording, got {type(source).__name__}")
    if recording.image_rows is None:
        raise ValueError("the recording has no image rows; record with vlmnb.Record(image_rows=True)")
    text = getattr(source, "text", None) if text is None else text
    offsets = getattr(source, "offsets", None) if offsets is None else offsets
    if text is None or offsets is None:
        raise ValueError("a bare Recording needs text= and offsets= (the Generation's .text and .offsets)")
    return recording, text, list(offsets)


def _mask_array(value) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty list of instance masks")
        return np.any(np.stack([np.asarray(v, dtype=bool) for v in value]), axis=0)
    arr = np.asarray(value, dtype=bool)
    return arr.any(axis=0) if arr.ndim == 3 else arr


def _png_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_uri(image, display: tuple[int, int]) -> str:
    """The image as a data URI, no larger than the display size (PNG when small, else JPEG)."""
    from PIL import Image

    img = image.convert("RGB")
    if img.width > display[0] or img.height > display[1]:
        img = img.resize(display, Image.LANCZOS)
    if img.width * img.height <= 160 * 160:
        return _png_uri(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _outline_uri(mask: np.ndarray, display: tuple[int, int]) -> str:
    """A transparent PNG at display size: the mask's outline (white on a dark rim), faint fill."""
    from PIL import Image

    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(display, Image.NEAREST)) > 127
    pad = np.pad(m, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    edge = m & ~inner
    grow = np.pad(edge, 1)
    thick = edge | grow[:-2, 1:-1] | grow[2:, 1:-1] | grow[1:-1, :-2] | grow[1:-1, 2:]
    rgba = np.zeros(m.shape + (4,), np.uint8)
    rgba[m] = (255, 255, 255, 50)
    rgba[thick] = (255, 255, 255, 255)
    rim = thick & ~edge & ~m
    rgba[rim] = (0, 0, 0, 200)
    return _png_uri(Image.fromarray(rgba, "RGBA"))


def _display_size(image_size, display: int) -> tuple[int, int]:
    W, H = image_size
    s = display / max(W, H)
    return max(1, int(round(W * s))), max(1, int(round(H * s)))


def window_slots(slot: int, window: int, n_layers: int) -> tuple[int, int]:
    """First and last exported-layer slots averaged for the slider at ``slot`` (as the widget does):
    ``window`` layers, ``(window - 1) // 2`` of them before ``slot``, clipped; 0 means all."""
    if window == 0:
        return 0, n_layers - 1
    before = (window - 1) // 2
    return max(0, slot - before), min(n_layers - 1, slot + (window - 1 - before))


def export_data(source, geometry, *, text: str | None = None, offsets=None, masks: dict | None = None,
                layers=None, budget_kb: float | None = 768, image=None, display: int = 320,
                layer: int | None = None,
                window: int | tuple[int, int] = 1, word: int | str | None = None, title: str = "") -> dict:
    """The explorer's compact, JSON-ready payload for one generation.

    Args:
        source: a :class:`vlmnb.Generation` recorded with ``Record(image_rows=True)`` (and
            ``fractions=True`` for the shares chart), or a :class:`vlmnb.Recording` together
            with ``text`` and ``offsets``.
        geometry: the prepared input's :class:`vlmnb.Geometry` (one box per image-span token).
        masks: object name -> mask (bool H x W, or a list of instance masks); words that name
            an object get its outline.
        layers: recorded decoder layers to keep (default all); fewer layers, smaller page.
        budget_kb: with ``layers=None``, keep every k-th recorded layer (the smallest k) so
            that the attention payload stays under this many kB, with a warning (None: keep
            all layers, whatever the size).
        image: the image (PIL); embedded as a data URI when given.
        display: longest side of the drawn image in CSS pixels.
        layer, window, word: initial selection: the slider's decoder layer; how many layers
            to average around it (0: all layers), or ``(first, last)`` decoder layers to
            average (this sets the slider too); a word index or the word itself.

    Returns a dict whose ``attn`` is ``base64(uint8[L, W, N])`` (layer, word, image token with
    a box), ``attn_offset`` and ``attn_scale`` ``base64(float32[L, W])``, ``shares`` ``base64(uint8[L, W, 4])``
    (x 1/255); ``boxes`` (N x 4, original-image pixels), ``token_index`` (each column's index
    in the image span), ``views`` (drawing order), ``words``, ``masks`` and the image.
    About ``4/3 * L * W * (N + 12)`` bytes of attention data (see the module docstring).
    """
    recording, text, offsets = _source_parts(source, text, offsets)
    rows = np.asarray(recording.image_rows, dtype=np.float64)  # (L, steps, n_image)
    boxes = np.asarray(geometry.boxes, dtype=np.float64)
    if rows.shape[2] != len(boxes):
        raise ValueError(f"the recording has {rows.shape[2]} image tokens but the geometry {len(boxes)}; "
                         "pass the geometry of the input that was generated from")
    recorded = [int(x) for x in recording.layers]
    keep_layers = recorded if layers is None else [int(x) for x in layers]
    if layers is None and budget_kb is not None:
        n_words = len(group_words(text, offsets))
        per_layer = 4 / 3 * n_words * (int(np.isfinite(boxes).all(axis=1).sum()) + 12)
        step = max(1, math.ceil(per_layer * len(recorded) / (budget_kb * 1000)))
        if step > 1:
            keep_layers = recorded[::step]
            warnings.warn(f"explorer: {len(recorded)} layers would need {per_layer * len(recorded) / 1e3:.0f} kB; "
                          f"showing one layer in {step} ({len(keep_layers)} layers) to stay under {budget_kb:g} kB "
                          "(pass layers=... or budget_kb=None to choose)", stacklevel=3)
    missing = sorted(set(keep_layers) - set(recorded))
    if missing:
        raise ValueError(f"layers {missing} were not recorded (recorded: {recorded[0]}..{recorded[-1]})")
    layer_slots = [recorded.index(x) for x in keep_layers]
    rows = rows[layer_slots]
    fractions = None if recording.fractions is None else np.asarray(recording.fractions, np.float64)[layer_slots]

    n_steps = rows.shape[1]
    words = [w for w in group_words(text, offsets) if all(t < n_steps for t in w.tokens)]
    if not words:
        raise NothingToExplore(f"the generated text {text[:60]!r} has no word to explore")
    boxed = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    if not len(boxed):
        raise ValueError("the geometry has no image token with a pixel box")
    column = {int(t): j for j, t in enumerate(boxed)}

    attention = np.stack([rows[:, list(w.tokens)][:, :, boxed].mean(axis=1) for w in words], axis=1)  # (L, W, N)
    q, offset, scale = quantize_rows(attention)
    if fractions is not None:
        word_shares = np.stack([fractions[:, list(w.tokens)].mean(axis=1) for w in words], axis=1)
        shares = np.rint(np.clip(word_shares, 0, 1) * 255).astype(np.uint8)
    else:
        shares = None

    masks = {k: v for k, v in (masks or {}).items() if v is not None}
    names = list(masks)
    mask_of = match_masks(text, words, names) if names else [-1] * len(words)
    size = _display_size(geometry.image_size, display)
    used = sorted({m for m in mask_of if m >= 0})
    remap = {m: i for i, m in enumerate(used)}
    mask_items = []
    for m in used:
        arr = _mask_array(masks[names[m]])
        if arr.shape[::-1] != tuple(geometry.image_size):
            raise ValueError(f"mask {names[m]!r} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                             f"{geometry.image_size[0]}x{geometry.image_size[1]}")
        mask_items.append({"name": names[m], "src": _outline_uri(arr, size)})

    views = []
    for v in getattr(geometry, "views", None) or []:
        cols = [column[int(t)] for t in np.asarray(v.token_indices) if int(t) in column]
        if cols:
            views.append({"name": v.name, "cols": cols})
    covered = {c for v in views for c in v["cols"]}
    if len(covered) < len(boxed):  # tokens no view lists are still drawn, first
        views.insert(0, {"name": "other", "cols": [j for j in range(len(boxed)) if j not in covered]})

    if isinstance(word, str):
        found = [i for i, w in enumerate(words) if w.text.lower() == word.lower()]
        if not found:
            raise ValueError(f"no generated word {word!r}; words are {[w.text for w in words][:12]}")
        word = found[0]
    if word is None:
        word = next((i for i, m in enumerate(mask_of) if m >= 0), 0)
    if not 0 <= int(word) < len(words):
        raise ValueError(f"word index {word} out of range (0..{len(words) - 1})")
    if isinstance(window, (tuple, list)):
        first, last = (int(x) for x in window)
        inside = [x for x in keep_layers if first <= x <= last]  # layers may have been thinned
        if not inside:
            raise ValueError(f"window {tuple(window)} holds no exported layer (exported: {keep_layers})")
        window = keep_layers.index(inside[-1]) - keep_layers.index(inside[0]) + 1
        layer = keep_layers[keep_layers.index(inside[0]) + (window - 1) // 2]
    if layer is None:
        slot = len(keep_layers) // 2
    elif int(layer) in keep_layers:
        slot = keep_layers.index(int(layer))
    else:
        raise ValueError(f"layer {layer} is not among the exported layers {keep_layers}")
    if int(window) != window or window < 0:
        raise ValueError(f"window must be a number of layers (0: all layers) or (first, last), got {window!r}")

    payload = {
        "v": FORMAT_VERSION,
        "title": title,
        "text": text,
        "layers": keep_layers,
        "spans": list(getattr(recording, "span_names", SPAN_NAMES)),
        "image_size": [int(x) for x in geometry.image_size],
        "display": list(size),
        "n_words": len(words),
        "n_tokens": int(len(boxed)),
        "words": [{"t": w.text, "s": w.start, "e": w.end, "n": len(w.tokens),
                   "m": remap[mask_of[i]] if mask_of[i] >= 0 else -1} for i, w in enumerate(words)],
        "token_index": [int(t) for t in boxed],
        "boxes": np.round(boxes[boxed], 2).reshape(-1).tolist(),
        "views": views,
        "attn": _b64(q),
        "attn_offset": _b64(offset),
        "attn_scale": _b64(scale),
        "shares": None if shares is None else _b64(shares),
        "masks": mask_items,
        "state": {"word": int(word), "layer": slot, "window": int(window)},
    }
    if image is not None:
        payload["image"] = _image_uri(image, size)
    return payload


def decode_data(payload: dict) -> dict:
    """Arrays of a payload: ``attention`` (L, W, N) float32 and ``shares`` (L, W, 4) float32
    (or None), dequantised exactly as the widget's script does."""
    L, W, N = len(payload["layers"]), payload["n_words"], payload["n_tokens"]
    q = _unb64(payload["attn"], np.uint8, (L, W, N))
    offset = _unb64(payload["attn_offset"], np.float32, (L, W))
    scale = _unb64(payload["attn_scale"], np.float32, (L, W))
    shares = None
    if payload.get("shares"):
        shares = _unb64(payload["shares"], np.uint8, (L, W, 4)).astype(np.float32) / 255.0
    return {"attention": dequantize_rows(q, offset, scale), "shares": shares}


# ============================================================================ widget
@lru_cache(maxsize=1)
def _assets() -> tuple[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["magma"].resampled(256)
    lut = (np.asarray(cmap(np.arange(256)))[:, :3] * 255).round().astype(np.uint8)
    script = (ASSETS / "explorer.js").read_text().replace("__MAGMA__", lut.tobytes().hex())
    return script, (ASSETS / "explorer.css").read_text()


def _json_for_script(obj) -> str:
    # inside <script>: no "</script>", "<!--" or U+2028/9 can end or confuse the element
    return (json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


class Explorer:
    """The widget returned by :func:`explore`; displays itself in a notebook.

    Attributes: ``data`` (the payload of :func:`export_data`), ``static_png`` (the no-script
    fallback figure), ``generation`` (what it was made from, when :func:`explore_sample`
    made it). Methods: :meth:`html`, :meth:`save`.
    """

    def __init__(self, data: dict, static_png: bytes, generation=None):
        self.data = data
        self.static_png = static_png
        self.generation = generation
        digest = hashlib.sha1(data["attn"].encode() + data["text"].encode()).hexdigest()[:10]
        self.element_id = f"vlmnb-explorer-{digest}-{next(_COUNTER)}"

    def __repr__(self) -> str:
        d = self.data
        return (f"<vlmnb explorer: {d['n_words']} words x {len(d['layers'])} layers x {d['n_tokens']} image "
                f"tokens, {len(self.html()) / 1024:.0f} kB>")

    def html(self) -> str:
        """The widget as an HTML fragment (style, static fallback, data and script inlined)."""
        script, css = _assets()
        d = self.data
        static = base64.b64encode(self.static_png).decode()
        word = d["words"][d["state"]["word"]]["t"]
        alt = f"attention of the word \u201c{word}\u201d over the image (static figure)"
        title = f'<div class="vx-title">{html.escape(d["title"])}</div>' if d.get("title") else ""
        return (
            f'<div class="vlmnb-explorer" id="{self.element_id}">'
            f"<style>{css}</style>{title}"
            f'<div class="vx-static"><img src="data:image/png;base64,{static}" alt="{html.escape(alt)}"/>'
            f'<div class="vx-note">Static view of the attention explorer (its interactive version needs '
            f"JavaScript): {html.escape(d['text'])}</div></div>"
            f'<script type="application/json" class="vx-data">{_json_for_script(d)}</script>'
            f"<script>{script}\n(function (s, id) {{ vlmnbExplorer.mount(s && s.parentNode && s.parentNode.id === id "
            f"? s.parentNode : document.getElementById(id)); }})(document.currentScript, {json.dumps(self.element_id)});"
            f"</script></div>"
        )

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.html(), "image/png": base64.b64encode(self.static_png).decode(),
                "text/plain": repr(self)}

    def save(self, path) -> Path:
        """Write a standalone HTML page holding the widget (opens offline in any browser)."""
        path = Path(path)
        title = html.escape(self.data.get("title") or "vlmnb attention explorer")
        path.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/><title>{title}</title>'
                        f"</head><body>{self.html()}</body></html>\n", encoding="utf-8")
        return path


def _static_png(image, geometry, data: dict, masks: dict | None) -> bytes:
    """The default selection as a small PNG (book style), for readers without JavaScript."""
    from matplotlib.figure import Figure

    decoded = decode_data(data)["attention"]
    state = data["state"]
    L = len(data["layers"])
    lo, hi = window_slots(state["layer"], state["window"], L)
    values = np.full(len(geometry.boxes), np.nan)
    values[data["token_index"]] = decoded[lo:hi + 1, state["word"]].mean(axis=0)
    word = data["words"][state["word"]]
    mask = None
    if word["m"] >= 0 and masks:
        mask = _mask_array(masks[data["masks"][word["m"]]["name"]])
    layers = data["layers"]
    span = f"layer {layers[lo]}" if lo == hi else f"layers {layers[lo]}-{layers[hi]}"
    W, H = geometry.image_size
    with plots.style():
        fig = Figure(figsize=(3.4, 3.4 * H / W + 0.45), dpi=100)
        ax = fig.add_axes([0.02, 0.02, 0.96, 0.96 * (3.4 * H / W) / (3.4 * H / W + 0.45)])
        img = image.convert("RGB") if image is not None else np.full((H, W, 3), 200, np.uint8)
        plots.image_heatmap(ax, img, geometry, np.nan_to_num(values, nan=0.0), mask=mask, alpha=0.6)
        ax.set_title(f"\u201c{word['t']}\u201d, {span}", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def explore(source, image, geometry, masks: dict | None = None, *, text: str | None = None, offsets=None,
            layers=None, budget_kb: float | None = 768, layer: int | None = None, window: int | tuple[int, int] = 1,
            word: int | str | None = None,
            title: str = "", display: int = 320) -> Explorer:
    """An interactive attention explorer for one recorded generation (displays in a notebook).

    Args:
        source: a :class:`vlmnb.Generation` generated with
            ``record=vlmnb.Record(fractions=True, image_rows=True)``, or its ``Recording``
            together with ``text=`` and ``offsets=``.
        image: the image that was described (PIL).
        geometry: ``vlm.prepare(image, prompt).geometry``.
        masks: optional object name -> bool mask(s) of the image (e.g. a toy or COCO
            ``Sample.masks``); a word that names the object shows its outline.
        layers: decoder layers to include (default: all recorded, or every k-th of them when
            all would take more than ``budget_kb`` kB of attention data; a warning says so).
        layer, window, word: initial selection; ``window`` is the number of layers to
            average around the slider's layer (0: all layers) or ``(first, last)`` decoder
            layers, e.g. a chapter's middle-layer window.
        title: a caption above the widget.
        display: longest side of the drawn image, in CSS pixels.

    The widget is self-contained HTML (about ``4/3 * L * W * (N + 12)`` bytes of attention data
    for L layers, W words, N image tokens; about 50 kB in all for a toy image); see the module
    docstring for the data format and its error bound.
    """
    data = export_data(source, geometry, text=text, offsets=offsets, masks=masks, layers=layers, budget_kb=budget_kb,
                       image=image, display=display, layer=layer, window=window, word=word, title=title)
    return Explorer(data, _static_png(image, geometry, data, masks),
                    generation=source if hasattr(source, "recording") else None)


class NothingToExplore(ValueError):
    """The generated text has no word whose attention could be shown."""


class Note:
    """A one-line message shown in place of a widget (e.g. a model that wrote no words)."""

    def __init__(self, text: str):
        self.text = text

    def _repr_html_(self) -> str:
        import html

        return f'<p class="vlmnb-note"><em>{html.escape(self.text)}</em></p>'

    def __repr__(self) -> str:
        return self.text


def explore_sample(vlm, sample, prompt: str = "describe the image", max_new_tokens: int = 48,
                   layers: Any = "all", masks: dict | None = None, **kwargs) -> "Explorer | Note":
    """Describe ``sample`` (a :class:`vlmnb.data.Sample` or an image) with attention recorded
    and return its :func:`explore` widget; the generation is kept as ``.generation``.

    ``layers``: which layers to record and show ("all", ``vlmnb.from_layer(l)``, indices).
    ``masks``: object name -> mask, added to (and overriding) the sample's own masks.
    Other keyword arguments go to :func:`explore` (``layer``, ``window``, ``word``, ...).
    """
    image = getattr(sample, "image", sample)
    inp = vlm.prepare(image, prompt=prompt)
    gen = vlm.generate(inp, max_new_tokens=max_new_tokens,
                       record=Record(fractions=True, image_rows=True, layers=layers))
    kwargs.setdefault("title", str(getattr(sample, "image_id", "")))
    all_masks = {**(getattr(sample, "masks", None) or {}), **(masks or {})}
    try:
        return explore(gen, image if hasattr(image, "convert") else inp.image, inp.geometry,
                       masks=all_masks or None, **kwargs)
    except NothingToExplore as err:
        # a chapter run on a model that babbles (e.g. a tiny random one) must still finish
        return Note(f"Nothing to explore for image {kwargs['title']}: {err}.")
