"""Tiny random models: real classes, deterministic in the seed, offline save/load round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmnb.engine import families
from vlmnb.engine import spans as S
from vlmnb.engine import tiny

FAMILIES = list(tiny.MODELS)

def real_class(config) -> str:
    """The class transformers itself maps ``config.model_type`` to for image-text-to-text; for a
    checkpoint that runs its own code (InternVL2), the class its config names."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if families.detect(config).load_remote is not None:
        return config.architectures[0]
    return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[config.model_type]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_tiny_real_and_seeded(family):
    model, processor = tiny.build(family, seed=0)
    assert type(model).__name__ == real_class(model.config)
    assert S.detect_family(model.config) == tiny.family_of(family)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 2_000_000
    again, _ = tiny.build(family, seed=0)
    other, _ = tiny.build(family, seed=1)
    a, b, c = _state(model), _state(again), _state(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1)
    # the global RNG is not disturbed by building
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    tiny.build(family, seed=5)
    assert torch.equal(torch.rand(3), x)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_changes_the_output(family, noise):
    model, processor = tiny.build(family, seed=0)
    outs = []
    for seed in (0, 1):
        prep = S.prepare(model, processor, noise(48, 40, seed), "describe the image")
        with torch.no_grad():
            outs.append(model(**prep.inputs).logits[0, -1])
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_unknown_family_and_bad_size():
    with pytest.raises(ValueError, match="unknown family"):
        tiny.build("blip2")
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny.build("llava", image_size=30)


def test_image_size_scales_the_views(noise):
    model, processor = tiny.build("llava", image_size=48)
    prep = S.prepare(model, processor, noise(48, 48), "describe")
    assert prep.pixel_values.shape[-1] == 48
    assert prep.geometry.views[0].rows == 4


# (the Qwen2 variant of the tiny InternVL2 is made in memory: the remote code it is built from, the
# 2B's, has no config class for a Qwen2 decoder, so its folder cannot be read back)
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_save_and_load_offline_with_auto_classes(family, tmp_path, monkeypatch, noise):
    """transformers' Auto classes read the folder; for a checkpoint with its own code (InternVL2),
    vlmnb.load(folder, trust_remote_code=True) does (AutoModel and AutoTokenizer)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import vlmnb

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny.save(family, tmp_path / family, seed=3)
    model, processor = tiny.build(family, seed=3)
    if families.get(family).load_remote is not None:
        vlm = vlmnb.load(folder, trust_remote_code=True)
        loaded, loaded_proc = vlm.model, vlm.processor
    else:
        loaded = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
        loaded_proc = AutoProcessor.from_pretrained(folder, local_files_only=True)
    assert type(loaded).__name__ == type(model).__name__
    assert type(loaded_proc).__name__ == type(processor).__name__
    image = noise(50, 36)
    a = S.prepare(model, processor, image, "describe the image")
    b = S.prepare(loaded, loaded_proc, image, "describe the image")
    assert a.text == b.text
    assert torch.equal(a.input_ids, b.input_ids)
    assert np.array_equal(a.spans.image, b.spans.image)
    assert np.allclose(a.geometry.boxes, b.geometry.boxes, equal_nan=True)
    with torch.no_grad():
        la = model(**a.inputs).logits
        lb = loaded.eval()(**b.inputs).logits
    assert torch.allclose(la, lb, atol=1e-5)
    gen = loaded.generate(**b.inputs, max_new_tokens=4)
    assert gen.shape[1] == b.input_ids.shape[1] + 4 or loaded_proc.tokenizer.eos_token_id in gen[0].tolist()


@pytest.mark.slow
def test_command_line_writes_a_folder(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vlmnb.tiny", "gemma3", str(tmp_path / "g"), "--seed", "2"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "g")
    assert (tmp_path / "g" / "model.safetensors").exists() and (tmp_path / "g" / "processor_config.json").exists()


@pytest.mark.slow
def test_command_line_writes_a_loadable_remote_code_folder(tmp_path):
    """InternVL2's folder holds the checkpoints' own code beside the weights and loads with
    vlmnb.load(folder, trust_remote_code=True)."""
    import subprocess
    import sys

    import vlmnb

    folder = tmp_path / "i"
    subprocess.run([sys.executable, "-m", "vlmnb.tiny", "internvl2", str(folder), "--seed", "1"],
                   capture_output=True, text=True, check=True)
    assert (folder / "modeling_internvl_chat.py").exists() and (folder / "tokenizer.json").exists()
    from vlmnb.cli import tiny as tiny_cli

    assert tiny_cli.main(["internvl2", str(folder), "--seed", "1"]) == 0  # its own folder may be written again
    vlm = vlmnb.load(folder, trust_remote_code=True)
    expected, _ = tiny.build("internvl2", seed=1)
    assert vlm.family == "internvl2" and vlm.num_layers == 2
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in vlm.model.state_dict().items())
