"""Execute the chapter notebooks with papermill and build the Jupyter Book.

The book never executes notebooks itself (``execute_notebooks: "off"``): this module runs
each chapter listed in ``_toc.yml`` with papermill into ``book/chapters/`` and then calls
``jupyter-book build``. A chapter is re-executed only when its inputs changed (the notebook,
its parameters, the package source or the embedded model's files).

Parameters come from four places, later ones winning:

1. the notebook's own cell tagged ``parameters`` (the embedded-default values);
2. a profile in ``notebooks/profiles.yml`` (``default`` or ``ci``: small settings for checks);
3. the environment: ``VLMNB_PARAMS="model=llava-hf/llava-1.5-7b-hf n_images=80"``;
4. the command line: ``python -m vlmnb book -p model llava-hf/llava-1.5-7b-hf``.

Values are parsed as YAML scalars/lists and checked against the type of the notebook's
default, so ``-p n_images many`` fails before anything runs.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CHAPTER_DIR = Path("book") / "chapters"
NOTEBOOK_DIR = Path("notebooks")
PROFILES_FILE = NOTEBOOK_DIR / "profiles.yml"
STATE_FILE = ".inputs.json"


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


def notebook_defaults(source: Path) -> dict:
    """The parameters cell of a notebook as {name: python value}."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                target = value = None
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    target, value = node.target, node.value
                if isinstance(target, ast.Name):
                    try:
                        values[target.id] = ast.literal_eval(value)
                    except ValueError:
                        values[target.id] = None  # computed default: accept any override
            return values
    raise BookError(f"{source.name} has no cell tagged 'parameters'")


def parse_overrides(text: str) -> dict:
    """``"a=1 b=two c=[1,2]"`` -> {"a": 1, "b": "two", "c": [1, 2]} (YAML values)."""
    out = {}
    for item in shlex.split(text or ""):
        if "=" not in item:
            raise BookError(f"bad parameter {item!r}: expected name=value")
        name, value = item.split("=", 1)
        out[name.strip()] = yaml.safe_load(value) if value != "" else ""
    return out


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameters(chapter: Chapter, params: dict, strict: bool = True) -> dict:
    """Validate names and types of ``params`` against the notebook's defaults.

    With ``strict=False`` (parameters meant for every notebook) unknown names are dropped
    instead of rejected, so ``model=...`` can be given once for all chapters.
    """
    defaults = notebook_defaults(chapter.source)
    checked = {}
    for name, value in params.items():
        if name not in defaults:
            if strict:
                known = ", ".join(sorted(defaults))
                raise BookError(f"{chapter.name}: unknown parameter {name!r} (known: {known})")
            continue
        if not _type_ok(defaults[name], value):
            raise BookError(
                f"{chapter.name}: parameter {name!r} must be {type(defaults[name]).__name__} "
                f"like its default {defaults[name]!r}, got {value!r}"
            )
        checked[name] = value
    return checked


def load_profile(root: Path, profile: str) -> dict:
    path = root / PROFILES_FILE
    profiles = yaml.safe_load(path.read_text()) if path.is_file() else {}
    profiles = profiles or {}
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


def execute(chapter: Chapter, root: Path, *, kernel: str = "python3", force: bool = False,
            progress: bool = True) -> bool:
    """Run one chapter with papermill. Returns False when skipped as up to date."""
    import papermill as pm
    from jupyter_client.kernelspec import NoSuchKernel

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


def build_html(root: Path) -> Path:
    """``jupyter-book build`` with warnings as errors; returns the HTML folder."""
    exe = Path(sys.executable).parent / "jupyter-book"
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
    env_params = parse_overrides(os.environ.get("VLMNB_PARAMS", ""))
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
        html = build_html(root)
        print(f"[book] built {html / 'index.html'}")
    return selected
