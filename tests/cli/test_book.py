"""The papermill runner: parameter handling, skipping unchanged chapters, clear errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vlmnb.cli import book
from support import book_env


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def mini_book(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: book/chapters/a_first\n  - file: book/chapters/b_second\n")
    _notebook(tmp_path / "notebooks" / "a_first.ipynb", "n_images = 3\nscale = 1.5\nmodel = 'toy'",
              "print('total', n_images * scale)\n"
              "from tqdm import tqdm\n"
              "for _ in tqdm(range(50), desc='working', mininterval=0, ascii=True): pass")
    _notebook(tmp_path / "notebooks" / "b_second.ipynb", "n_images = 2", "assert n_images < 10, 'too many'")
    (tmp_path / "notebooks" / "profiles.yml").write_text("ci:\n  all:\n    n_images: 1\n")
    return tmp_path


def _cli(root: Path, *args: str):
    return subprocess.run([sys.executable, "-m", "vlmnb", "book", *args], cwd=root,
                          env=book_env(root), capture_output=True, text=True)


def test_parse_overrides_types():
    assert book.parse_overrides("a=1 b=two c=[1,2] d=0.5 e=true") == \
        {"a": 1, "b": "two", "c": [1, 2], "d": 0.5, "e": True}
    with pytest.raises(book.BookError, match="expected name=value"):
        book.parse_overrides("novalue")


def test_check_parameters_rejects_wrong_type_and_unknown_name(mini_book):
    chapter = book.chapters(mini_book)[0]
    assert book.check_parameters(chapter, {"n_images": 5, "scale": 2}) == {"n_images": 5, "scale": 2}
    with pytest.raises(book.BookError, match="'n_images' must be int"):
        book.check_parameters(chapter, {"n_images": "many"})
    with pytest.raises(book.BookError, match="unknown parameter 'n_imgs'"):
        book.check_parameters(chapter, {"n_imgs": 5})
    # parameters meant for every chapter are dropped where a chapter does not have them
    assert book.check_parameters(chapter, {"other": 1}, strict=False) == {}


def test_runs_then_skips_unchanged_and_reruns_on_new_parameters(mini_book):
    first = _cli(mini_book, "--no-build", "--profile", "ci")
    assert first.returncode == 0, first.stderr
    out = nbformat.read(mini_book / "book" / "chapters" / "a_first.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "total 1.5" in printed  # the ci profile's n_images=1 reached the notebook
    # the progress bar is kept as its final state only, not its 50 updates
    bars = [line for line in printed.splitlines() if line.startswith("working")]
    assert len(bars) == 1 and "50/50" in bars[0] and "\r" not in printed, printed[-300:]
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "hide-input" in injected[0].metadata["tags"]

    again = _cli(mini_book, "--no-build", "--profile", "ci")
    assert again.stdout.count("up to date, skipped") == 2

    changed = _cli(mini_book, "a_first", "--no-build", "-p", "n_images", "4")
    assert "a_first: executing" in changed.stdout and "skipped" not in changed.stdout


def test_settled_streams_show_what_a_terminal_shows():
    assert book.settle_stream("a\rb\rc\nnext\r\n") == "c\nnext\n"
    assert book.settle_stream("plain\ntext") == "plain\ntext"
    outs = [{"output_type": "stream", "name": "stderr", "text": "bar 1%\r"},
            {"output_type": "stream", "name": "stderr", "text": "bar 100%\n"},
            {"output_type": "stream", "name": "stdout", "text": "done\n"},
            {"output_type": "display_data", "data": {}, "metadata": {}}]
    settled = book.settle_outputs(outs)
    assert [o.get("text") for o in settled] == ["bar 100%\n", "done\n", None]


def test_unknown_notebook_is_one_clear_line(mini_book):
    done = _cli(mini_book, "c_missing", "--no-build")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown notebook 'c_missing'" in lines[0] and "a_first" in lines[0]


def test_bad_parameter_type_fails_before_running(mini_book):
    done = _cli(mini_book, "--no-build", "-p", "n_images", "many")
    assert done.returncode == 2
    assert "must be int" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (mini_book / "book" / "chapters").exists()  # nothing ran


def test_parameter_no_chapter_knows(mini_book):
    done = _cli(mini_book, "--no-build", "-p", "n_imgs", "3")
    assert done.returncode == 2 and "'n_imgs' is not a parameter" in done.stderr


def test_missing_kernel_is_named(mini_book):
    done = _cli(mini_book, "a_first", "--no-build", "--kernel", "no-such-kernel")
    assert done.returncode == 2
    assert "no Jupyter kernel named 'no-such-kernel'" in done.stderr


def test_failing_cell_names_notebook_and_cell(mini_book):
    done = _cli(mini_book, "b_second", "--no-build", "-p", "n_images", "20")
    assert done.returncode == 2
    assert "notebooks/b_second.ipynb failed in cell" in done.stderr and "AssertionError: too many" in done.stderr
    assert not (mini_book / "book" / "chapters" / "b_second.ipynb").exists()  # no half-executed chapter
