"""The chapters as checks: each executes on the embedded model (the book build, `ci` profile)
and on a tiny random model of another family, and shows its figures and its verdict table."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from support import ROOT, book_env

pytestmark = pytest.mark.notebook

# chapter -> (family of the tiny random model, small parameters)
OTHER_FAMILY = {
    "01_attention_fractions": ("qwen2_vl", {"n_images": 2, "max_new_tokens": 6}),
    "02_knockout": ("qwen2_vl", {"n_images": 2, "max_new_tokens": 6, "stride": 2, "n_examples": 1}),
    # a tiled family: tiles + thumbnail geometry on the localisation path
    "03_localization": ("internvl", {"n_images": 2, "max_new_tokens": 6, "n_examples": 1}),
    "04_pruning": ("llava_next", {"n_images": 2, "max_new_tokens": 6, "ks": [0.1, 0.5]}),
    "05_reprompting": ("llava", {"n_images": 2, "description_tokens": 6, "answer_tokens": 4}),
}
# families added later run chapters 1 and 2 too, each for a structure the first five lack
NEW_FAMILIES = (
    "mistral3",          # Pixtral: row-break markers inside the image span
    "qwen3_vl",          # DeepStack features added inside the decoder, interleaved M-RoPE
    "paligemma",         # no chat template, a bidirectional image + prompt prefix
    "internvl2",         # the paper's InternVL2: the checkpoints' own code (trust_remote_code=True)
)


def _own_code(family: str) -> dict:
    """The chapters load a family whose checkpoints run their own code with trust_remote_code."""
    from vlmnb.engine import families

    return {"trust_remote_code": True} if families.get(family).load_remote is not None else {}


# each set beside the toy (cheap; the book's build sets the toy beside the real toy-smollm)
BESIDE = {"compare_with": ["toy"], "compare_n_images": 1}
RUNS = [(chapter, family, {**params, **BESIDE}) for chapter, (family, params) in OTHER_FAMILY.items()]
RUNS += [(chapter, family, {**OTHER_FAMILY[chapter][1], **_own_code(family), "compare_with": []})
         for family in NEW_FAMILIES
         for chapter in ("01_attention_fractions", "02_knockout")]


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _check_executed(path: Path, beside: tuple[str, ...] = ()) -> None:
    """No errors, real figures, and a last verdict table (with a column per model set ``beside``)."""
    nb = nbformat.read(path, as_version=4)
    errors = [f"{o.ename}: {o.evalue}" for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"
    # matplotlib figures (a widget's PNG fallback sits beside its HTML and may be small)
    pngs = [o["data"]["image/png"] for o in _outputs(nb)
            if "image/png" in o.get("data", {}) and "text/html" not in o["data"]]
    assert pngs, f"{path.name} produced no figure"
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs), f"{path.name} has a broken figure"
    tail = [c for c in nb.cells if c.cell_type == "code"][-3:]
    verdict = "".join(str(v) for c in tail for o in c.get("outputs", []) for v in o.get("data", {}).values())
    assert "held" in verdict, f"{path.name} does not end with its verdict on the paper's claims"
    for model in beside:
        assert f"{model}: held" in verdict, f"{path.name}: no verdict column for {model}"


def test_book_chapters_executed_cleanly_on_the_embedded_model(built_book):
    chapters = sorted((built_book / "book" / "chapters").glob("*.ipynb"))
    assert {p.stem for p in chapters} >= set(OTHER_FAMILY)
    for path in chapters:
        if path.stem in OTHER_FAMILY:
            _check_executed(path, beside=("toy", "toy-smollm"))
        # the book runner keeps tqdm's "IProgress not found" warning (with a local path) out
        streams = "".join(str(o.get("text", "")) for o in _outputs(nbformat.read(path, as_version=4)))
        assert "TqdmWarning" not in streams and "site-packages" not in streams, path.name
    # the first page sums up every chapter's verdicts, per model
    intro = (built_book / "_build" / "html" / "book" / "intro.html").read_text()
    table = intro[intro.index('class="vlmnb-findings"'):intro.index("</table>", intro.index("vlmnb-findings"))]
    assert "<th>toy</th><th>toy-smollm</th>" in table
    assert all(f'href="chapters/{chapter}.html"' in table for chapter in OTHER_FAMILY)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Function ``family -> folder`` of its tiny model, written once (when first asked for: a family
    that cannot be built here skips its own runs only)."""
    from vlmnb.engine import tiny

    root = tmp_path_factory.mktemp("tiny")

    def folder(family: str) -> Path:
        if not (root / family).is_dir():
            tiny.save(family, root / family)
        return root / family
    return folder


@pytest.mark.parametrize("chapter, family, params", RUNS, ids=[f"{c}-{f}" for c, f, _ in RUNS])
def test_chapter_runs_on_a_tiny_model_of_another_family(chapter, family, params, tiny_models, tmp_path):
    out = tmp_path / f"{chapter}.ipynb"
    args = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(out),
            "--cwd", str(tmp_path), "-p", "model", str(tiny_models(family)),
            "-p", "results_dir", str(tmp_path / "runs")]
    args += ["-y", json.dumps(params)]  # JSON is YAML: lists and numbers keep their types
    done = subprocess.run(args, env=book_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_executed(out, beside=tuple(params.get("compare_with", ())))
