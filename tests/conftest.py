"""Shared fixtures: the repository root, one CI-profile build of the whole book, a headless browser."""
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


# The browser checks use Debian's Chromium through Playwright (never a browser downloaded by a test
# tool): skipped where it is absent, except in CI (CI=true), where its absence is a failure.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def need_chromium() -> None:
    """Skip the calling test module where Chromium is absent (fail in CI)."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI needs Debian's chromium for the browser tests (.ci/run installs it)")
        pytest.skip("chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
