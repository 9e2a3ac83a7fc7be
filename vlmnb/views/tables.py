"""Tables as the book shows them: numbers at a sensible precision, wide tables in a scroll box.

pandas' ``Styler`` prints every float with six decimals (``0.034000``) and a wide table runs
off the page's content column. :func:`show` formats each numeric column with the decimals its
values need (three significant digits, at most three decimals, none for whole numbers), hides
a plain 0..n-1 index and wraps the table in a box that scrolls sideways, with a hint above it
that shows when the box scrolls: a small script sets it as the page is drawn; where no script
runs, the hint shows when the table cannot be drawn as narrow as the page (its numbers, row
labels and longest words side by side, :meth:`Table.width_chars`). Chapters end a cell with
``tables.show(frame)`` instead of ``frame.style...``.
"""
from __future__ import annotations

import hashlib
import math
from typing import Mapping

import numpy as np
import pandas as pd

__all__ = ["show", "Table", "column_decimals", "format_number", "SCROLL_CLASS", "HINT_CLASS", "WIDE_CHARS"]

#: CSS classes of the scroll box and of the hint above a wide table (the browser test looks for them)
SCROLL_CLASS = "vlmnb-table-scroll"
HINT_CLASS = "vlmnb-table-hint"
#: narrowest width (in characters, cell padding included) above which a table gets the hint
#: where no script runs; the book's content column holds about 90 characters of table text
WIDE_CHARS = 90
#: where scripts run (the built book, a trusted notebook), the hint follows the table as drawn:
#: shown exactly when the scroll box really scrolls, on load, when fonts arrive and whenever the
#: box or the table changes size
_FIT_SCRIPT = ("<script>(function () { var s = document.currentScript; if (!s) return;"
               " var w = s.parentElement, b = w.querySelector('." + SCROLL_CLASS + "'),"
               " h = w.querySelector('." + HINT_CLASS + "'); if (!b || !h) return;"
               " function fit() { h.hidden = !(b.scrollWidth > b.clientWidth + 1); }"
               " fit(); window.addEventListener('load', fit); window.addEventListener('resize', fit);"
               " if (window.ResizeObserver) { var o = new ResizeObserver(fit); o.observe(b);"
               " o.observe(b.querySelector('table') || b); }"
               " if (document.fonts) { document.fonts.ready.then(fit); } })();</script>")
MAX_DECIMALS = 3
MISSING = "–"


def column_decimals(values, digits: int = 3, max_decimals: int = MAX_DECIMALS) -> int:
    """Decimals that show a numeric column's typical value with ``digits`` significant digits:
    none for whole numbers, at most ``max_decimals``. The typical value is the median magnitude
    of the column's finite non-zero values (one outlier does not set the precision)."""
    arr = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or np.all(arr == np.round(arr)):
        return 0
    nonzero = np.abs(arr[arr != 0])
    magnitude = math.floor(math.log10(float(np.median(nonzero))))
    return int(min(max(digits - 1 - magnitude, 0), max_decimals))


def format_number(value, decimals: int) -> str:
    """``value`` with ``decimals`` decimals; missing values as a dash, booleans and text as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return MISSING
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if number != 0 and abs(number) < 0.5 * 10 ** -decimals:  # would read as 0: show its size instead
        return f"{number:.1e}"
    text = f"{number:,.{decimals}f}" if abs(number) >= 10_000 else f"{number:.{decimals}f}"
    return "0" if decimals == 0 and text in ("-0", "0") else text


def _numbers(column: pd.Series) -> list | None:
    """The numbers of a column to format: all of a numeric column, the floats of a column that
    mixes them with text (such as "0.949 (0.498)" beside 0.996); None when there are none."""
    if pd.api.types.is_bool_dtype(column):
        return None
    if pd.api.types.is_numeric_dtype(column):
        return list(column)
    floats = [v for v in column if isinstance(v, (float, np.floating)) and not isinstance(v, bool)]
    return floats or None


def _longest_word(text) -> int:
    return max((len(word) for word in str(text).split()), default=0)


class Table:
    """A formatted table: ``frame`` holds the values, :attr:`text` the formatted cells; shown as
    HTML in a notebook (``_repr_html_``) and as plain text elsewhere."""

    def __init__(self, frame: pd.DataFrame, index: bool, decimals: Mapping, caption: str | None = None):
        self.frame, self.index, self.caption = frame, index, caption
        self.decimals = dict(decimals)
        self.text = pd.DataFrame({col: [format_number(v, self.decimals[col]) if col in self.decimals else
                                        (MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
                                        for v in frame[col]] for col in frame.columns},
                                 index=frame.index)
        self.text.columns = frame.columns

    def width_chars(self) -> int:
        """The narrowest the table can be drawn, in characters: text wraps between words, numbers
        and row labels do not; a column label over several columns is shared by them; three
        characters of padding per cell."""
        pad = 3
        columns = list(self.text.columns)
        spans: dict = {}
        for col in columns:  # how many columns share each upper-level label
            for level, part in enumerate(col[:-1] if isinstance(col, tuple) else ()):
                spans[(level, part)] = spans.get((level, part), 0) + 1
        total = 0
        for col in columns:
            parts = col if isinstance(col, tuple) else (col,)
            label = max([_longest_word(parts[-1])] + [-(-_longest_word(p) // spans[(level, p)]) for level, p in
                                                      enumerate(parts[:-1])])
            total += max([label] + [_longest_word(cell) for cell in self.text[col]]) + pad
        if self.index:
            levels = [self.frame.index.get_level_values(i) for i in range(self.frame.index.nlevels)]
            total += sum(max((len(str(v)) for v in values), default=0) + pad for values in levels)
        return total

    @property
    def wide(self) -> bool:
        """True when the table is expected not to fit the book's content column."""
        return self.width_chars() > WIDE_CHARS

    def _styler(self):
        style = self.frame.style.format({c: (lambda v, d=d: format_number(v, d)) for c, d in self.decimals.items()},
                                        na_rep=MISSING)
        digest = hashlib.sha1(pd.util.hash_pandas_object(self.text.reset_index(drop=True), index=False)
                              .to_numpy().tobytes()).hexdigest()[:8]
        style = style.set_uuid(digest)  # the same table gives the same HTML on every run
        # the book theme's table look (borders, padding, zebra rows), as for a DataFrame's own HTML
        style = style.set_table_attributes('class="dataframe"')
        if not self.index:
            style = style.hide(axis="index")
        else:
            heading = "white-space: nowrap; text-align: left;"
            if self.wide:  # the row labels stay in view while the table scrolls sideways
                heading += " position: sticky; left: 0; z-index: 1; background: var(--pst-color-background, #fff);"
            style = style.set_table_styles([{"selector": "th.row_heading", "props": heading}])
        if self.caption:
            style = style.set_caption(self.caption)
        return style

    def _repr_html_(self) -> str:
        hint = (f'<p class="{HINT_CLASS}" style="font-size:0.8em;color:#555;margin:0 0 0.3em"'
                f'{"" if self.wide else " hidden"}>'
                "&#8596; This table is wider than the page: scroll it sideways to see every column.</p>")
        return (f'<div class="vlmnb-table">{hint}<div class="{SCROLL_CLASS}" style="overflow-x:auto;max-width:100%">'
                f"{self._styler().to_html()}</div>{_FIT_SCRIPT}</div>")

    def __repr__(self) -> str:
        return self.text.to_string(index=self.index)


def show(frame: pd.DataFrame | pd.Series, *, index: bool | None = None, decimals: int | Mapping | None = None,
         digits: int = 3, caption: str | None = None) -> Table:
    """``frame`` as the book shows a table (see the module docstring).

    ``index``: show the index (default: unless it is a plain 0..n-1 range). ``decimals``: one
    number for every numeric column, or {column: decimals}; the other numeric columns get
    :func:`column_decimals` (``digits`` significant digits, at most three decimals). Floats in a
    column of text are formatted the same way; the text is shown as it is."""
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"show() takes a DataFrame or Series, got {type(frame).__name__}")
    if index is None:
        index = not (isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1)
    chosen: dict = {}
    for col in frame.columns:
        numbers = _numbers(frame[col])
        if numbers is None:
            continue
        if isinstance(decimals, Mapping) and col in decimals:
            chosen[col] = int(decimals[col])
        elif isinstance(decimals, (int, np.integer)) and not isinstance(decimals, bool):
            chosen[col] = int(decimals)
        else:
            chosen[col] = column_decimals(numbers, digits)
    return Table(frame, bool(index), chosen, caption)

