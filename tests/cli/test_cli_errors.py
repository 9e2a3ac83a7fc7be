"""Every command line answers bad input with one line on stderr and exit status 2, with nothing
written; ``--help`` and ``--version`` behave as usual. The sweep's parameter-mismatch advice
works when followed literally, and a truncated part file is named and repaired."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmnb import __version__  # noqa: E402
from vlmnb.cli import sweep as sweep_cli  # noqa: E402
from vlmnb.data.store import CorruptPart, ResultStore, list_parts, read_parts  # noqa: E402
from vlmnb.engine import tiny  # noqa: E402

KEYS = ["image_id", "config", "metric", "layer", "token"]
SWEEP = ["--images", "toy", "--n-images", "2", "--fig2", "--threads", "1", "--no-progress"]


def run(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_one_line(proc, *needles) -> str:
    """Exit status 2 and exactly one line on stderr, ``error: ...``, holding every needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict:
    """Every file under ``path`` with its size and modification time (to show nothing changed)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def sorted_frame(frame):
    return frame.sort_values(KEYS).reset_index(drop=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny.save("llava", tmp_path_factory.mktemp("tiny") / "llava")


@pytest.fixture(scope="module")
def done_run(model, tmp_path_factory) -> Path:
    """A finished sweep, reached the way a user would: ``--max-new-tokens 0`` is refused before
    anything is written, so the corrected rerun into the same folder works."""
    root = tmp_path_factory.mktemp("sweep")
    out = root / "run"
    bad = run(["-m", "vlmnb.cli.sweep", "--model", model, *SWEEP, "--max-new-tokens", "0", "--out", out], root)
    assert_one_line(bad, "--max-new-tokens", "at least 1")
    assert not out.exists()
    good = run(["-m", "vlmnb.cli.sweep", "--model", model, *SWEEP, "--max-new-tokens", "3", "--out", out], root)
    assert good.returncode == 0, good.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------- the sweep
SWEEP_BAD = {
    "unknown model": (["--model", "no-such-org/no-such-model"], ["no-such-org/no-such-model"]),
    "folder without config": (["--model", "{tmp}"], ["not a model folder"]),
    "window 5 2": (["--window", "5", "2"], ["--window", "5 2"]),
    "window past the layers": (["--window", "0", "7"], ["--window 0 7", "layers"]),
    "stride 0": (["--stride", "0"], ["--stride", "at least 1"]),
    "max-new-tokens 0": (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    "max-new-tokens 2.5": (["--max-new-tokens", "2.5"], ["--max-new-tokens", "2.5"]),
    "top-k 0": (["--topk", "0"], ["--topk"]),
    "dtype": (["--dtype", "float8"], ["--dtype"]),
    "missing images": (["--images", "{tmp}/nothing"], ["--images"]),
    "out under a file": (["--out", "{tmp}/file.txt/run"], ["file.txt", "not a folder"]),
    "unknown option": (["--bogus"], ["--bogus"]),
}


@pytest.mark.parametrize("case", SWEEP_BAD, ids=list(SWEEP_BAD))
def test_sweep_bad_input_is_one_line_and_writes_nothing(case, model, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    extra, needles = SWEEP_BAD[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out = tmp_path / "run"
    base = ["--model", model, *SWEEP, "--max-new-tokens", "3"]
    if "--out" not in args:
        base += ["--out", out]
    before = tree(tmp_path)
    proc = run(["-m", "vlmnb.cli.sweep", *base, *args], tmp_path)
    assert_one_line(proc, *needles)
    assert not out.exists() and tree(tmp_path) == before


def test_sweep_unwritable_out_is_one_line(model, tmp_path, monkeypatch, capsys):
    """A folder we may not write to (os.access says no: root may write anywhere, so it is faked)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
    rc = sweep_cli.main(["--model", str(model), *SWEEP, "--out", str(locked / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not writable" in err[0] and str(locked) in err[0]
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write to a read-only folder")
def test_sweep_read_only_out_is_one_line(model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = run(["-m", "vlmnb.cli.sweep", "--model", model, *SWEEP, "--out", locked / "run"], tmp_path)
        assert_one_line(proc, "cannot be written")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_changed_parameters_are_refused_and_the_advice_works(done_run, model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    before = tree(out)
    args = ["-m", "vlmnb.cli.sweep", "--model", model, *SWEEP, "--max-new-tokens", "4", "--out", out]
    line = assert_one_line(run(args, tmp_path), "max_new_tokens: 3 (stored) != 4 (now)", "--reset")
    assert tree(out) == before  # nothing written
    # follow the advice literally: the same command with --reset
    assert "rerun with --reset" in line
    again = run([*args, "--reset"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    merged = ResultStore.open(out / "merged")
    assert merged.params["dtype"] == "float32" and merged.params["revision"] not in (None, "unknown")
    assert merged.params["max_new_tokens"] == 4 and len(merged) == len(ResultStore.open(done_run / "merged"))
    old = list((out / "old").iterdir())  # the earlier results were moved aside, not deleted
    assert len(old) == 1 and ResultStore.open(old[0] / "merged").params["max_new_tokens"] == 3
    assert sorted_frame(ResultStore.open(old[0] / "merged").frame()).equals(
        sorted_frame(ResultStore.open(done_run / "merged").frame()))


@pytest.mark.parametrize("where", ["shards/w001-r000", "merged"])
def test_a_truncated_part_is_named_and_repaired(where, done_run, model, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    part = list_parts(out / where)[0]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptPart, match=part.name):
        read_parts([part])

    proc = run(["-m", "vlmnb.cli.sweep", "--model", model, *SWEEP, "--max-new-tokens", "3", "--out", out], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(part) in proc.stderr or part.name in proc.stderr  # the warning names the file
    kept = out / where / "parts" / "corrupt" / part.name
    assert kept.read_bytes() == data[: len(data) // 2]  # set aside, never deleted
    for store in ["shards/w001-r000", "merged"]:
        a = sorted_frame(ResultStore.open(done_run / store).frame())
        b = sorted_frame(ResultStore.open(out / store).frame())
        assert a.equals(b), store  # the units came back identical


def test_something_in_the_way_is_one_line_and_reset_moves_it_aside(model, tmp_path):
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "merged").write_text("my notes")
    before = tree(tmp_path)
    args = ["-m", "vlmnb.cli.sweep", "--model", model, *SWEEP, "--max-new-tokens", "2", "--n-images", "1",
            "--out", out]
    assert_one_line(run(args, tmp_path), "merged is in the way", "--reset")
    assert tree(tmp_path) == before
    done = run([*args, "--reset"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.read_text() for p in (out / "old").glob("*/merged")] == ["my notes"]


def test_the_load_options_reach_vlmnb_load(monkeypatch, tmp_path, capsys):
    import torch

    import vlmnb

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs, name=name)
        raise vlmnb.ModelNotAvailable("stopped by the test")

    monkeypatch.setattr(vlmnb, "load", fake_load)
    rc = sweep_cli.main(["--model", "org/model", "--fig2", "--dtype", "bfloat16", "--device-map", "auto",
                         "--revision", "abc123", "--trust-remote-code", "--out", str(tmp_path / "run")])
    assert rc == 2 and capsys.readouterr().err.strip() == "error: stopped by the test"
    expected = {"name": "org/model", "dtype": torch.bfloat16, "revision": "abc123", "trust_remote_code": True}
    assert {k: seen[k] for k in expected} == expected
    assert seen["device_map"] == ("auto" if not torch.cuda.is_available() else {"": 0})
    assert not (tmp_path / "run").exists()


def test_merge_only_without_shards_is_one_line(tmp_path):
    proc = run(["-m", "vlmnb.cli.sweep", "--merge-only", "--out", tmp_path / "nothing"], tmp_path)
    assert_one_line(proc, "no shard stores")
    assert not (tmp_path / "nothing").exists()


# ----------------------------------------------------------------------------- the other commands
# Each command's real entry point (``python -m ...``) is run as a subprocess for one bad input; the
# other bad inputs call the same ``main`` in this process (the same code path, without paying
# torch's import again for each case on a shared 2-core machine).
MAINS = {"vlmnb": "vlmnb.cli.main", "data": "vlmnb.cli.data", "vlmnb.tiny": "vlmnb.cli.tiny",
         "vlmnb.toy.train": "vlmnb.toy.train", "vlmnb.toy.evaluate": "vlmnb.toy.evaluate"}

OTHER_BAD = {  # case: (command, arguments, what the line names, run as a subprocess)
    "vlmnb no command": ("vlmnb", [], ["no command"], True),
    "vlmnb unknown command": ("vlmnb", ["nope"], ["unknown command 'nope'"], False),
    "vlmnb unknown option": ("vlmnb", ["--bogus"], ["--bogus"], False),
    "data no dataset": ("vlmnb", ["data"], ["dataset"], True),
    "data coco n 0": ("data", ["coco", "--n", "0", "--cache", "{out}"], ["--n"], False),
    "data coco cache is a file": ("data", ["coco", "--cache", "{tmp}/file.txt/coco"], ["file.txt"], False),
    "data coco no annotations": ("data", ["coco", "--cache", "{out}", "--annotations", "{tmp}/no"],
                                 ["--annotations"], False),
    "data mme missing": ("data", ["mme", "--dir", "{out}"], ["lmms-lab/MME"], False),
    "tiny no folder": ("vlmnb.tiny", ["llava"], ["FOLDER"], False),
    "tiny unknown family": ("vlmnb.tiny", ["nofamily", "{out}"], ["nofamily"], True),
    "tiny folder is a file": ("vlmnb.tiny", ["llava", "{tmp}/file.txt"], ["file.txt", "not a folder"], False),
    "tiny seed": ("vlmnb.tiny", ["llava", "{out}", "--seed", "-1"], ["--seed"], False),
    "tiny image size": ("vlmnb.tiny", ["llava", "{out}", "--image-size", "3"], ["multiple of 16"], False),
    "tiny huge image": ("vlmnb.tiny", ["llava", "{out}", "--image-size", "100000"], ["--image-size"], False),
    "train no out": ("vlmnb.toy.train", [], ["--out"], False),
    "train steps 0": ("vlmnb.toy.train", ["--out", "{out}", "--steps", "0"], ["--steps"], True),
    "train share": ("vlmnb.toy.train", ["--out", "{out}", "--lookup-share", "1.5"], ["--lookup-share"], False),
    "train init-from": ("vlmnb.toy.train", ["--out", "{out}", "--init-from", "{tmp}"], ["--init-from"], False),
    "train device": ("vlmnb.toy.train", ["--out", "{out}", "--device", "gpu"], ["--device gpu"], False),
    "train recipe": ("vlmnb.toy.train", ["--out", "{out}", "--recipe", "nope"], ["--recipe"], False),
    "train aspect": ("vlmnb.toy.train", ["--out", "{out}", "--aspect-weights", "size=x"], ["aspect"], False),
    "train out is a file": ("vlmnb.toy.train", ["--out", "{tmp}/file.txt"], ["file.txt"], False),
    "evaluate n 0": ("vlmnb.toy.evaluate", ["--n", "0"], ["--n"], True),
    "evaluate checkpoint": ("vlmnb.toy.evaluate", ["--checkpoint", "{out}"], ["--checkpoint"], False),
    "evaluate device": ("vlmnb.toy.evaluate", ["--device", "tpu:9"], ["--device"], False),
}


def call(command: str, argv, capsys) -> subprocess.CompletedProcess:
    """``main(argv)`` of ``command`` in this process, as a CompletedProcess (argparse exits too)."""
    import importlib

    main = importlib.import_module(MAINS[command]).main
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, captured.out, captured.err)


@pytest.mark.parametrize("case", OTHER_BAD, ids=list(OTHER_BAD))
def test_other_commands_answer_bad_input_in_one_line(case, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    command, args, needles, subprocess_run = OTHER_BAD[case]
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)).replace("{out}", str(out)) for a in args]
    before = tree(tmp_path)
    proc = run(["-m", command, *args], tmp_path) if subprocess_run else call(command, args, capsys)
    assert_one_line(proc, *needles)
    assert not out.exists() and tree(tmp_path) == before


def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    state = tmp_path / "run" / "checkpoint" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"step": 3}')
    before = tree(tmp_path)
    assert_one_line(call("vlmnb.toy.train", ["--out", str(tmp_path / "run"), "--steps", "5"], capsys), "--resume")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("module", ["vlmnb", "vlmnb.cli.sweep", "vlmnb.tiny", "vlmnb.toy.train",
                                    "vlmnb.toy.evaluate"])
def test_help_and_version(module, tmp_path, capsys):
    if module in ("vlmnb.toy.train", "vlmnb.toy.evaluate"):  # in this process: they import torch first
        version, helped = call(module, ["--version"], capsys), call(module, ["--help"], capsys)
    else:
        version, helped = run(["-m", module, "--version"], tmp_path), run(["-m", module, "--help"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"vlmnb {__version__}", version.stderr
    assert helped.returncode == 0 and helped.stdout.startswith("usage:") and not helped.stderr
    assert len(helped.stdout.splitlines()) > 3


def test_vlmnb_help_lists_its_commands(tmp_path):
    helped = run(["-m", "vlmnb", "--help"], tmp_path).stdout
    for name in ["book", "data", "vlmnb.cli.sweep", "vlmnb.tiny", "vlmnb.toy.train", "vlmnb.toy.evaluate"]:
        assert name in helped
    assert run(["-m", "vlmnb", "data", "--version"], tmp_path).stdout.strip() == f"vlmnb {__version__}"


# ----------------------------------------------------------------------------- the engine's public entry
def test_generate_and_prepare_reject_bad_arguments_in_one_line(model):
    import vlmnb
    from vlmnb.core.errors import OneLineError

    vlm = vlmnb.load(model)
    image = vlmnb.data.images("toy", n=1)[0].image
    inp = vlm.prepare(image, prompt="describe the image")
    cases = [
        (lambda: vlm.prepare(image, prompt=None), "prompt must be a non-empty str"),
        (lambda: vlm.prepare(image, prompt=["a", "b"]), "one input per prompt"),
        (lambda: vlm.prepare(image, prompt="  "), "non-empty"),
        (lambda: vlm.generate(inp, max_new_tokens=2.5), "max_new_tokens must be an int"),
        (lambda: vlm.generate(inp, max_new_tokens=0), "at least 1"),
        (lambda: vlm.generate(None), "VLM.prepare"),
        (lambda: vlm.generate("describe the image"), "VLM.prepare"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert isinstance(info.value, OneLineError) and "\n" not in str(info.value)
    assert len(vlm.generate(inp, max_new_tokens=2).token_ids) <= 2


def test_load_of_an_undocumented_toy_name_is_one_line():
    import vlmnb
    from vlmnb.core.errors import OneLineError

    with pytest.raises(Exception) as info:
        vlmnb.load("toy-yesno")
    assert isinstance(info.value, OneLineError)
