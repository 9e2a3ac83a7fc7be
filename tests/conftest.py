"""Shared fixtures: one CI-profile build of the whole book, a headless browser, a fake chat server.
Plain helpers and constants live in ``support.py``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import CHROMIUM, CHROMIUM_ARGS, FakeServer, book_env, copy_book_sources

# Tiny models run ~10x faster with one thread on shared cores (and results do not depend on it).
import torch  # noqa: E402

torch.set_num_threads(1)

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that needs a tiny model built from a checkpoint's own code (InternVL2's, a fixture
    beside the repository) is skipped where that code is absent -- for that one error only."""
    from vlmnb.engine.remote import RemoteCodeMissing

    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(RemoteCodeMissing) and report.failed:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """Every chapter executed with the ``ci`` profile and the HTML book built, once per session.

    ``VLMNB_BUILT_BOOK=<folder>`` checks a book built there already (``make book`` in that
    folder: its ``_build/html``, ``book/chapters`` and ``runs``) instead of building one."""
    given = os.environ.get("VLMNB_BUILT_BOOK")
    if given:
        root = Path(given).resolve()
        if not (root / "_build" / "html" / "index.html").is_file():
            pytest.fail(f"VLMNB_BUILT_BOOK={given} holds no built book (_build/html/index.html)")
        return root
    root = copy_book_sources(tmp_path_factory.mktemp("book"))
    done = subprocess.run([sys.executable, "-m", "vlmnb", "book", "--profile", "ci"], cwd=root,
                          env=book_env(root), capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("building the book failed:\n" + done.stdout[-4000:] + done.stderr[-4000:])
    return root


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def serve():
    """``serve((status, body, headers), ...)`` starts a :class:`FakeServer`; all are closed after the test."""
    servers = []

    def start(*replies):
        s = FakeServer(replies)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


