"""Engine invariants on a tiny random LLaVA (built from a config, offline)."""
from __future__ import annotations

import os
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlmnb  # noqa: E402
from vlmnb.core.images import load_image  # noqa: E402
from vlmnb.engine import attention  # noqa: E402
from vlmnb.engine.loading import ModelNotAvailable  # noqa: E402
from vlmnb.engine.vlm import append_tokens  # noqa: E402

@pytest.fixture(scope="module")
def vlm(tiny_vlm):
    return tiny_vlm()


def _logits(vlm, inp, cont=(), **kw):
    out = vlm.forward(inp, list(cont), **kw)
    return out[0] if isinstance(out, tuple) else out


def _state(vlm):
    """Everything an intervention may touch, to compare before/after."""
    from transformers import AttentionInterface, AttentionMaskInterface

    return (
        [(id(c), c.__dict__.get("_attn_implementation_internal")) for c in vlm.all_configs()],
        sorted(AttentionInterface._global_mapping), sorted(AttentionMaskInterface._global_mapping),
        attention.handlers(), len(vlm.decoder._forward_pre_hooks), vlm.active,
        sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in vlm.model.modules()),
    )


# ----------------------------------------------------------------------------- exactness
def test_empty_knockout_equals_model_sdpa(vlm, make_input):
    inp = make_input()
    inputs = vlm.to_device(dict(inp.inputs))
    with torch.no_grad():
        own = vlm.model(**inputs).logits
    assert vlm.model.config.text_config._attn_implementation == "sdpa"
    with vlm.intervene(inp=inp):  # our attention function, nothing to do
        assert vlm.model.config.text_config._attn_implementation == "vlmnb"
        with torch.no_grad():
            ours = vlm.model(**inputs).logits
    # a knockout that blocks nothing anywhere (per-layer source sets all empty)
    nothing = vlmnb.Knockout(src={layer: [] for layer in range(vlm.num_layers)}, dst="query")
    ours_empty = vlm.forward(inp, knockout=nothing)
    assert (ours - own).abs().max().item() <= 1e-5
    assert (ours_empty - own).abs().max().item() <= 1e-5
    # and an actual knockout does change them (the comparison can fail)
    changed = vlm.forward(inp, knockout=vlmnb.Knockout("image", "query"))
    assert (changed - own).abs().max().item() > 1e-3


def test_from_layer_leaves_earlier_layers_and_image_prefix_bit_identical(vlm, make_input):
    inp = make_input()
    full = append_tokens(vlm.to_device(dict(inp.inputs)), torch.tensor([[10, 11, 12, 13]]))
    with torch.no_grad():
        base = vlm.model(**full, output_hidden_states=True).hidden_states
    last_image = int(inp.spans.image[-1])
    for start in (1, 2):
        ko = vlmnb.Knockout("image", ("query", "generated"), vlmnb.from_layer(start))
        with vlm.intervene(knockout=ko, inp=inp), torch.no_grad():
            hidden = vlm.model(**full, output_hidden_states=True).hidden_states
        for layer in range(vlm.num_layers):  # hidden_states[l] enters layer l
            if layer <= start:
                assert torch.equal(hidden[layer], base[layer]), (start, layer)
            assert torch.equal(hidden[layer][:, : last_image + 1], base[layer][:, : last_image + 1])
        assert not torch.equal(hidden[start + 1], base[start + 1])


def test_image_knockout_removes_dependence_on_pixels(vlm, make_input):
    a, b = make_input(image_seed=1), make_input(image_seed=2)
    cont = [10, 11, 12, 13, 14]
    P = a.input_ids.shape[1]
    plain_a, plain_b = _logits(vlm, a, cont), _logits(vlm, b, cont)
    assert (plain_a[:, P - 1:] - plain_b[:, P - 1:]).abs().max() > 1e-3  # the image matters at all
    full = vlmnb.Knockout(src="image", dst=("query", "generated"), layers="all")
    ko_a, ko_b = _logits(vlm, a, cont, knockout=full), _logits(vlm, b, cont, knockout=full)
    assert torch.equal(ko_a[:, P - 1:], ko_b[:, P - 1:])
    ga, gb = vlm.generate(a, 6, knockout=full), vlm.generate(b, 6, knockout=full)
    assert ga.token_ids == gb.token_ids
    # blocking only the generated tokens: the image still reaches them through the query
    gen_only = vlmnb.Knockout(src="image", dst="generated", layers="all")
    go_a, go_b = _logits(vlm, a, cont, knockout=gen_only), _logits(vlm, b, cont, knockout=gen_only)
    assert (go_a[:, P:] - go_b[:, P:]).abs().max() > 1e-3
    # ...and it leaves the first prediction (made at the last query position) untouched
    assert torch.equal(go_a[:, P - 1], plain_a[:, P - 1])


def test_cached_uncached_and_teacher_forced_agree(vlm, make_input):
    inp = make_input()
    P = inp.input_ids.shape[1]
    kos = [vlmnb.Knockout("image", ("query", "generated"), vlmnb.from_layer(1)),
           vlmnb.Knockout("system", "generated", [0, 3])]
    rec = vlmnb.Record(fractions=True, image_rows=True)
    cached = vlm.generate(inp, 7, knockout=kos, record=rec)
    uncached = vlm.generate(inp, 7, knockout=kos, record=rec, use_cache=False)
    logits, forced = vlm.forward(inp, cached.token_ids, knockout=kos, record=rec)
    assert cached.token_ids == uncached.token_ids
    assert logits[0, P - 1:P - 1 + 7].argmax(-1).tolist() == cached.token_ids
    for other in (uncached.recording, forced):
        assert other.fractions.shape == cached.recording.fractions.shape == (vlm.num_layers, 7, 4)
        np.testing.assert_allclose(other.fractions, cached.recording.fractions, atol=1e-5)
        np.testing.assert_allclose(other.image_rows, cached.recording.image_rows, atol=1e-5)
    # the knockout was active: no image attention from query/generated rows in layers >= 1
    assert np.all(cached.recording.fractions[1:, :, 1] == 0)
    assert np.all(cached.recording.fractions[0, :, 1] > 0)


def test_left_padded_batch_equals_per_sample(vlm, make_input):
    inputs = [make_input(image_seed=1), make_input(system=(1, 5, 6, 20, 21, 22, 23), query=(7, 30), image_seed=2)]
    ko = vlmnb.Knockout("image", "generated", vlmnb.from_layer(2))
    rec = vlmnb.Record(image_rows=True)
    single = [vlm.generate(x, 6, knockout=ko, record=rec) for x in inputs]
    batch = vlm.generate(inputs, 6, knockout=ko, record=rec)
    for s, b in zip(single, batch):
        assert s.token_ids == b.token_ids
        np.testing.assert_array_equal(s.spans.generated, b.spans.generated)
        np.testing.assert_allclose(s.recording.fractions, b.recording.fractions, atol=1e-5)
        np.testing.assert_allclose(s.recording.image_rows, b.recording.image_rows, atol=1e-5)
    # per-row knockouts: row 1 without any knockout equals its plain run
    mixed = vlm.generate_batch(inputs, 6, row_knockouts=[ko, None], record=rec)
    plain1 = vlm.generate(inputs[1], 6, record=rec)
    assert mixed[0].token_ids == single[0].token_ids and mixed[1].token_ids == plain1.token_ids
    np.testing.assert_allclose(mixed[1].recording.fractions, plain1.recording.fractions, atol=1e-5)
    assert mixed[1].knockout == [] and mixed[0].knockout == [ko]


# ----------------------------------------------------------------------------- recording
def _fractions_from_attentions(attentions, spans, prompt):
    """Reference: span shares from output_attentions of an eager generate (batch 1)."""
    labels = np.full(prompt + len(attentions), 3)
    labels[spans.system], labels[spans.image], labels[spans.query] = 0, 1, 2
    steps = []
    for step in attentions:  # one tuple of per-layer (1, H, q, kv) per generated token
        rows = np.stack([a[0, :, -1].mean(0).numpy() for a in step])  # (layers, kv)
        kv = rows.shape[1]
        steps.append(np.stack([rows[:, labels[:kv] == s].sum(1) for s in range(4)], axis=-1))
    return np.stack(steps, axis=1)  # (layers, steps, 4)


def test_recorded_fractions_match_eager_output_attentions(vlm, make_input, tiny_llava):
    inp = make_input()
    P = inp.input_ids.shape[1]
    eager = tiny_llava(eager=True)  # same seed: same weights, eager attention
    assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(), vlm.model.state_dict().values()))
    with torch.no_grad():
        ref = eager.generate(**inp.inputs, max_new_tokens=6, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True)
    expected = _fractions_from_attentions(ref.attentions, inp.spans, P)
    out = vlm.generate(inp, 6, record=vlmnb.Record(fractions=True, image_rows=True))
    assert out.token_ids == ref.sequences[0, P:].tolist()
    rec = out.recording
    assert rec.fractions.shape == expected.shape == (vlm.num_layers, 6, 4)
    np.testing.assert_allclose(rec.fractions, expected, atol=1e-5)
    np.testing.assert_allclose(rec.fractions.sum(-1), 1.0, atol=1e-5)
    image_ref = np.stack([np.stack([a[0, :, -1].mean(0).numpy()[inp.spans.image] for a in step])
                          for step in ref.attentions], axis=1)
    np.testing.assert_allclose(rec.image_rows, image_ref, atol=1e-5)
    np.testing.assert_array_equal(rec.image_positions, inp.spans.image)
    assert rec.image_rows.dtype == np.float32
    # helpers
    mean = rec.mean_fractions()
    assert list(mean.columns) == list(vlmnb.engine.knockout.SPAN_NAMES) and list(mean.index) == list(range(vlm.num_layers))
    np.testing.assert_allclose(mean.to_numpy(), expected.mean(1), atol=1e-5)
    frame = rec.fractions_frame()
    assert len(frame) == vlm.num_layers * 6 * 4
    np.testing.assert_allclose(rec.image_attention(layers=[1]), image_ref[1].mean(0), atol=1e-5)


def test_record_subset_of_layers_and_generation_offsets(vlm, make_input):
    inp = make_input()
    out = vlm.generate(inp, 5, record=vlmnb.Record(layers=vlmnb.from_layer(2)))
    assert out.recording.layers == (2, 3) and out.recording.image_rows is None
    assert out.recording.fractions.shape == (2, 5, 4)
    assert out.recording.nbytes == 2 * 5 * 4 * 4
    # offsets map characters back to tokens
    assert len(out.tokens) == len(out.offsets) == len(out.token_ids) == 5
    assert "".join(out.tokens) == out.text
    for i, (s, e) in enumerate(out.offsets):
        assert out.tokens_in(s, e) == [i]
        assert out.text[s:e].strip() == vlm.tokenizer.convert_ids_to_tokens(out.token_ids[i])
    P = inp.input_ids.shape[1]
    np.testing.assert_array_equal(out.spans.generated, np.arange(P, P + 5))
    np.testing.assert_array_equal(out.positions_in(*out.offsets[2]), [P + 2])


# ----------------------------------------------------------------------------- restoring and errors
def test_context_exit_restores_model_exactly(vlm, make_input):
    inp = make_input()
    before = _state(vlm)
    ref = _logits(vlm, inp)
    with vlm.intervene(knockout=vlmnb.Knockout("image", "query"), inp=inp):
        assert _state(vlm) != before
        with vlm.intervene(record=vlmnb.Record()):  # nested
            pass
    assert _state(vlm) == before
    with pytest.raises(KeyError):
        with vlm.intervene(knockout=vlmnb.Knockout("image", "query"), inp=inp):
            raise KeyError("boom")
    assert _state(vlm) == before
    assert torch.equal(_logits(vlm, inp), ref)


@pytest.mark.parametrize("make, message", [
    (lambda: vlmnb.Knockout("image", "generated", vlmnb.from_layer(4)), "out of range"),
    (lambda: vlmnb.Knockout("image", "generated", vlmnb.outside(0, 9)), "out of range"),
    (lambda: vlmnb.Knockout("image", "generated", [0, -1]), "out of range"),
    (lambda: vlmnb.Knockout({7: [1]}, "generated"), "out of range"),
    (lambda: vlmnb.Knockout(("system", "image", "query"), "query"), "every key"),
    (lambda: vlmnb.Knockout("query", "query"), None),  # legal: query tokens still see system/image
    (lambda: vlmnb.Knockout([30], "generated"), "beyond the sequence"),
])
def test_bad_knockouts_fail_before_running(vlm, make, message, make_input):
    inp = make_input()
    before = _state(vlm)
    if message is None:
        vlm.generate(inp, 2, knockout=make())
    else:
        with pytest.raises(ValueError, match=message):
            vlm.generate(inp, 2, knockout=make())
    assert _state(vlm) == before


def test_bad_specs_and_inputs_give_clear_errors(vlm, make_input):
    with pytest.raises(ValueError, match="unknown span"):
        vlmnb.Knockout("images", "generated")
    with pytest.raises(TypeError, match="integers"):
        vlmnb.Knockout([0.5], "generated")
    with pytest.raises(ValueError, match="'all'"):
        vlm.generate(make_input(), 2, knockout=vlmnb.Knockout(layers="most"))
    before = _state(vlm)
    no_system = make_input(system=())
    with pytest.raises(ValueError, match="'system' is empty"):
        vlm.generate(no_system, 2, knockout=vlmnb.Knockout("system", "generated"))
    overlap = make_input()
    overlap.spans.query = np.append(overlap.spans.query, overlap.spans.image[-1])
    with pytest.raises(ValueError, match="overlap"):
        vlm.generate(overlap, 2, record=vlmnb.Record())
    no_image = make_input()
    no_image.spans.image = np.arange(0)
    with pytest.raises(ValueError, match="no image tokens"):
        vlm.generate(no_image, 2, knockout=vlmnb.Knockout())
    assert _state(vlm) == before


def test_load_unknown_model_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailable) as info:
        vlmnb.load("llava-hf/llava-1.5-7b-hf")
    text = str(info.value)
    assert "\n" not in text and "llava-hf/llava-1.5-7b-hf" in text and "download" in text
    with pytest.raises(FileNotFoundError, match="no config.json"):
        vlmnb.load(tmp_path)


def test_load_local_folder_roundtrip(vlm, tmp_path, make_input, image_token):
    from transformers import CLIPImageProcessor, LlavaProcessor

    vlm.model.save_pretrained(tmp_path)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                   tokenizer=vlm.tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   image_token="<image>").save_pretrained(tmp_path)
    loaded = vlmnb.load(tmp_path)
    assert loaded.family == "llava" and loaded.num_layers == vlm.num_layers
    assert loaded.image_token_id == image_token and str(loaded.device) == "cpu"
    inp = make_input()
    assert torch.equal(_logits(loaded, inp), _logits(vlm, inp))


def test_image_loading_errors(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(bad)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 3, 4, 5)))
    img = load_image(np.random.default_rng(0).random((8, 6, 3)))
    assert img.size == (6, 8) and img.mode == "RGB"


def test_static_cache_and_beam_search_guard(vlm, make_input):
    inp = make_input()
    ko = vlmnb.Knockout("image", ("query", "generated"), vlmnb.from_layer(1))
    rec = vlmnb.Record(image_rows=True)
    dynamic = vlm.generate(inp, 5, knockout=ko, record=rec)
    static = vlm.generate(inp, 5, knockout=ko, record=rec, cache_implementation="static")
    assert static.token_ids == dynamic.token_ids
    np.testing.assert_allclose(static.recording.fractions, dynamic.recording.fractions, atol=1e-5)
    np.testing.assert_allclose(static.recording.image_rows, dynamic.recording.image_rows, atol=1e-5)
    before = _state(vlm)
    with pytest.raises(RuntimeError, match="beam search"):
        vlm.generate(inp, 3, knockout=ko, num_beams=2)
    assert _state(vlm) == before
