"""Helpers the tests share that are not fixtures: paths, the environment of a notebook
subprocess, the book's sources, a hub-layout cache, the browser's location and a fake
OpenAI-compatible server.
Tests import them with ``from support import ...`` (the tests folder is on ``sys.path``)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


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


# The browser checks use Debian's Chromium through Playwright (never a browser downloaded by a test
# tool): skipped where it is absent, except in CI (CI=true), where its absence is a failure.
def add_hub_snapshot(hub: Path, repo_id: str, commit: str, folder: Path, main: bool = False) -> Path:
    """Put ``folder``'s files into the hub cache ``hub`` as the hub client does: blobs named by
    their hash, ``snapshots/<commit>/<file>`` symlinks to them (and ``refs/main`` -> ``commit``
    when ``main``). Returns the snapshot folder."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snap


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def need_chromium() -> None:
    """Skip the calling test module where Chromium is absent (fail in CI)."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI needs Debian's chromium for the browser tests (.ci/run installs it)")
        pytest.skip("chromium is not installed", allow_module_level=True)


class FakeServer:
    """A real OpenAI-compatible chat server on 127.0.0.1 that serves scripted replies (status, body, headers) in order; the last one repeats."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "raw": body.decode(), "json": json.loads(body)})
                idx = min(len(server.requests) - 1, len(server.replies) - 1)
                status, payload, headers = server.replies[idx]
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def screenshot_page(browser, page_path: Path, out: Path, width: int = 1280) -> Path:
    """A full-page screenshot of a built page (opened from its file), once its images and maths
    are done; used for the test artifacts and for before/after comparisons of the book."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(Path(page_path).as_uri(), wait_until="load")
    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    page.close()
    return out
