"""User-facing errors that read as one line in a notebook.

IPython calls an exception's ``_render_traceback_`` instead of printing the traceback, so a
chapter whose model cannot be loaded shows one clear line (what is wrong and what to do),
not a wall of library frames. The exceptions stay ordinary Python exceptions elsewhere.
"""
from __future__ import annotations


class OneLineError:
    """Mixin: render as ``ExceptionName: message`` in IPython/Jupyter."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class MissingExtra(OneLineError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""
