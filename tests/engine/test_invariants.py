"""The invariant suite: every property vlmnb's results rest on, checked on a tiny random model of
every registered family (vlmnb.engine.tiny), offline. One suite, parametrized over the registry:
a new family file is tested by it as soon as it is registered.

- no knockout = the model's own ``generate`` token for token, and its own forward's logits;
- ``from_layer(l)`` leaves the hidden states entering layers <= l bit-identical;
- blocking image -> (query, generated) in all layers makes the text independent of the pixels;
- cached, uncached and teacher-forced runs agree (ids, logits, recordings);
- recorded attention fractions equal an eager run's ``output_attentions`` within 1e-5;
- a left-padded batch equals single runs;
- batched sweep rows (shared prefix, early stop) equal single runs;
- a compressed context at k = 100% reproduces the full-context logits;
- geometry: a painted square changes exactly the image tokens whose boxes cover it, at the tiny
  sizes and at the reference checkpoint's sizes.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlmnb  # noqa: E402
from vlmnb.engine import batched, families  # noqa: E402
from vlmnb.engine.compress import describe  # noqa: E402
from vlmnb.engine.record import Record  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402
from vlmnb.experiments import sweep  # noqa: E402

tiny = pytest.importorskip("vlmnb.engine.tiny")

FAMILIES = list(families.NAMES)
NEW = 8


def _image(seed, size=(56, 40)):
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module", params=FAMILIES)
def family_vlm(request):
    family = request.param
    try:
        model, processor = tiny.build(family)
    except Exception as exc:  # noqa: BLE001 - report which family cannot be built, and why
        pytest.skip(f"vlmnb.engine.tiny cannot build {family}: {type(exc).__name__}: {exc}")
    return VLM(model, processor, name=f"tiny-{family}")


def _eager_copy(vlm):
    model = copy.deepcopy(vlm.model)
    model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})
    return model


def test_no_knockout_is_the_models_own_generate(family_vlm):
    """An empty knockout and a recording change nothing: the ids of the model's own greedy
    ``generate``, token for token."""
    vlm = family_vlm
    inp = vlm.prepare(_image(8))
    P = inp.input_ids.shape[1]
    with torch.no_grad():
        own = vlm.model.generate(**vlm.to_device(dict(inp.inputs)), max_new_tokens=NEW, do_sample=False,
                                 generation_config=copy.deepcopy(vlm.model.generation_config))
    own_ids = own[0, P:].tolist()  # ends at the first end-of-sequence id (batch of one: no padding)
    ids = vlm.generate(inp, NEW).token_ids
    assert ids == own_ids and len(ids) > 0
    recorded = vlm.generate(inp, NEW, knockout=vlmnb.Knockout(src={0: []}, dst="query"), record=vlmnb.Record())
    assert recorded.token_ids == own_ids


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
    try:
        model, processor = tiny.build("gemma3")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"vlmnb.engine.tiny cannot build gemma3: {exc}")
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


# ----------------------------------------------------------------------------- batched sweeps


def _single_runs(vlm, inp, row_knockouts, new=NEW):
    return [vlm.generate(inp, max_new_tokens=new, knockout=k or None).token_ids for k in row_knockouts]


def _sweep_rows(vlm, inp):
    configs = [c for c in sweep.knockout_configs(vlm.num_layers, stride=1, window=(1, 1)) if c.kind != "top-k"]
    return configs, [c.knockouts(None, inp.spans.image) for c in configs]


def test_shared_prefix_rows_equal_single_runs(family_vlm):
    """The unexpanded shared prefix (and recording the baseline row only)."""
    vlm = family_vlm
    inp = vlm.prepare(_image(1), prompt="describe the image")
    configs, knockouts = _sweep_rows(vlm, inp)
    spec = Record(fractions=False, image_rows=True)
    outs = batched.generate_rows(vlm, inp, knockouts, 6, record=spec, record_rows=[0])
    for config, ko, out in zip(configs, knockouts, outs):
        assert out.token_ids == vlm.generate(inp, max_new_tokens=6, knockout=ko or None).token_ids, config.name
    alone = vlm.generate(inp, max_new_tokens=6, record=spec).recording.image_rows
    assert np.allclose(outs[0].recording.image_rows, alone, atol=1e-6)
    assert all(out.recording is None for out in outs[1:])


def test_early_stopped_rows_equal_single_runs(family_vlm, eos_splitting_rows):
    """Rows ending at different steps leave the batch; ids equal single runs."""
    vlm = family_vlm
    inp = vlm.prepare(_image(1), prompt="describe the image")
    _, rows = _sweep_rows(vlm, inp)
    saved = vlm.model.generation_config.eos_token_id
    try:
        eos_splitting_rows(vlm, inp, rows, NEW)
        expected = _single_runs(vlm, inp, rows)
        got = batched.generate_rows(vlm, inp, rows, NEW, record=Record(fractions=False, image_rows=True),
                                    record_rows=[0])
        plain = batched.generate_rows(vlm, inp, [None] * 3, NEW)  # no intervention: the plain cache drops rows
    finally:
        vlm.model.generation_config.eos_token_id = saved
    # a tiny model may write the same text under every knockout: then all rows end together
    if len({tuple(ids) for ids in expected}) > 1:
        assert len({len(ids) for ids in expected}) > 1
    assert [g.token_ids for g in got] == expected
    assert all(g.token_ids == expected[0] for g in plain)


# ----------------------------------------------------------------------------- compressed contexts


def test_full_context_compression_reproduces_full_forward(family_vlm):
    """k=100% keeps every prompt token: a question's logits equal one plain forward pass over
    prompt + question (positions, rotary phases, M-RoPE offsets and caching all right)."""
    vlm = family_vlm
    ip = describe(vlm, _image(9), max_new_tokens=4)
    ctx = ip.compress(k=1.0)
    assert ctx.num_tokens == ip.prompt_length
    ids = ctx.question_ids("is there a dog?")
    logits, generated = ctx.run(ids, max_new_tokens=4, stop_at_eos=False)
    full = vlm.forward(ip.prepared, continuation_ids=ids + generated)
    P, n = ip.prompt_length, len(ids)
    assert (logits[0] - full[0, P:P + n]).abs().max().item() <= 1e-4
    expected = full[0, P + n - 1:P + n - 1 + len(generated)].argmax(-1).tolist()
    assert generated == expected and len(generated) == 4


# ----------------------------------------------------------------------------- geometry


PAINT_CASES = [((56, 40), (4, 4, 40, 16)), ((96, 96), (60, 8, 92, 40)),
               pytest.param((40, 72), (24, 40, 40, 72), marks=pytest.mark.slow)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size,rect", PAINT_CASES)
def test_painted_region_changes_exactly_the_tokens_that_cover_it(family, size, rect, built, make_local,
                                                                 assert_paint_localised):
    model, processor = built(family)
    assert_paint_localised(make_local(copy.deepcopy(model)), processor, size, rect)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_painted_region_at_the_reference_sizes(family, built, make_local, assert_paint_localised):
    """A random model at the reference checkpoint's image sizes (tiny widths)."""
    model, small = built(family)
    entry = families.get(family)
    config, processor = entry.reference_sizes(model.config, small)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        real_sized = type(model)(config).eval()
    entry.init_random(real_sized)
    assert_paint_localised(make_local(real_sized), processor, (500, 360), (40, 200, 300, 330))
