"""The package's structure holds: its layers' import contracts, no import cycles (imports inside
functions count), no module reaching for another's private names, no module over 600 lines,
the light modules free of torch, and ruff and deptry clean."""
from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
architecture = importlib.util.module_from_spec(spec)
sys.modules["architecture"] = architecture  # dataclasses look their module up
spec.loader.exec_module(architecture)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def report():
    return architecture.report(ROOT)


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: it is part of the 'test' extra")
    return path


def test_import_contracts_of_the_layers_are_kept():
    done = subprocess.run([_tool("lint-imports"), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout


def test_the_contracts_catch_an_upward_import(tmp_path):
    """The contract is not vacuous: one engine module importing an experiment breaks it."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "vlmnb", copy / "vlmnb", ignore=shutil.ignore_patterns("checkpoint", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    with open(copy / "vlmnb" / "engine" / "knockout.py", "a") as f:
        f.write("\nfrom vlmnb.experiments import sweep  # noqa\n")
    done = subprocess.run([_tool("lint-imports"), "--config", str(copy / "pyproject.toml")], cwd=copy,
                          capture_output=True, text=True, env={"PYTHONPATH": str(copy), "PATH": str(BIN)})
    assert done.returncode != 0
    assert "vlmnb.engine.knockout -> vlmnb.experiments.sweep" in done.stdout


def test_no_import_cycles_counting_imports_inside_functions(report):
    assert report.cycles == []


def test_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert architecture.cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from vlmnb.x import y\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))


def test_no_module_imports_or_uses_another_modules_private_names(report):
    assert report.private_imports == {}
    assert report.foreign_private == {}


def test_no_module_over_600_lines(report):
    assert report.too_long == {}


def test_tests_import_public_names_only():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlmnb"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


@pytest.mark.parametrize("module", ["vlmnb", "vlmnb.data.store", "vlmnb.judge", "vlmnb.core.yes_no",
                                    "vlmnb.experiments.paper"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_ruff_is_clean():
    done = subprocess.run([_tool("ruff"), "check", "vlmnb", "tests", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_deptry_finds_every_import_declared_and_every_dependency_used():
    done = subprocess.run([_tool("deptry"), "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
