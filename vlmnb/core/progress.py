"""Progress bars: one choice for the whole package.

Plain text bars (``tqdm.std``) everywhere: they work in a terminal, in a notebook and in the
book's executed chapters (whose runner keeps each bar's final state). ``tqdm.auto`` would pick a
widget bar that needs ipywidgets and, without it, prints a ``TqdmWarning`` naming a local
site-packages path into every chapter.
"""
from __future__ import annotations

from tqdm.std import tqdm as progress_bar

__all__ = ["progress_bar"]
