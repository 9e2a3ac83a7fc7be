"""Where vlmnb keeps its caches: inside the work tree, never in the home folder."""
from __future__ import annotations

import os
from pathlib import Path


def work_tree_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the current one) holding ``.git`` or
    ``pyproject.toml``; the current folder where there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").exists():
            return folder
    return here


def cache_dir() -> Path:
    """``$VLMNB_CACHE_DIR`` if set, else ``<work tree>/.cache/vlmnb``: downloads, judge cache."""
    env = os.environ.get("VLMNB_CACHE_DIR")
    return Path(env) if env else work_tree_root() / ".cache" / "vlmnb"
