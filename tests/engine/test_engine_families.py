"""Engine invariants on tiny random models of every supported family (vlmnb.engine.tiny), offline."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlmnb  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402

from vlmnb.engine import tiny  # noqa: E402
from vlmnb.engine.families.internvl2 import RemoteCodeMissing  # noqa: E402

FAMILIES = list(tiny.MODELS)



def _image(seed, size=(56, 40)):
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module", params=FAMILIES)
def family_vlm(request):
    family = request.param
    try:
        model, processor = tiny.build(family)
    except RemoteCodeMissing as exc:  # the remote code a tiny model is built from is not on this machine
        pytest.skip(str(exc))
    return VLM(model, processor, name=f"tiny-{family}")


def _eager_copy(vlm):
    """A copy of the model whose text decoder runs eager attention (its vision encoder unchanged)."""
    model = copy.deepcopy(vlm.model)
    VLM(model).decoder.set_attn_implementation("eager")
    return model


def test_family_invariants(family_vlm):
    vlm = family_vlm
    assert vlm.family in tiny.FAMILIES
    a, b = vlm.prepare(_image(1)), vlm.prepare(_image(2))
    P = a.input_ids.shape[1]
    inputs = vlm.to_device(dict(a.inputs))
    with torch.no_grad():
        own = vlm.model(**inputs).logits
    # nothing blocked: exactly the model's own SDPA run
    empty = vlm.forward(a, knockout=vlmnb.Knockout(src={0: []}, dst="query"))
    assert (empty - own).abs().max().item() <= 1e-5

    # image -> (query, generated) everywhere: outputs no longer depend on the pixels
    full = vlmnb.Knockout(src="image", dst=("query", "generated"))
    rec = vlmnb.Record(fractions=True, image_rows=True)
    cached = vlm.generate(a, 5, knockout=full, record=rec)
    cont = cached.token_ids
    la, lb = vlm.forward(a, cont, knockout=full), vlm.forward(b, cont, knockout=full)
    assert (la[0, P - 1:] - lb[0, P - 1:]).abs().max().item() <= 1e-5
    assert vlm.generate(b, 5, knockout=full).token_ids == cont
    gen_only = vlmnb.Knockout(src="image", dst="generated")
    ga, gb = vlm.forward(a, cont, knockout=gen_only), vlm.forward(b, cont, knockout=gen_only)
    assert (ga[0, P:] - gb[0, P:]).abs().max().item() > 1e-6

    # cached == uncached == teacher-forced, logits and recordings
    uncached = vlm.generate(a, 5, knockout=full, record=rec, use_cache=False)
    logits, forced = vlm.forward(a, cont, knockout=full, record=rec)
    assert uncached.token_ids == cont
    assert logits[0, P - 1:P - 1 + len(cont)].argmax(-1).tolist() == cont
    for other in (uncached.recording, forced):
        np.testing.assert_allclose(other.fractions, cached.recording.fractions, atol=1e-5)
        np.testing.assert_allclose(other.image_rows, cached.recording.image_rows, atol=1e-5)
    assert np.all(cached.recording.fractions[:, :, 1] == 0)  # no attention reaches the image
    np.testing.assert_allclose(cached.recording.fractions.sum(-1), 1.0, atol=1e-5)


def test_family_hidden_states_and_recording_vs_eager(family_vlm):
    vlm = family_vlm
    inp = vlm.prepare(_image(3))
    P = inp.input_ids.shape[1]
    # from_layer(last): hidden states entering layers <= last unchanged; image prefix unchanged
    last = vlm.num_layers - 1
    inputs = vlm.to_device(dict(inp.inputs))
    with torch.no_grad():
        base = vlm.model(**inputs, output_hidden_states=True).hidden_states
    ko = vlmnb.Knockout("image", ("query", "generated"), vlmnb.from_layer(last))
    with vlm.intervene(knockout=ko, inp=inp), torch.no_grad():
        hidden = vlm.model(**inputs, output_hidden_states=True).hidden_states
    end = int(inp.spans.image[-1]) + 1
    for layer in range(vlm.num_layers + 1):
        if layer <= last:
            assert torch.equal(hidden[layer], base[layer])
        assert torch.equal(hidden[layer][:, :end], base[layer][:, :end])
    assert not torch.equal(hidden[-1], base[-1])

    # recorded fractions == output_attentions of an eager run
    eager = _eager_copy(vlm)
    with torch.no_grad():
        ref = eager.generate(**inputs, max_new_tokens=4, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True, generation_config=copy.deepcopy(vlm.model.generation_config))
    out = vlm.generate(inp, 4, record=vlmnb.Record(fractions=True, image_rows=True))
    ref_ids = ref.sequences[0, P:].tolist()
    assert out.token_ids == ref_ids[:len(out.token_ids)]
    labels = np.full(P + len(ref.attentions), 3)
    labels[inp.spans.system], labels[inp.spans.image], labels[inp.spans.query] = 0, 1, 2
    for step, per_layer in enumerate(ref.attentions[:len(out.token_ids)]):
        rows = np.stack([a[0, :, -1].float().mean(0).numpy() for a in per_layer])
        kv = rows.shape[1]
        expected = np.stack([rows[:, labels[:kv] == s].sum(1) for s in range(4)], axis=-1)
        np.testing.assert_allclose(out.recording.fractions[:, step], expected, atol=1e-5)
        np.testing.assert_allclose(out.recording.image_rows[:, step], rows[:, inp.spans.image], atol=1e-5)


def test_family_left_padded_batch_equals_per_sample(family_vlm):
    vlm = family_vlm
    inputs = [vlm.prepare(_image(4), "describe the image"),
              vlm.prepare(_image(5), "what is in this picture ? describe the scene in detail")]
    assert inputs[0].input_ids.shape[1] != inputs[1].input_ids.shape[1]
    ko = vlmnb.Knockout("image", "generated", vlmnb.from_layer(1))
    rec = vlmnb.Record()
    single = [vlm.generate(x, 4, knockout=ko, record=rec) for x in inputs]
    batch = vlm.generate(inputs, 4, knockout=ko, record=rec)
    for s, b in zip(single, batch):
        assert s.token_ids == b.token_ids
        np.testing.assert_allclose(s.recording.fractions, b.recording.fractions, atol=1e-4)


def test_gemma3_sliding_window_positions():
    """With a window shorter than the prompt, the cache trims keys; positions must still line up."""
    model, processor = tiny.build("gemma3")
    config = copy.deepcopy(model.config)
    config.text_config.sliding_window = 6
    small = type(model)(config).eval()
    small.load_state_dict(model.state_dict())
    small.generation_config = model.generation_config
    vlm = VLM(small, processor, name="tiny-gemma3-window6")
    assert 6 in vlm.layer_windows()
    inp = vlm.prepare(_image(6))
    P = inp.input_ids.shape[1]
    ko = vlmnb.Knockout("query", "generated", [0])
    rec = vlmnb.Record(image_rows=True)
    cached = vlm.generate(inp, 8, knockout=ko, record=rec)
    uncached = vlm.generate(inp, 8, knockout=ko, record=rec, use_cache=False)
    logits, forced = vlm.forward(inp, cached.token_ids, knockout=ko, record=rec)
    assert cached.token_ids == uncached.token_ids == logits[0, P - 1:P + 7].argmax(-1).tolist()
    np.testing.assert_allclose(uncached.recording.fractions, cached.recording.fractions, atol=1e-5)
    np.testing.assert_allclose(forced.fractions, cached.recording.fractions, atol=1e-5)
    # in the sliding layer, late generated tokens see only the last 6 positions (no image)
    window_layer = vlm.layer_windows().index(6)
    assert np.all(cached.recording.fractions[window_layer, 6:, 1] == 0)
    # the window makes a knockout of query+generated empty a generated row: rejected up front
    with pytest.raises(ValueError, match="every key"):
        vlm.generate(inp, 3, knockout=vlmnb.Knockout(("query", "generated"), "generated", [window_layer]))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_load_saved_folder_prepare_from_path_and_generate(family, tmp_path):
    from PIL import Image

    folder = tiny.save(family, tmp_path / family)
    vlm = vlmnb.load(folder)
    assert vlm.family == family and vlm.num_layers == vlm.model.config.text_config.num_hidden_layers
    assert vlm.image_token_id == vlm.model.config.image_token_id
    picture = tmp_path / "picture.png"
    Image.fromarray(_image(7)).save(picture)
    inp = vlm.prepare(picture, "describe the image")
    ids = inp.input_ids[0].numpy()
    assert (ids[inp.spans.image] == vlm.image_token_id).sum() == (ids == vlm.image_token_id).sum() > 0
    out = vlm.generate(inp, 6, record=vlmnb.Record())
    assert "".join(out.tokens) == out.text and len(out.offsets) == len(out.token_ids) == 6
    for i, (start, end) in enumerate(out.offsets):
        if end > start:
            assert i in out.tokens_in(start, end)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read"):
        vlm.prepare(broken)
