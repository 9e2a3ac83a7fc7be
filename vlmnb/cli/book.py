"""Execute the chapter notebooks with papermill and build the Jupyter Book.

The book never executes notebooks itself (``execute_notebooks: "off"``): this module runs
each chapter listed in ``_toc.yml`` with papermill into ``book/chapters/`` and then calls
``jupyter-book build``. A chapter is re-executed only when its inputs changed (the notebook,
its parameters, the package source or the embedded model's files).

Parameters come from four places, later ones winning:

1. the notebook's own cell tagged ``parameters`` (the embedded-default values);
2. a profile in ``notebooks/profiles.yml`` (``default`` or ``ci``: small settings for checks);
3. the environment, shell-quoted: ``VLMNB_PARAMS='model=llava-hf/llava-1.5-7b-hf prompt="describe the image" window=[4,20]'``;
4. the command line, one value per ``-p``: ``python -m vlmnb book -p prompt "describe the image" -p window "[4, 20]"``.

Each parameter's type is declared in the parameters cell with an ordinary Python annotation::

    n_images: int = 24
    window: Literal["auto"] | list[int] = "auto"   # [first, last] layers kept open, or "auto"
    revision: str | None = None

(str, int, float, bool, None, list[...], tuple[...], Literal[...], joined with ``|``); a
parameter without an annotation has the type of its default (any type when the default is
None). A value given as text (``-p``, ``VLMNB_PARAMS``) is read as the first of a Python
literal (``[4, 20]``, ``(4, 20)``, ``'text'``, ``None``), a YAML value (``[4,20]``, ``true``,
``null``) or the text itself that fits the declared type, so ``-p prompt yes`` stays the
text "yes" and ``-p n_images many`` fails, in one line and before anything runs. Tuples reach
the notebook as lists (papermill writes lists, not tuples).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlmnb.cli.parameters import (NO_FIT, Parameter, Text, conform, describe_type, parse_type, read_text,
                                    type_of_default)

CHAPTER_DIR = Path("book") / "chapters"
NOTEBOOK_DIR = Path("notebooks")
PROFILES_FILE = NOTEBOOK_DIR / "profiles.yml"
STATE_FILE = ".inputs.json"
#: warnings the executed chapters leave out (see :func:`kernel_environment`)
QUIET_WARNINGS = "ignore:IProgress not found"
#: html_extra_path in _config.yml: its content is copied into the site's root, so a chapter's
#: downloads (vlmnb.views.downloads), written to EXTRA_DIR/_downloads/<chapter>/, are served
#: from _build/html/_downloads/<chapter>/
EXTRA_DIR = CHAPTER_DIR / "_extra"
DOWNLOADS = "_downloads"


class BookError(RuntimeError):
    """A problem with running the book, reported as one line."""


@dataclass
class Chapter:
    """One executable chapter: a source notebook and where its executed copy goes."""

    name: str
    source: Path
    target: Path
    parameters: dict = field(default_factory=dict)


def repo_root(start: Path | None = None) -> Path:
    """The folder holding ``_toc.yml`` (searched upwards from ``start`` or the CWD)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    raise BookError(f"no _toc.yml found in {here} or above: run from the book's folder")


def _toc_files(toc: dict) -> list[str]:
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return files


def chapters(root: Path | None = None) -> list[Chapter]:
    """Chapters listed in ``_toc.yml`` whose file lives under ``book/chapters/``."""
    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found = []
    for entry in _toc_files(toc):
        path = Path(entry)
        if path.parent != CHAPTER_DIR:
            continue
        source = root / NOTEBOOK_DIR / (path.stem + ".ipynb")
        if not source.is_file():
            raise BookError(f"_toc.yml lists {entry} but {source.relative_to(root)} does not exist")
        found.append(Chapter(path.stem, source, root / CHAPTER_DIR / (path.stem + ".ipynb")))
    return found


def notebook_parameters(source: Path) -> dict[str, Parameter]:
    """The parameters cell of a notebook as {name: :class:`Parameter`} (default and type)."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            found = {}
            for node in ast.parse(cell.source).body:
                target = value = annotation = None
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    target, value, annotation = node.target, node.value, node.annotation
                if not isinstance(target, ast.Name):
                    continue
                try:
                    default = ast.literal_eval(value)
                except ValueError:
                    default = None  # computed default: accept any override
                if annotation is None:
                    found[target.id] = Parameter(target.id, default, type_of_default(default))
                    continue
                try:
                    kind = parse_type(annotation)
                except (ValueError, SyntaxError) as exc:
                    raise BookError(f"{source.name}: cannot read the type of parameter {target.id!r} ({exc}); "
                                    "use str, int, float, bool, None, list[...], tuple[...] or "
                                    "Literal[...], joined with |") from None
                found[target.id] = Parameter(target.id, default, kind, declared=True)
            return found
    raise BookError(f"{source.name} has no cell tagged 'parameters'")


def notebook_defaults(source: Path) -> dict:
    """The parameters cell of a notebook as {name: python value}."""
    return {name: p.default for name, p in notebook_parameters(source).items()}


def parse_overrides(text: str, origin: str = "VLMNB_PARAMS") -> dict:
    """``'a=1 b=two prompt="describe the image" c=[1,2]'`` -> {name: :class:`Text`}, split like a
    shell line (quote values with spaces); each chapter reads the texts with its declared types."""
    try:
        items = shlex.split(text or "")
    except ValueError as exc:  # no closing quotation
        raise BookError(f"{origin}: cannot split {text!r} ({exc}); quote each value with spaces once, "
                        f"e.g. prompt=\"describe the image\"") from None
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip().isidentifier():
            raise BookError(f"{origin}: bad parameter {item!r}: expected name=value "
                            f"(quote a value with spaces: window=\"[4, 20]\")")
        out[name.strip()] = Text(value, origin)
    return out


def check_parameters(chapter: Chapter, params: dict, strict: bool = True) -> dict:
    """Validate names and types of ``params`` against the notebook's declared parameters; values
    given as :class:`Text` are read with the parameter's type.

    With ``strict=False`` (parameters meant for every notebook) unknown names are dropped
    instead of rejected, so ``model=...`` can be given once for all chapters.
    """
    declared = notebook_parameters(chapter.source)
    checked = {}
    for name, value in params.items():
        if name not in declared:
            if strict:
                known = ", ".join(sorted(declared))
                raise BookError(f"{chapter.name}: unknown parameter {name!r} (known: {known})")
            continue
        param = declared[name]
        if isinstance(value, Text):
            got = read_text(value.text, param.type)
            shown = f"{value.text!r} (from {value.origin})"
        else:
            got = conform(value, param.type)
            shown = repr(value)
        if got is NO_FIT:
            raise BookError(f"{chapter.name}: parameter {name!r} must be {param.describe()}, got {shown}")
        checked[name] = got
    return checked


def load_profile(root: Path, profile: str) -> dict:
    path = root / PROFILES_FILE
    try:
        profiles = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise BookError(f"{PROFILES_FILE} is not valid YAML"
                        + (f" (line {where.line + 1})" if where else "") + f": {getattr(exc, 'problem', exc)}") from None
    profiles = profiles or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) or v is None for v in profiles.values()):
        raise BookError(f"{PROFILES_FILE} must map profile names to {{chapter or 'all': {{name: value}}}}")
    if profile not in profiles and profile != "default":
        raise BookError(f"unknown profile {profile!r} (in {PROFILES_FILE}: {', '.join(profiles) or 'none'})")
    return profiles.get(profile) or {}


def _input_digest(root: Path, chapter: Chapter) -> str:
    """Everything a chapter's output depends on, hashed."""
    h = hashlib.sha256()
    h.update(chapter.source.read_bytes())
    h.update(json.dumps(chapter.parameters, sort_keys=True, default=str).encode())
    pkg = root / "vlmnb"
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and "runs" not in path.parts:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def settle_stream(text: str) -> str:
    """What a terminal shows for ``text``: within each line only the part after the last carriage
    return survives, so a progress bar's hundreds of updates become its final state."""
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def settle_outputs(outputs: list) -> list:
    """Merge consecutive stream outputs of one stream (as a notebook front-end shows them) and
    settle carriage returns (:func:`settle_stream`); other outputs are kept as they are."""
    settled: list = []
    for out in outputs:
        if out.get("output_type") == "stream" and settled and settled[-1].get("output_type") == "stream" \
                and settled[-1].get("name") == out.get("name"):
            settled[-1]["text"] += out["text"]
        else:
            settled.append(out)
    for out in settled:
        if out.get("output_type") == "stream":
            out["text"] = settle_stream(out["text"])
    return settled


def _tidy(path: Path) -> None:
    """Keep papermill's injected-parameters cell, but collapsed (the run's settings stay visible),
    and keep each progress bar's final state only (the book would show every update)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
        if cell.cell_type == "code":
            cell.outputs = settle_outputs(cell.get("outputs", []))
    nbformat.write(nb, path)


def kernel_environment(root: Path) -> dict[str, str]:
    """What the runner adds to the environment of the kernels that execute the chapters, so
    that a page shows results, not the machinery of the run:

    - ``PYTHONWARNINGS``: transformers imports ``tqdm.auto``, which, without ipywidgets, warns
      "IProgress not found" with a local site-packages path (the package's own bars are plain
      text, :mod:`vlmnb.core.progress`);
    - ``VLMNB_PROGRESS=0``: the package's progress bars are off (a page is read after the run);
    - ``HF_HUB_DISABLE_PROGRESS_BARS=1``: the bars that transformers and huggingface_hub draw,
      which they draw only while downloading or loading a model ("Loading weights"); their
      logging, warnings and errors are untouched;
    - where chapters write their downloads, and how a page links them (:mod:`vlmnb.views.downloads`).
    """
    from vlmnb.core.progress import ENV as PROGRESS_ENV
    from vlmnb.views.downloads import DIR_ENV, URL_ENV

    warnings_filter = os.environ.get("PYTHONWARNINGS", "")
    if QUIET_WARNINGS not in warnings_filter:
        warnings_filter = ",".join(filter(None, [warnings_filter, QUIET_WARNINGS]))
    return {"PYTHONWARNINGS": warnings_filter, PROGRESS_ENV: "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            DIR_ENV: str(root / EXTRA_DIR / DOWNLOADS),
            # from book/chapters/<chapter>.html up to the site's root
            URL_ENV: "/".join([".."] * len(CHAPTER_DIR.parts) + [DOWNLOADS])}


@contextmanager
def _environment(values: dict[str, str]):
    """``os.environ`` updated with ``values`` inside the block (the kernels inherit it), restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _DeclaredParameters(logging.Filter):
    """Drops papermill's "Passed unknown parameter" warning: papermill reads only annotations of
    the form ``word[word, ...]`` and calls ``window: Literal["auto"] | list[int]`` unknown, while
    this runner has already checked every name and value against the parameters cell."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passed unknown parameter")


def execute(chapter: Chapter, root: Path, *, kernel: str = "python3", force: bool = False,
            progress: bool = True) -> bool:
    """Run one chapter with papermill. Returns False when skipped as up to date."""
    import papermill as pm
    from jupyter_client.kernelspec import NoSuchKernel

    pm_logger = logging.getLogger("papermill")
    if not any(isinstance(f, _DeclaredParameters) for f in pm_logger.filters):
        pm_logger.addFilter(_DeclaredParameters())

    state_path = chapter.target.parent / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    digest = _input_digest(root, chapter)
    if not force and chapter.target.is_file() and state.get(chapter.name) == digest:
        print(f"[book] {chapter.name}: up to date, skipped")
        return False
    chapter.target.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join(f"{k}={v!r}" for k, v in chapter.parameters.items()) or "notebook defaults"
    print(f"[book] {chapter.name}: executing with {shown}", flush=True)
    start = time.time()
    partial = chapter.target.with_suffix(".partial.ipynb")
    try:
        with _environment(kernel_environment(root)):
            pm.execute_notebook(
                str(chapter.source), str(partial), parameters=chapter.parameters,
                kernel_name=kernel, cwd=str(root), progress_bar=progress,
                report_mode=False, log_output=False,
                # a busy machine can delay a cell's output past nbclient's 4 s default
                iopub_timeout=120,
            )
    except NoSuchKernel:
        raise BookError(f"{chapter.name}: no Jupyter kernel named {kernel!r}; install ipykernel "
                        f"in this environment or pass --kernel NAME") from None
    except pm.PapermillExecutionError as err:
        raise BookError(
            f"{chapter.source.relative_to(root)} failed in cell {err.exec_count} "
            f"({err.ename}: {err.evalue.splitlines()[0] if err.evalue else ''}); "
            f"the executed copy is {partial.relative_to(root)}"
        ) from None
    except Exception as err:  # kernel died, timed out, ...: still one line naming the notebook
        raise BookError(f"{chapter.source.relative_to(root)} could not be executed: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    os.replace(partial, chapter.target)
    _tidy(chapter.target)
    state[chapter.name] = digest
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    print(f"[book] {chapter.name}: done in {time.time() - start:.0f} s", flush=True)
    return True


def write_placeholder(chapter: Chapter) -> None:
    """A page for a chapter this build did not execute (``make book ARGS=02_knockout`` on a fresh
    clone), saying so and how to run it, so that the book still builds. It keeps no input digest,
    so the next run executes the chapter."""
    import nbformat

    nb = nbformat.read(chapter.source, as_version=4)
    title = next((line for cell in nb.cells if cell.cell_type == "markdown"
                  for line in cell.source.splitlines() if line.startswith("# ")), f"# {chapter.name}")
    text = (f"{title}\n\n```{{note}}\nThis chapter was not executed in this build. Run it with "
            f"`make book ARGS={chapter.name}` (or `python -m vlmnb book {chapter.name}`).\n```\n")
    chapter.target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)]), chapter.target)


def build_html(root: Path) -> Path:
    """``jupyter-book build`` with warnings as errors; returns the HTML folder."""
    exe = Path(sys.executable).parent / "jupyter-book"
    (root / EXTRA_DIR / DOWNLOADS).mkdir(parents=True, exist_ok=True)  # html_extra_path must exist
    cmd = [str(exe), "build", str(root), "-W", "--keep-going"]
    print("[book] jupyter-book build . -W --keep-going", flush=True)
    done = subprocess.run(cmd, cwd=root)
    if done.returncode != 0:
        raise BookError(f"jupyter-book build failed (exit {done.returncode}); see the messages above")
    return root / "_build" / "html"


def run(names: list[str] | None = None, *, profile: str = "default", params: dict | None = None,
        force: bool = False, build: bool = True, kernel: str = "python3",
        root: Path | None = None) -> list[Chapter]:
    """Execute the chapters (all, or ``names``) and optionally build the HTML book."""
    root = root or repo_root()
    all_chapters = chapters(root)
    by_name = {c.name: c for c in all_chapters}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise BookError(f"unknown notebook {unknown[0]!r}; chapters are: {', '.join(by_name)}")
        selected = [by_name[n] for n in names]
    else:
        selected = all_chapters
    prof = load_profile(root, profile)
    env_params = parse_overrides(os.environ.get("VLMNB_PARAMS", ""), origin="VLMNB_PARAMS")
    # Check everything before running anything: a typo must not cost a half-built book.
    for chapter in selected:
        merged = check_parameters(chapter, prof.get("all", {}), strict=False)
        merged.update(check_parameters(chapter, prof.get(chapter.name, {})))
        merged.update(check_parameters(chapter, env_params, strict=False))
        merged.update(check_parameters(chapter, params or {}, strict=False))
        chapter.parameters = merged
    unused = set(env_params) | set(params or {})
    for chapter in selected:
        unused -= set(notebook_defaults(chapter.source))
    if unused:
        raise BookError(f"parameter {sorted(unused)[0]!r} is not a parameter of any selected chapter")
    for i, chapter in enumerate(selected, 1):
        print(f"[book] chapter {i}/{len(selected)}", flush=True)
        execute(chapter, root, kernel=kernel, force=force)
    if build:
        for chapter in all_chapters:
            if not chapter.target.exists():
                write_placeholder(chapter)
        html = build_html(root)
        print(f"[book] built {html / 'index.html'}")
    return selected


# -- command line ----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The ``python -m vlmnb book`` command line."""
    p = _Parser(
        prog="python -m vlmnb book",
        description="Execute the chapter notebooks with papermill and build the book.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parameter values: one value per -p, quoted by the shell when it has spaces or brackets:\n"
               "  -p model llava-hf/llava-1.5-7b-hf -p prompt \"describe the image\" -p window \"[4, 20]\"\n"
               "or all at once in VLMNB_PARAMS, shell-quoted:\n"
               "  VLMNB_PARAMS='model=llava-hf/llava-1.5-7b-hf prompt=\"describe the image\" window=[4,20]'\n"
               "Each value is checked against the type declared in the chapter's parameters cell\n"
               "(see --list) before anything runs.")
    p.add_argument("notebooks", nargs="*", help="chapter names (default: every chapter in _toc.yml)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter in every selected chapter that has it")
    p.add_argument("--profile", default="default", help="parameter profile from notebooks/profiles.yml")
    p.add_argument("--force", action="store_true", help="re-execute even when inputs did not change")
    p.add_argument("--no-build", action="store_true", help="execute notebooks only, skip the HTML build")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    p.add_argument("--list", action="store_true", help="list chapters and their parameters with types and defaults")
    return p


def list_parameters(root: Path | None = None) -> str:
    """Every chapter's parameters as ``name: type = default`` lines."""
    lines = []
    for chapter in chapters(root):
        lines.append(chapter.name)
        for param in notebook_parameters(chapter.source).values():
            lines.append(f"  {param.name}: {describe_type(param.type)} = {param.default!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m vlmnb book ...``; returns the exit status (2 with one line for bad input)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.list:
            print(list_parameters())
            return 0
        params = {name: Text(value, f"-p {name}") for name, value in args.parameter}
        run(args.notebooks or None, profile=args.profile, params=params, force=args.force,
            build=not args.no_build, kernel=args.kernel)
    except BookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
