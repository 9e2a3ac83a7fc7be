"""The built book in a real browser: pages load offline, figures show, maths is typeset.

Uses Debian's Chromium through Playwright (never a browser downloaded by a test tool). Skipped
where Chromium is absent, except in CI (CI=true), where its absence is a failure.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from support import ARTIFACTS, need_chromium

need_chromium()

pytestmark = pytest.mark.browser


def _chapter_pages(root: Path) -> list[Path]:
    html = root / "_build" / "html"
    pages = sorted((html / "book" / "chapters").glob("*.html"))
    return [html / "book" / "intro.html", *pages]


def _visit(browser, page_path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, remote = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(("file://", "data:", "blob:")) else None)
    page.goto(page_path.as_uri(), wait_until="load")
    # MathJax typesets asynchronously; wait until it reports it is done (if the page has it).
    page.wait_for_function("() => !window.MathJax || (MathJax.startup && MathJax.startup.promise && true)")
    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
    return page, errors, remote


def test_every_chapter_loads_offline_with_figures_and_typeset_maths(built_book, browser):
    pages = _chapter_pages(built_book)
    assert len(pages) >= 2, "the book has no executed chapter"
    typeset_pages = 0
    for path in pages:
        page, errors, remote = _visit(browser, path)
        assert page.title(), f"{path.name} has no title"
        assert not errors, f"console errors on {path.name}: {errors}"
        assert not remote, f"{path.name} requested the network: {remote[:3]}"
        text = page.inner_text("article")
        assert "\\(" not in text and "$$" not in text, f"raw maths left on {path.name}"
        typeset_pages += page.locator("mjx-container").count() > 0
        if "chapters" in path.parts:
            sizes = page.eval_on_selector_all(
                "article img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
            assert sizes, f"{path.name} shows no figure"
            assert all(done and width > 0 for done, width in sizes), f"broken figure on {path.name}: {sizes}"
        page.close()
    assert typeset_pages >= 1, "no page of the book has typeset maths"


def test_screenshot_of_a_chapter(built_book, browser):
    chapter = _chapter_pages(built_book)[1]
    page, errors, _ = _visit(browser, chapter)
    page.locator("article img").first.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "book_chapter.png"
    page.screenshot(path=str(shot), full_page=False)
    page.close()
    assert shot.stat().st_size > 20_000  # a rendered page with a figure, not a blank one
