"""The papermill runner: parameter handling, skipping unchanged chapters, clear errors."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vlmnb.cli import book
from support import book_env, copy_book_sources


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
    _notebook(tmp_path / "notebooks" / "a_first.ipynb",
              "from typing import Literal\n\nn_images = 3\nscale = 1.5\nmodel = 'toy'\n"
              "prompt: str = 'describe'\nwindow: Literal['auto'] | list[int] = 'auto'  # 'auto' or [first, last]",
              "print('total', n_images * scale)\n"
              "print('got', repr(prompt), repr(window))\n"
              "from tqdm import tqdm\n"
              "for _ in tqdm(range(50), desc='working', mininterval=0, ascii=True): pass")
    _notebook(tmp_path / "notebooks" / "b_second.ipynb", "n_images = 2", "assert n_images < 10, 'too many'")
    (tmp_path / "notebooks" / "profiles.yml").write_text("ci:\n  all:\n    n_images: 1\n")
    return tmp_path


def _cli(root: Path, *args: str, entry=("vlmnb", "book"), params: str | None = None, env: dict | None = None):
    env = {**book_env(root), **(env or {})}
    if params is not None:
        env["VLMNB_PARAMS"] = params
    return subprocess.run([sys.executable, "-m", *entry, *args], cwd=root,
                          env=env, capture_output=True, text=True)


def _runner(root: Path, *args: str, params: str | None = None):
    """The book runner module itself (what ``python -m vlmnb book`` hands its arguments to)."""
    return _cli(root, *args, entry=("vlmnb.cli.book",), params=params)


def _printed(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def assert_one_line_error(done, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_parse_overrides_splits_like_a_shell():
    T = book.Text
    got = book.parse_overrides("""a=1 b=two prompt="describe the image" c=[1,2] w='[4, 20]' e=""")
    assert got == {"a": T("1", "VLMNB_PARAMS"), "b": T("two", "VLMNB_PARAMS"),
                   "prompt": T("describe the image", "VLMNB_PARAMS"), "c": T("[1,2]", "VLMNB_PARAMS"),
                   "w": T("[4, 20]", "VLMNB_PARAMS"), "e": T("", "VLMNB_PARAMS")}
    with pytest.raises(book.BookError, match="expected name=value"):
        book.parse_overrides("novalue")
    with pytest.raises(book.BookError, match="bad parameter '20]'"):
        book.parse_overrides("window=[4, 20]")  # unquoted space: the runner says how to quote it
    with pytest.raises(book.BookError, match="cannot split"):
        book.parse_overrides('prompt="unclosed')


@pytest.mark.parametrize("annotation, text, expected", [
    ('Literal["auto"] | list[int]', "[4, 20]", [4, 20]),
    ('Literal["auto"] | list[int]', "[4,20]", [4, 20]),
    ('Literal["auto"] | list[int]', "(4, 20)", [4, 20]),       # a tuple reaches papermill as a list
    ('Literal["auto"] | list[int]', "auto", "auto"),
    ('Literal["auto"] | int', "5", 5),
    ("tuple[int, int]", "(4, 20)", [4, 20]),
    ("tuple[float, ...]", "[1, 0.5]", [1.0, 0.5]),
    ("list[float]", "[0.02, 0.1]", [0.02, 0.1]),
    ("list[str]", "[a, b c]", ["a", "b c"]),
    ("str", "describe the image", "describe the image"),
    ("str", "yes", "yes"),            # YAML would make it True: the declared type keeps the text
    ("str", "1.5", "1.5"),
    ("str", "[4, 20]", "[4, 20]"),
    ("str", "'quoted'", "quoted"),
    ("str", "", ""),
    ("str | None", "None", None),
    ("str | None", "null", None),
    ("Optional[str]", "main", "main"),
    ("str | None", "1111111111111111111111111111111111111111", "1111111111111111111111111111111111111111"),
    ("int", "24", 24),
    ("float", "2", 2.0),
    ("float", "1e-3", 0.001),
    ("bool", "true", True),
    ("bool", "False", False),
])
def test_text_is_read_with_the_declared_type(annotation, text, expected):
    import ast

    kind = book.parse_type(ast.parse(annotation, mode="eval").body)
    got = book.read_text(text, kind)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("annotation, text", [
    ('Literal["auto"] | list[int]', "4 20"),
    ('Literal["auto"] | list[int]', "[4, 20"),
    ('Literal["auto"] | list[int]', "[4.5, 20]"),
    ('Literal["auto"] | list[int]', "Auto"),
    ("tuple[int, int]", "[1, 2, 3]"),
    ("int", "many"),
    ("int", "2.5"),
    ("int", "true"),
    ("bool", "maybe"),
    ('Literal["bfloat16", "float16", "float32", "auto"] | None', "bf17"),
])
def test_text_that_does_not_fit_is_refused(annotation, text):
    import ast

    kind = book.parse_type(ast.parse(annotation, mode="eval").body)
    assert book.read_text(text, kind) is book.NO_FIT


def test_check_parameters_rejects_wrong_type_and_unknown_name(mini_book):
    chapter = book.chapters(mini_book)[0]
    assert book.check_parameters(chapter, {"n_images": 5, "scale": 2}) == {"n_images": 5, "scale": 2.0}
    assert book.check_parameters(chapter, {"window": [4, 20], "prompt": "a b"}) == {"window": [4, 20], "prompt": "a b"}
    with pytest.raises(book.BookError, match="""'window' must be "auto" or list\\[int\\], got 'all'"""):
        book.check_parameters(chapter, {"window": "all"})
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
    printed = _printed(mini_book / "book" / "chapters" / "a_first.ipynb")
    assert "total 1.5" in printed  # the ci profile's n_images=1 reached the notebook
    assert "got 'describe' 'auto'" in printed  # untouched parameters keep the notebook's defaults
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


def test_lists_tuples_and_text_with_spaces_reach_the_notebook(mini_book):
    done = _runner(mini_book, "a_first", "--no-build", "-p", "window", "[4, 20]", "-p", "prompt", "describe the image")
    assert done.returncode == 0, done.stderr
    assert "got 'describe the image' [4, 20]" in _printed(mini_book / "book" / "chapters" / "a_first.ipynb")

    done = _runner(mini_book, "a_first", "--no-build", params="""prompt="what is 'here'?" window=(1,2) n_images=2""")
    assert done.returncode == 0, done.stderr
    printed = _printed(mini_book / "book" / "chapters" / "a_first.ipynb")
    assert """got "what is 'here'?" [1, 2]""" in printed and "total 3.0" in printed


@pytest.mark.parametrize("args, params, needles", [
    (["-p", "window", "[4, 20"], None, ["'window' must be \"auto\" or list[int], got '[4, 20'"]),
    (["-p", "window", "4 20"], None, ["a_first", "'window'"]),
    (["-p", "n_images", "2.5"], None, ["'n_images' must be int"]),
    ([], "window=[4, 20]", ["VLMNB_PARAMS", "bad parameter '20]'"]),
    ([], "prompt='unclosed", ["VLMNB_PARAMS", "cannot split"]),
    ([], "window=all", ["'window' must be"]),
    (["-p", "window"], None, ["expected 2 arguments"]),
    (["--no-such-option"], None, ["unrecognized arguments"]),
])
def test_bad_values_are_one_line_before_anything_runs(mini_book, args, params, needles):
    assert_one_line_error(_runner(mini_book, "--no-build", *args, params=params), *needles)
    assert not (mini_book / "book" / "chapters").exists()


def test_help_and_list(mini_book):
    for done in (_cli(mini_book, "--help"), _runner(mini_book, "--help")):
        assert done.returncode == 0 and "-p NAME VALUE" in done.stdout, done.stderr
    listed = _runner(mini_book, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "window: \"auto\" or list[int] = 'auto'" in listed.stdout and "n_images: int = 3" in listed.stdout


def test_vlmnb_book_hands_values_with_spaces_to_the_runner(mini_book):
    # through `python -m vlmnb book` (vlmnb/cli/main.py): a value with spaces is one value
    done = _cli(mini_book, "--no-build", "-p", "prompt", "describe the image", "-p", "window", "[4, 20")
    assert_one_line_error(done, "'window' must be")


def test_unreadable_type_declaration_is_named(mini_book):
    _notebook(mini_book / "notebooks" / "b_second.ipynb", "n_images: dict[str, int] = 2", "pass")
    assert_one_line_error(_runner(mini_book, "b_second", "--no-build"), "b_second.ipynb", "'n_images'")


# -- the book's own chapters --------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
LOAD_PARAMETERS = ("dtype", "device_map", "revision", "trust_remote_code")


def test_every_chapter_declares_its_types_and_passes_the_load_parameters():
    for chapter in book.chapters(ROOT):
        if chapter.name == "00_toy_model":
            continue
        declared = book.notebook_parameters(chapter.source)
        untyped = [p.name for p in declared.values() if not p.declared]
        assert not untyped, f"{chapter.name}: no declared type for {untyped}"
        assert {n: declared[n].default for n in LOAD_PARAMETERS} == \
            {"dtype": None, "device_map": None, "revision": None, "trust_remote_code": False}
        source = chapter.source.read_text()
        assert ("vlmnb.load(model, dtype=dtype, device_map=device_map, revision=revision, "
                "trust_remote_code=trust_remote_code)") in source, chapter.name


def test_chapters_take_the_documented_forms():
    by_name = {c.name: c for c in book.chapters(ROOT)}
    T = book.Text
    assert book.check_parameters(by_name["02_knockout"], {"window": T("[4, 20]"), "prompt": T("describe the image"),
                                                          "dtype": T("bfloat16"), "revision": T("main"),
                                                          "trust_remote_code": T("true")}) == \
        {"window": [4, 20], "prompt": "describe the image", "dtype": "bfloat16", "revision": "main",
         "trust_remote_code": True}
    assert book.check_parameters(by_name["03_localization"], {"map_window": T("(2, 3)"), "layer_window": T("4")}) == \
        {"map_window": [2, 3], "layer_window": 4}
    with pytest.raises(book.BookError, match="'dtype' must be"):
        book.check_parameters(by_name["01_attention_fractions"], {"dtype": T("bf17")})


def test_profiles_reach_the_chapters_unchanged():
    """The declared types accept every profile value as it is: the same values reach the notebooks."""
    for profile in ("default", "ci"):
        prof = book.load_profile(ROOT, profile)
        for chapter in book.chapters(ROOT):
            given = {k: v for k, v in prof.get("all", {}).items() if k in book.notebook_defaults(chapter.source)}
            given.update(prof.get(chapter.name, {}))
            merged = book.check_parameters(chapter, prof.get("all", {}), strict=False)
            merged.update(book.check_parameters(chapter, prof.get(chapter.name, {})))
            assert merged == given and all(type(merged[k]) is type(given[k]) for k in given), chapter.name


@pytest.mark.notebook
def test_a_chapter_on_a_hub_cache_model_names_its_commit(tmp_path):
    """The issue's check: a tiny LLaVA under a hub id in a hub-layout cache, offline, with a list
    and a text with spaces on the command line; the chapter shows the model and its commit."""
    from vlmnb.engine import tiny

    commit = "3c" * 20
    repo = tmp_path / "hf" / "hub" / "models--org--tiny-llava"
    tiny.save("llava", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    root = tmp_path / "root"
    root.mkdir()
    copy_book_sources(root)
    done = _cli(root, "02_knockout", "--no-build", "-p", "model", "org/tiny-llava", "-p", "n_images", "2",
                "-p", "window", "[0, 0]", "-p", "prompt", "describe the image", "-p", "max_new_tokens", "4",
                "-p", "stride", "2", "-p", "n_examples", "1",
                env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Passed unknown parameter" not in done.stderr
    nb = nbformat.read(root / "book" / "chapters" / "02_knockout.ipynb", as_version=4)
    shown = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                    for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"VLM('org/tiny-llava', revision='{commit}'" in shown
    assert "layers 0-0 (given as a parameter)" in shown


def test_broken_profiles_file_is_one_line(mini_book):
    (mini_book / "notebooks" / "profiles.yml").write_text("ci:\n  all: [\n")
    assert_one_line_error(_runner(mini_book, "--no-build", "--profile", "ci"), "profiles.yml is not valid YAML")


def test_a_chapter_not_executed_gets_a_page_that_says_so(tmp_path):
    """``make book ARGS=02_knockout`` on a fresh clone builds: the other chapters get a page
    naming the command that executes them (and no input digest, so the next run does)."""
    import nbformat

    chapter = next(c for c in book.chapters(ROOT) if c.name == "03_localization")
    chapter = book.Chapter(chapter.name, chapter.source, tmp_path / "chapters" / "03_localization.ipynb")
    book.write_placeholder(chapter)
    nb = nbformat.read(chapter.target, as_version=4)
    assert len(nb.cells) == 1 and nb.cells[0].cell_type == "markdown"
    text = nb.cells[0].source
    assert text.splitlines()[0] == "# Fine details are read from the image where they are"
    assert "make book ARGS=03_localization" in text and "not executed" in text
    assert not (tmp_path / "chapters" / book.STATE_FILE).exists()


def test_every_chapter_opens_with_an_overview_and_closes_with_downloads_and_a_summary():
    """The reader learns first what a chapter shows, what it runs on, its judge and how long it
    takes; it ends with the chapter's downloads and a short summary."""
    for chapter in book.chapters(ROOT):
        nb = nbformat.read(chapter.source, as_version=4)
        first = nb.cells[0].source
        assert first.startswith("# ") and "\n## Overview\n" in first, chapter.name
        for item in ("What it shows", "Runs on", "Judge", "Time", "Read first", "Downloads"):
            assert f"- **{item}" in first, (chapter.name, item)
        time_line = next(line for line in first.splitlines() if line.startswith("- **Time"))
        assert re.search(r"about \d+ (seconds|minutes?|hours?)", time_line) and "2 CPU cores" in time_line, time_line
        assert nb.cells[-1].cell_type == "markdown" and nb.cells[-1].source.startswith("## Summary\n"), chapter.name
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert code[-1].startswith(f'downloads.publish("{chapter.name}"'), chapter.name
        assert ".style" not in "\n".join(code), f"{chapter.name}: show tables with tables.show"


def test_the_runner_quiets_the_kernels_and_sets_where_downloads_go(tmp_path):
    from vlmnb.core.progress import ENV
    from vlmnb.views.downloads import DIR_ENV, URL_ENV

    env = book.kernel_environment(tmp_path)
    assert env[ENV] == "0" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert book.QUIET_WARNINGS in env["PYTHONWARNINGS"]
    assert env[DIR_ENV] == str(tmp_path / "book" / "chapters" / "_extra" / "_downloads")
    # a chapter page is _build/html/book/chapters/<name>.html: two levels below the site's root
    assert env[URL_ENV] == "../../_downloads"


def test_chapters_run_without_the_package_progress_bars(mini_book):
    _notebook(mini_book / "notebooks" / "b_second.ipynb", "n_images = 2",
              "import os\nfrom vlmnb.core.progress import progress_bar\n"
              "for _ in progress_bar(range(20), desc='quiet bar', mininterval=0): pass\n"
              "print('downloads at', os.environ['VLMNB_DOWNLOADS_URL'])")
    done = _cli(mini_book, "b_second", "--no-build")
    assert done.returncode == 0, done.stderr
    printed = _printed(mini_book / "book" / "chapters" / "b_second.ipynb")
    assert "downloads at ../../_downloads" in printed and "quiet bar" not in printed, printed
