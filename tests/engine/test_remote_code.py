"""Checkpoints that run their own modelling code (InternVL2's hub checkpoints): loaded only with
``trust_remote_code=True``, through the checkpoint's own class completed by vlmnb
(vlmnb.engine.remote), and refused in one line for variants the engine cannot run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from support import add_hub_snapshot

import vlmnb
from vlmnb.engine import families, tiny
from vlmnb.engine.families.internvl2 import CODE_ENV, UnsupportedVariant, remote_code_folder
from vlmnb.engine.loading import RemoteCodeRequired
from vlmnb.engine.remote import RemoteCodeMissing

REMOTE = [name for name in families.NAMES if families.get(name).load_remote is not None]


def _image(seed):
    return (np.random.default_rng(seed).random((40, 56, 3)) * 255).astype(np.uint8)  # as _PROBE's


@pytest.fixture(scope="module")
def code():
    """The folder of InternVL2's remote code (the test fixture beside the repository)."""
    try:
        return remote_code_folder()
    except RemoteCodeMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("family", REMOTE)
def test_saved_folder_loads_with_trust_remote_code(family, code, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny.save(family, tmp_path / family, seed=2)
    built, _ = tiny.build(family, seed=2)
    vlm = vlmnb.load(folder, trust_remote_code=True)
    assert vlm.family == family and len(vlm.revision) == 12
    assert vlm.text_config._attn_implementation == "sdpa"  # what vlmnb's attention function reproduces
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in vlm.model.state_dict().items())
    inp = vlm.prepare(_image(0), "describe the image")
    ids = inp.input_ids[0]
    assert int((ids == vlm.image_token_id).sum()) == len(inp.spans.image) - 2 > 0
    # the engine's generation is the model's own greedy generate, cached or not
    out = vlm.generate(inp, 8)
    with torch.no_grad():
        own = vlm.model.generate(**vlm.to_device(dict(inp.inputs)), max_new_tokens=8, do_sample=False)
    assert out.token_ids == own[0, ids.shape[0]:].tolist()
    assert vlm.generate(inp, 8, use_cache=False).token_ids == out.token_ids


# A subprocess (HF_HOME is read when huggingface_hub is imported) loads a hub id from the cache.
_PROBE = r"""
import json, sys
import numpy as np
import vlmnb
from vlmnb.engine.loading import RemoteCodeRequired

try:
    vlmnb.load(sys.argv[1])
    refused = None
except RemoteCodeRequired as exc:
    refused = str(exc)
vlm = vlmnb.load(sys.argv[1], trust_remote_code=True)
image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
out = vlm.generate(vlm.prepare(image), 6)
print("RESULT" + json.dumps({"refused": refused, "family": vlm.family, "revision": vlm.revision, "ids": out.token_ids}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", REMOTE)
def test_hub_id_from_the_cache(family, code, tmp_path):
    """``vlmnb.load("<its first hub id>", trust_remote_code=True)`` offline, from a hub-layout cache
    holding the tiny model (code, config, weights, tokenizer) under that id."""
    hub_id = families.get(family).hub_ids[0]
    commit = "3" * 40
    add_hub_snapshot(tmp_path / "home" / "hub", hub_id, commit, tiny.save(family, tmp_path / "tiny", seed=4), main=True)
    env = dict(os.environ, HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", _PROBE, hub_id], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT"):])
    assert got["refused"] and "trust_remote_code=True" in got["refused"] and hub_id in got["refused"]
    assert got["family"] == family and got["revision"] == commit
    vlm = vlmnb.VLM(*tiny.build(family, seed=4))
    assert got["ids"] == vlm.generate(vlm.prepare(_image(0)), 6).token_ids


@pytest.mark.parametrize("family", REMOTE)
def test_refused_in_one_line_without_trust_remote_code(family, code, tmp_path):
    folder = tiny.save(family, tmp_path / family)
    with pytest.raises(RemoteCodeRequired) as info:
        vlmnb.load(folder)
    message = str(info.value)
    assert "\n" not in message and "trust_remote_code=True" in message and "internvl_chat" in message


@pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated")  # (the InternLM2 config code sets it)
def test_internlm2_decoder_is_refused_before_any_weight_is_read(code, tmp_path):
    """InternVL2-2B's config (an InternLM2 decoder, tiny sizes, no weights at all): one line naming
    the supported checkpoints."""
    config = json.loads((code / "config.internvl2-2b.json").read_text())
    config["llm_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=500)
    config["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    folder = tmp_path / "internvl2_2b"
    folder.mkdir()
    for file in code.glob("*.py"):
        shutil.copyfile(file, folder / file.name)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedVariant) as info:
        vlmnb.load(folder, trust_remote_code=True)
    message = str(info.value)
    assert "\n" not in message and "InternLM2ForCausalLM" in message
    assert all(name in message for name in ("InternVL2-1B", "InternVL2-40B", "InternVL2-Llama3-76B"))


def test_missing_remote_code_is_its_own_error(tmp_path, monkeypatch):
    """Without the remote code the tiny model cannot be built: RemoteCodeMissing (what the
    family tests skip on), one line naming the environment variable that points to it."""
    monkeypatch.setenv(CODE_ENV, str(tmp_path))
    with pytest.raises(RemoteCodeMissing) as info:
        tiny.build("internvl2")
    assert "\n" not in str(info.value) and CODE_ENV in str(info.value)


def test_building_prints_nothing_of_the_checkpoints_code(code, tmp_path):
    """The checkpoint's code prints its own notices and imports a deprecated timm path when it is
    imported: nothing of that reaches the caller (a chapter's output)."""
    script = "from vlmnb.engine import tiny; tiny.build('internvl2')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, CODE_ENV: str(code), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and "Warning" not in done.stderr, done.stdout + done.stderr
