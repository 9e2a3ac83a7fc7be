"""Shared fixtures: the repository root and one CI-profile build of the whole book."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"

# Tiny models run ~10x faster with one thread on shared cores (and results do not depend on it).
import torch  # noqa: E402

torch.set_num_threads(1)

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def book_env(tmp: Path) -> dict:
    """Environment for a subprocess that executes notebooks: state stays in ``tmp``."""
    env = dict(os.environ)
    for var, sub in [("JUPYTER_DATA_DIR", "jupyter"), ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
                     ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("IPYTHONDIR", "ipython"),
                     ("MPLCONFIGDIR", "matplotlib")]:
        env.setdefault(var, str(tmp / ".state" / sub))
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("VLMNB_PARAMS", None)
    return env


def copy_book_sources(dest: Path) -> Path:
    """Copy what the book is built from (not the package: the installed one is used)."""
    for name in ["_config.yml", "_toc.yml"]:
        shutil.copy(ROOT / name, dest / name)
    for folder in ["book", "notebooks"]:
        shutil.copytree(ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("chapters", "*.partial.ipynb", ".ipynb_checkpoints"))
    # pages include files that live in the package (the judge's prompt): link it, do not copy
    (dest / "vlmnb").symlink_to(ROOT / "vlmnb", target_is_directory=True)
    return dest


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """Every chapter executed with the ``ci`` profile and the HTML book built, once per session."""
    root = copy_book_sources(tmp_path_factory.mktemp("book"))
    done = subprocess.run([sys.executable, "-m", "vlmnb", "book", "--profile", "ci"], cwd=root,
                          env=book_env(root), capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("building the book failed:\n" + done.stdout[-4000:] + done.stderr[-4000:])
    return root
