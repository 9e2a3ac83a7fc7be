"""Progress bars: one choice for the whole package.

Plain text bars (``tqdm.std``) everywhere: they work in a terminal and in a notebook.
``tqdm.auto`` would pick a widget bar that needs ipywidgets and, without it, prints a
``TqdmWarning`` naming a local site-packages path into every chapter.

``VLMNB_PROGRESS=0`` turns every bar off. The book runner sets it for the chapters it executes:
a page is read after the run, when a bar's last state ("100%|####| 40/40 [01:40, 2.50s/it]")
says nothing the page does not.
"""
from __future__ import annotations

import os

from tqdm.std import tqdm

__all__ = ["progress_bar", "ENV", "enabled"]

#: the environment variable that turns the package's progress bars off ("0", "false", "off", "no")
ENV = "VLMNB_PROGRESS"


def enabled() -> bool:
    """Whether progress bars are drawn (not turned off through :data:`ENV`)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def progress_bar(*args, **kwargs) -> tqdm:
    """A plain-text ``tqdm`` bar (same arguments), disabled when :data:`ENV` turns bars off."""
    if not enabled():
        kwargs["disable"] = True
    return tqdm(*args, **kwargs)
