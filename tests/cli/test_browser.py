"""The built book in a real browser: pages load offline, figures show, maths is typeset; the
executed chapters carry no noise of the run (local paths, warnings, progress bars), their tables
show sensible numbers and fit the page or scroll with a hint, and their download links serve the
chapter's result store and figure numbers.

Uses Debian's Chromium through Playwright (never a browser downloaded by a test tool). Skipped
where Chromium is absent, except in CI (CI=true), where its absence is a failure.
"""
from __future__ import annotations

import functools
import io
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from support import ARTIFACTS, need_chromium, screenshot_page

need_chromium()

from vlmnb.data.store import ResultStore  # noqa: E402
from vlmnb.views import figure_data, tables  # noqa: E402
from vlmnb.views.downloads import CLAIMS_FILE, LINK_CLASS  # noqa: E402

pytestmark = pytest.mark.browser

#: noise of the run that a page must not show (pattern, what it is)
NOISE = [
    (re.compile(r"site-packages|/work/|/home/|/tmp/|/Users/|[A-Z]:\\"), "a local path"),
    (re.compile(r"\b\w*Warning\b|Warning:"), "a warning"),
    (re.compile(r"\r|\d\s*it/s|s/it\b|%\|"), "progress-bar residue"),
    (re.compile(r"Loading (weights|checkpoint shards)"), "a model-loading bar"),
]
#: a number printed with more decimals than the book's tables use (0.034000)
LONG_DECIMALS = re.compile(r"\d\.\d{4,}")
SCREENSHOT_CHAPTERS = ["02_knockout", "05_reprompting"]


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


def _executed_chapters(root: Path) -> list[Path]:
    return [p for p in _chapter_pages(root) if "chapters" in p.parts]


def page_noise(page) -> list[str]:
    """What the page's article shows of the run's machinery: local paths in any text, warnings
    and progress bars in the cells' outputs."""
    found = []
    article = page.inner_text("article")
    outputs = "\n".join(page.eval_on_selector_all(".cell_output", "els => els.map(e => e.innerText)"))
    for pattern, what in NOISE:
        text = article if what == "a local path" else outputs
        for m in pattern.finditer(text):
            found.append(f"{what}: ...{text[max(0, m.start() - 60):m.end() + 40]!r}...")
            break
    return found


# For each table: the nearest scroll box around it (overflow-x auto/scroll) inside the article,
# whether the table is wider than the box it sits in, and whether a hint says so.
TABLE_LAYOUT_JS = """article => {
  const limit = article.getBoundingClientRect();
  return Array.from(article.querySelectorAll('table')).map((table, i) => {
    let box = table.parentElement, scroller = null;
    while (box && box !== article) {
      const o = getComputedStyle(box).overflowX;
      if (o === 'auto' || o === 'scroll') { scroller = box; break; }
      box = box.parentElement;
    }
    const rect = table.getBoundingClientRect();
    const wrapper = table.closest('.vlmnb-table');
    const hint = wrapper && wrapper.querySelector('.%s');
    return {index: i, text: table.innerText.slice(0, 60), right: rect.right, limit: limit.right,
            scroller: scroller ? scroller.getBoundingClientRect().right : null,
            scrolls: scroller ? scroller.scrollWidth > scroller.clientWidth + 1 : false,
            hint: !!hint && hint.offsetParent !== null && hint.innerText.includes('scroll')};
  });
}""" % tables.HINT_CLASS


def table_problems(page) -> list[str]:
    """Tables wider than the page's content column without a scroll box, scroll boxes without a
    visible hint (or a hint on a table that fits), and numbers with more than three decimals."""
    problems = []
    for t in page.eval_on_selector("article", TABLE_LAYOUT_JS):
        if t["scroller"] is None and t["right"] > t["limit"] + 1:
            problems.append(f"table {t['index']} ({t['text']!r}) runs {t['right'] - t['limit']:.0f} px past the page")
        elif t["scroller"] is not None and t["scroller"] > t["limit"] + 1:
            problems.append(f"table {t['index']} ({t['text']!r}): its scroll box is wider than the page")
        elif t["scrolls"] and not t["hint"]:
            problems.append(f"table {t['index']} ({t['text']!r}) scrolls sideways without a visible hint")
        elif t["hint"] and not t["scrolls"]:
            problems.append(f"table {t['index']} ({t['text']!r}) fits the page but its hint says to scroll")
    for text in page.eval_on_selector_all("article table", "ts => ts.map(t => t.innerText)"):
        m = LONG_DECIMALS.search(text)
        if m:
            problems.append(f"a table shows {m.group(0)}... (more than three decimals)")
    return problems


def notebook_noise(path: Path) -> list[str]:
    """The same noise in an executed notebook's outputs, and carriage returns (a browser turns
    them into line breaks, so only the notebook shows them)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    texts = [str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
             for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    found = [f"a carriage return in {t[:80]!r}" for t in texts if "\r" in t][:1]
    for pattern, what in NOISE:
        hits = [m.group(0) for t in texts for m in [pattern.search(t)] if m]
        if hits:
            found.append(f"{what}: {hits[0]!r}")
    return found


def test_executed_chapters_show_no_noise_and_readable_tables(built_book, browser):
    pages = _executed_chapters(built_book)
    assert len(pages) >= 6, [p.name for p in pages]
    problems = {}
    for path in pages:
        page, _, _ = _visit(browser, path)
        found = page_noise(page) + table_problems(page)
        found += notebook_noise(built_book / "book" / "chapters" / f"{path.stem}.ipynb")
        if found:
            problems[path.name] = found
        page.close()
    assert not problems, problems


def test_the_checks_see_noise_and_overflowing_tables(browser, tmp_path):
    """The page checks above, on a page that has each problem once (so they can fail)."""
    wide = "<table>" + "<tr>" + "".join(f"<td>column_{i}_0.034000</td>" for i in range(40)) + "</tr></table>"
    html = (f"<html><body><article style='width:600px'><div class='cell_output'>"
            f"<pre>Loading weights: 100%|###| 134/134 [00:00, 21562.89it/s]\n"
            f"/home/me/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found</pre>"
            f"</div>{wide}</article></body></html>")
    (tmp_path / "noisy.html").write_text(html)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((tmp_path / "noisy.html").as_uri())
    kinds = {line.split(":")[0] for line in page_noise(page)}
    assert kinds == {"a local path", "a warning", "progress-bar residue", "a model-loading bar"}, page_noise(page)
    problems = table_problems(page)
    assert any("past the page" in p for p in problems) and any("0.0340" in p for p in problems), problems
    # the same table in the book's scroll box, with and without its hint
    frame = pd.DataFrame([[f"column {i}" for i in range(40)]])
    (tmp_path / "boxed.html").write_text(f"<html><body><article style='width:600px'>"
                                          f"{tables.show(frame)._repr_html_()}</article></body></html>")
    page.goto((tmp_path / "boxed.html").as_uri())
    assert table_problems(page) == []
    frames = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
    page.evaluate("document.querySelector('article').style.width = '6000px'")  # now the table fits
    page.evaluate(frames)
    assert table_problems(page) == []  # the table's script hid the hint
    page.evaluate(f"document.querySelector('.{tables.HINT_CLASS}').hidden = false")
    assert any("fits the page" in p for p in table_problems(page))
    page.evaluate(f"document.querySelector('.{tables.HINT_CLASS}').hidden = true")
    page.evaluate("document.querySelector('article').style.width = '600px'")
    page.evaluate(frames)
    assert table_problems(page) == []  # scrolls again, and the script showed the hint
    page.evaluate(f"document.querySelector('.{tables.HINT_CLASS}').remove()")
    assert any("without a visible hint" in p for p in table_problems(page))
    page.close()
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("run()")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text="describing:  50%|#  | 1/2\r")]
    nbformat.write(nb, tmp_path / "noisy.ipynb")
    found = notebook_noise(tmp_path / "noisy.ipynb")
    assert found[0].startswith("a carriage return") and any(f.startswith("progress-bar residue") for f in found)


@pytest.fixture(scope="module")
def site(built_book):
    """The built HTML book served over HTTP on 127.0.0.1 (downloads are fetched as a reader would)."""
    handler = functools.partial(_QuietHandler, directory=str(built_book / "_build" / "html"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_every_chapter_links_its_results_for_download(built_book, browser, site):
    html = built_book / "_build" / "html"
    for path in _executed_chapters(built_book):
        chapter = path.stem
        page = browser.new_page()
        page.goto(f"{site}/{path.relative_to(html).as_posix()}", wait_until="load")
        links = page.eval_on_selector_all(f"a.{LINK_CLASS}", "as => as.map(a => a.href)")
        assert links, f"{chapter} links no downloads"
        names = [link.rsplit("/", 1)[1] for link in links]
        assert any(n.endswith(".csv") for n in names), f"{chapter} offers no figure numbers: {names}"
        stores = sorted(p for p in (built_book / "runs" / chapter).glob("*") if (p / "meta.json").is_file()) \
            if (built_book / "runs" / chapter).is_dir() else []
        linked = {n[:-len(".parquet")] for n in names if n.endswith(".parquet")}
        # every linked Parquet file is one of the chapter's stores (a folder built with other
        # parameters before keeps their stores too), and a chapter with a store links one
        assert linked <= {s.name for s in stores} and (bool(linked) == bool(stores)), \
            f"{chapter}: the Parquet downloads {sorted(linked)} are not its result stores {[s.name for s in stores]}"
        for link, name in zip(links, names):
            reply = page.request.get(link)
            assert reply.ok, f"{chapter}: {link} answers {reply.status}"
            body = io.BytesIO(reply.body())
            if name.endswith(".parquet"):
                frame = pd.read_parquet(body)
                stored = ResultStore.open(built_book / "runs" / chapter / name[:-len(".parquet")]).frame()
                assert len(frame) == len(stored) > 0 and list(frame.columns) == list(stored.columns), name
            elif name == CLAIMS_FILE:  # the claims table, per model (the first page's findings read it)
                frame = pd.read_csv(body)
                assert list(frame.columns[:2]) == ["claim", "paper"] and len(frame) > 0, (chapter, name)
                assert any(c.endswith(": held") for c in frame.columns), (chapter, list(frame.columns))
            else:
                assert name.endswith(".csv"), name
                frame = pd.read_csv(body)
                figure = name[:-len(".csv")].split("-")[0]
                assert tuple(frame.columns) == figure_data.COLUMNS[figure] and len(frame) > 0, (chapter, name)
        page.close()


def test_screenshots_of_the_knockout_and_reprompting_chapters(built_book, browser):
    """Full-page screenshots (artifacts/screenshots/after/) of the pages with the most figures and
    the widest table, to look at."""
    folder = ARTIFACTS / "screenshots" / "after"
    by_name = {p.stem: p for p in _executed_chapters(built_book)}
    for chapter in SCREENSHOT_CHAPTERS:
        shot = screenshot_page(browser, by_name[chapter], folder / f"{chapter}.png")
        assert shot.stat().st_size > 100_000  # a long page with figures, not a blank one


def test_screenshot_of_a_chapter(built_book, browser):
    chapter = _chapter_pages(built_book)[1]
    page, errors, _ = _visit(browser, chapter)
    page.locator("article img").first.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "book_chapter.png"
    page.screenshot(path=str(shot), full_page=False)
    page.close()
    assert shot.stat().st_size > 20_000  # a rendered page with a figure, not a blank one
