"""Loading from a Hugging Face hub-layout cache: ``revision`` pins config, processor and weights,
and ``VLM.revision`` is the snapshot's commit (never "unknown"); local folders keep their digest."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import add_hub_snapshot

from vlmnb.engine import tiny
from vlmnb.engine.loading import cached_commit, torch_dtype, weights_revision
from vlmnb.toy import checkpoint_path

REPO = "org/tiny-llava"
FIRST = "1" * 8 + "a" * 32      # refs/main points here
SECOND = "2" * 8 + "b" * 32


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """HF_HOME holding two snapshots of one tiny LLaVA that differ in config, processor and weights."""
    root = tmp_path_factory.mktemp("hf")
    one = tiny.save("llava", root / "one", seed=0)
    two = tiny.save("llava", root / "two", seed=1)
    config = json.loads((two / "config.json").read_text())
    config["vlmnb_snapshot"] = "second"
    (two / "config.json").write_text(json.dumps(config))
    tok = json.loads((two / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 1234
    (two / "tokenizer_config.json").write_text(json.dumps(tok))
    hub = root / "home" / "hub"
    add_hub_snapshot(hub, REPO, FIRST, one)
    add_hub_snapshot(hub, REPO, SECOND, two)
    refs = hub / ("models--" + REPO.replace("/", "--")) / "refs"
    refs.mkdir()
    (refs / "main").write_text(FIRST)
    return root / "home"


# One subprocess (HF_HOME is read when huggingface_hub is imported) loads the model several ways
# and reports what each load holds.
_PROBE = r"""
import json, sys
import vlmnb
from vlmnb.engine.loading import ModelNotAvailable

out = {}
for label, revision in json.loads(sys.argv[1]).items():
    try:
        vlm = vlmnb.load(sys.argv[2], revision=revision)
    except ModelNotAvailable as exc:
        out[label] = {"error": str(exc)}
        continue
    weight = next(p for n, p in vlm.model.named_parameters() if "embed_tokens" in n)
    out[label] = {"revision": vlm.revision, "marker": getattr(vlm.model.config, "vlmnb_snapshot", None),
                  "max_length": vlm.processor.tokenizer.model_max_length,
                  "weight": float(weight.double().sum()), "repr": repr(vlm)}
print("RESULT" + json.dumps(out))
"""


def _probe(hub_home: Path, revisions: dict, model: str = REPO) -> dict:
    env = dict(os.environ, HF_HOME=str(hub_home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(revisions), model], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_hub_cache_revision_is_the_snapshot_commit_and_pins_everything(hub_home):
    got = _probe(hub_home, {"default": None, "main": "main", "second": SECOND, "prefix": SECOND[:10],
                            "missing": "f" * 40})
    # the default branch resolves through refs/main to the first snapshot
    assert got["default"]["revision"] == FIRST and got["main"] == got["default"]
    assert got["default"]["marker"] is None and got["default"]["max_length"] != 1234
    # revision=<commit> loads that snapshot's config, processor and weights
    second = got["second"]
    assert second["revision"] == SECOND and f"revision='{SECOND}'" in second["repr"]
    assert second["marker"] == "second" and second["max_length"] == 1234
    assert second["weight"] != got["default"]["weight"]
    assert got["prefix"] == second  # a unique prefix of a cached commit names it too
    # two snapshots never share a store key
    assert len({got["default"]["revision"], second["revision"]}) == 2
    # a commit the cache does not hold, offline: the one-line error, not a load of another snapshot
    assert "org/tiny-llava" in got["missing"]["error"]


def test_snapshot_folder_and_hub_id_name_the_commit(hub_home):
    hub = hub_home / "hub"
    snap = hub / "models--org--tiny-llava" / "snapshots" / SECOND
    assert weights_revision(str(snap)) == SECOND
    assert cached_commit(REPO, cache_dir=hub) == FIRST
    assert cached_commit(REPO, "main", cache_dir=hub) == FIRST
    assert cached_commit(REPO, SECOND[:8], cache_dir=hub) == SECOND
    assert cached_commit(REPO, "1111", cache_dir=hub) is None  # too short to be a commit prefix
    assert cached_commit(REPO, "v2", cache_dir=hub) is None
    assert cached_commit("org/other", cache_dir=hub) is None


def _digest_as_before(folder: Path) -> str:
    """The weights digest local folders (the toy) were keyed by before hub commits were resolved."""
    digest = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def test_toy_and_local_folders_keep_their_weights_digest(tmp_path):
    toy = checkpoint_path("toy")
    assert weights_revision(str(toy)) == _digest_as_before(toy)
    folder = tiny.save("llava", tmp_path / "m")
    assert weights_revision(str(folder)) == _digest_as_before(folder)
    # a folder without *.safetensors / *.bin still gets a digest (of all its files), not "unknown"
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "model.safetensors").rename(bare / "weights.pt")
    rev = weights_revision(str(bare))
    assert len(rev) == 12 and rev != "unknown" and rev != weights_revision(str(folder))


def test_toy_load_keeps_its_revision_and_rejects_a_revision():
    import vlmnb

    vlm = vlmnb.load("toy")
    assert vlm.revision == _digest_as_before(checkpoint_path("toy"))
    with pytest.raises(ValueError, match="revision='abc' applies to hub ids"):
        vlmnb.load("toy", revision="abc")


def test_dtype_names():
    import torch

    assert torch_dtype(None) is None and torch_dtype("auto") == "auto"
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("fp16") is torch.float16
    assert torch_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        torch_dtype("bf17")


def test_a_model_needing_timm_without_timm_is_one_line(tmp_path):
    """In an environment without timm, a PerceptionLM folder stops with the extra to install."""
    folder = tiny.save("perception_lm", tmp_path / "plm")
    script = f"""
import importlib.abc, sys
class NoTimm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "timm" or name.startswith("timm."):
            raise ModuleNotFoundError("No module named 'timm'")
sys.meta_path.insert(0, NoTimm())
import vlmnb
from vlmnb.core.errors import MissingExtra
try:
    vlmnb.load({str(folder)!r})
except MissingExtra as exc:
    print("MISSING:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = [x for x in done.stdout.splitlines() if x.startswith("MISSING:")]
    assert line and "timm" in line[0] and "vlmnb[timm]" in line[0], done.stdout + done.stderr[-2000:]
