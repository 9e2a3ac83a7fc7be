"""The attention explorer's data export: word grouping, quantisation bounds, payload size, HTML.

Uses a real generation of a tiny random LLaVA (built offline) recorded with image rows.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlmnb  # noqa: E402
from vlmnb.engine import tiny as tiny_models  # noqa: E402
from vlmnb.data import Sample  # noqa: E402
from vlmnb.views.explorer import (Explorer, decode_data, dequantize_rows, explore, explore_sample,  # noqa: E402
                            export_data, group_words, match_masks, quantize_rows,
                            window_slots)
from vlmnb.engine.vlm import token_offsets  # noqa: E402

MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(vlm, sample, explorer) from one recorded generation of a tiny LLaVA."""
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tiny_models.save("llava", tmp_path_factory.mktemp("tiny") / "llava")
    vlm = vlmnb.load(folder)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    sample = Sample(image_id="noise-0", image=image, masks=None)
    ex = explore_sample(vlm, sample, max_new_tokens=MAX_NEW)
    yield vlm, sample, ex
    torch.set_num_threads(threads)


def _geometry(vlm, sample):
    return vlm.prepare(sample.image, prompt="describe the image").geometry


# ----------------------------------------------------------------------------- words
def test_group_words_joins_sub_word_tokens_and_skips_punctuation():
    text = "the unbelievable car, don't stop."
    pieces = ["the", " un", "believ", "able", " car", ",", " don", "'t", " stop", "."]
    ends = np.cumsum([len(p) for p in pieces])
    offsets = [(int(e - len(p)), int(e)) for p, e in zip(pieces, ends)]
    assert "".join(pieces) == text
    words = group_words(text, offsets)
    assert [w.text for w in words] == ["the", "unbelievable", "car", "don't", "stop"]
    assert [w.tokens for w in words] == [(0,), (1, 2, 3), (4,), (6, 7), (8,)]
    assert all(text[w.start:w.end] == w.text for w in words)


def test_group_words_with_the_real_tokenizer_of_a_tiny_model(tiny):
    vlm, _, _ = tiny
    sentence = "describing backgrounds ; cloudy umbrellas"
    ids = vlm.tokenizer(sentence, add_special_tokens=False)["input_ids"]
    text, offsets = token_offsets(vlm.tokenizer, ids)
    words = group_words(text, offsets)
    assert [w.text for w in words] == text.replace(";", "").split()
    multi = [w for w in words if len(w.tokens) > 1]
    assert multi, "the tiny BPE should split at least one of these rare words"
    for w in words:  # the word's tokens spell exactly the word (plus a leading space)
        spelled = "".join(text[offsets[t][0]:offsets[t][1]] for t in w.tokens)
        assert spelled.strip() == w.text
    # every word token is used once, and the punctuation token by no word
    used = [t for w in words for t in w.tokens]
    assert len(used) == len(set(used))
    assert len(used) == sum(1 for s, e in offsets if text[s:e].strip() not in ("", ";"))


def test_masks_match_whole_phrases_and_coco_synonyms():
    text = "a large red circle at the top left, a red square and a man near a dining table"
    words = group_words(text, [(0, len(text))])
    names = ["red circle", "person", "dining table", "circle"]
    got = {w.text + str(i): (names[m] if m >= 0 else None) for i, (w, m) in enumerate(zip(words, match_masks(text, words, names)))}
    assert got["red2"] == got["circle3"] == "red circle"  # the longer name wins over "circle"
    assert got["red9"] is None and got["square10"] is None  # "red" alone names no mask
    assert got["man13"] == "person"  # COCO synonym
    assert got["dining16"] == got["table17"] == "dining table"
    assert got["large1"] is None


# ----------------------------------------------------------------------------- quantisation
def test_layer_windows_are_clipped_and_centred():
    assert window_slots(5, 1, 8) == (5, 5)
    assert window_slots(5, 3, 8) == (4, 6)
    assert window_slots(5, 4, 8) == (4, 7)
    assert window_slots(0, 5, 8) == (0, 2) and window_slots(7, 5, 8) == (5, 7)
    assert window_slots(3, 0, 8) == (0, 7)


def test_quantisation_error_is_bounded_by_half_a_step():
    rng = np.random.default_rng(1)
    rows = np.concatenate([
        rng.dirichlet(np.full(81, 0.2), size=(8, 20)),          # peaked attention
        0.01 + 1e-5 * rng.random((8, 5, 81)),                    # nearly uniform
        np.zeros((8, 1, 81)), np.full((8, 1, 81), 0.3),          # constant rows
    ], axis=1)
    q, offset, scale = quantize_rows(rows)
    assert q.dtype == np.uint8 and offset.dtype == scale.dtype == np.float32
    back = dequantize_rows(q, offset, scale)
    err = np.abs(back - rows)
    span = rows.max(-1) - rows.min(-1)
    bound = span / 510 + 1e-6 * np.abs(rows).max(-1) + 1e-12
    assert np.all(err <= bound[..., None]), float((err / bound[..., None]).max())
    # the bound is nearly reached (the test would notice a coarser quantiser)
    assert (err[:, :20] / bound[:, :20, None]).max() > 0.9
    # full contrast is kept: every non-constant row uses both ends of the byte range
    varying = span > 0
    assert np.all(q.min(-1)[varying] == 0) and np.all(q.max(-1)[varying] == 255)
    assert np.all(back[:, -1] == np.float32(0.3)) and np.all(back[:, -2] == 0)


def test_export_reproduces_the_recorded_attention_of_each_word(tiny):
    vlm, sample, ex = tiny
    gen = ex.generation
    rec = gen.recording
    data = ex.data
    decoded = decode_data(data)
    words = group_words(gen.text, gen.offsets)
    assert [w["t"] for w in data["words"]] == [w.text for w in words]
    assert data["layers"] == list(rec.layers)
    cols = np.asarray(data["token_index"])
    assert len(cols) == int(np.isfinite(_geometry(vlm, sample).boxes).all(1).sum())
    for layer in range(len(rec.layers)):
        for i, w in enumerate(words):
            truth = rec.image_rows[layer, list(w.tokens)].mean(0)[cols]
            step = (truth.max() - truth.min()) / 255
            np.testing.assert_allclose(decoded["attention"][layer, i], truth, rtol=0, atol=step / 2 + 1e-7)
            shares = rec.fractions[layer, list(w.tokens)].mean(0)
            np.testing.assert_allclose(decoded["shares"][layer, i], shares, rtol=0, atol=1 / 510 + 1e-7)
    assert any(w["n"] > 1 for w in data["words"]) == any(len(w.tokens) > 1 for w in words)


def test_payload_size_follows_the_documented_formula(tiny):
    _, _, ex = tiny
    d = ex.data
    L, W, N = len(d["layers"]), d["n_words"], d["n_tokens"]
    attention_bytes = sum(len(d[k]) for k in ("attn", "attn_offset", "attn_scale", "shares"))
    b64 = lambda n: 4 * math.ceil(n / 3)  # noqa: E731
    assert attention_bytes == b64(L * W * N) + 2 * b64(4 * L * W) + b64(4 * L * W)
    assert abs(attention_bytes - 4 / 3 * L * W * (N + 12)) <= 4 * 4
    html = ex.html()
    # the widget is its data, the image, the static figure and ~20 kB of script and style
    assert len(html) < attention_bytes + len(d["image"]) + 4 / 3 * len(ex.static_png) + 30_000


def test_layer_subset_and_bad_inputs(tiny):
    vlm, sample, ex = tiny
    gen, geometry = ex.generation, _geometry(vlm, sample)
    small = export_data(gen, geometry, layers=[1])
    full = decode_data(ex.data)["attention"]
    assert small["layers"] == [1]
    np.testing.assert_array_equal(decode_data(small)["attention"][0], full[1])
    with pytest.raises(ValueError, match="not recorded"):
        export_data(gen, geometry, layers=[5])
    with pytest.raises(ValueError, match="text= and offsets="):
        export_data(gen.recording, geometry)
    with pytest.raises(ValueError, match="image tokens"):
        bad = type(geometry)(geometry.image_size, geometry.boxes[:-1], geometry.views)
        export_data(gen, bad)
    # a size budget keeps every k-th layer, with a warning
    per_layer = sum(len(full_data) for full_data in (ex.data["attn"], ex.data["attn_offset"], ex.data["attn_scale"],
                                                     ex.data["shares"])) / 2
    with pytest.warns(UserWarning, match="one layer in 2"):
        halved = export_data(gen, geometry, budget_kb=1.5 * per_layer / 1000)
    assert halved["layers"] == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert export_data(gen, geometry, budget_kb=None)["layers"] == [0, 1]
        assert export_data(gen, geometry, layers=[0, 1], budget_kb=0.001)["layers"] == [0, 1]
    with pytest.raises(ValueError, match="number of layers"):
        export_data(gen, geometry, window=-1)
    with pytest.raises(ValueError, match="holds no exported layer"):
        export_data(gen, geometry, window=(3, 5))
    state = export_data(gen, geometry, window=(1, 5))["state"]  # only layer 1 of these was recorded
    assert window_slots(state["layer"], state["window"], 2) == (1, 1)
    # a (first, last) window sets the slider so that the widget averages exactly those layers
    state = export_data(gen, geometry, window=(0, 1))["state"]
    assert window_slots(state["layer"], state["window"], 2) == (0, 1)
    no_rows = vlm.generate(vlm.prepare(sample.image, "describe the image"), max_new_tokens=2,
                           record=vlmnb.Record(fractions=True))
    with pytest.raises(ValueError, match="image_rows=True"):
        export_data(no_rows, geometry)


# ----------------------------------------------------------------------------- HTML
def test_html_is_self_contained_with_unique_ids_and_a_static_fallback(tiny):
    from PIL import Image

    vlm, sample, ex = tiny
    gen = ex.generation
    geometry = _geometry(vlm, sample)
    # a hostile text must not end the data <script> early
    text = gen.text + " </script><b>x</b>"
    other = explore(gen.recording, sample.image, geometry, text=text, offsets=gen.offsets)
    assert other.element_id != ex.element_id
    twice = explore(gen, sample.image, geometry)
    assert twice.element_id != ex.element_id  # same data, still a different element
    page = other.html()
    assert page.count("</script>") == 2 and "<b>x</b>" not in page.split("vx-data")[1].split("</script>")[0]
    assert json.loads(page.split('class="vx-data">')[1].split("</script>")[0])["text"] == text
    for forbidden in ("http://", "https://", "//cdn", "import("):
        assert forbidden not in page.replace("http://www.w3.org/2000/svg", ""), forbidden
    bundle = ex._repr_mimebundle_()
    assert set(bundle) == {"text/html", "image/png", "text/plain"}
    png = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert png.format == "PNG" and png.width > 200
    assert bundle["image/png"] in bundle["text/html"]  # the same figure is the no-script view


def test_masks_outline_and_initial_word(tiny):
    from PIL import Image

    vlm, sample, ex = tiny
    gen = ex.generation
    words = [w["t"] for w in ex.data["words"]]
    target = words[-1]
    mask = np.zeros(sample.image.size[::-1], bool)
    mask[10:30, 20:40] = True
    e = explore(gen, sample.image, _geometry(vlm, sample), masks={target.lower(): [mask, np.zeros_like(mask)]})
    assert e.data["state"]["word"] == words.index(target)  # the first word with a mask is shown first
    assert [w["m"] for w in e.data["words"]].count(0) == [w.lower() for w in words].count(target.lower())
    outline = Image.open(io.BytesIO(base64.b64decode(e.data["masks"][0]["src"].split(",", 1)[1])))
    alpha = np.asarray(outline)[..., 3]
    assert outline.size == tuple(e.data["display"])
    sx = outline.size[0] / mask.shape[1]
    assert alpha[int(20 * sx), int(30 * sx)] == 50  # inside: faint fill
    assert alpha[int(20 * sx), int(20 * sx) + 1] == 255  # on the left edge: outline
    assert alpha[2, 2] == 0  # far outside: transparent
    with pytest.raises(ValueError, match="is 3x3 but the image"):
        explore(gen, sample.image, _geometry(vlm, sample), masks={target: np.ones((3, 3), bool)})


def test_explorer_type_and_repr(tiny):
    _, _, ex = tiny
    assert isinstance(ex, Explorer) and ex.generation is not None
    assert ex.data["title"] == "noise-0"
    assert f"{ex.data['n_words']} words" in repr(ex)
    assert vlmnb.explore is explore


def test_explore_sample_on_a_wordless_description_returns_a_note(tmp_path):
    """A chapter must finish on a model that writes no words (a tiny random one can)."""
    import vlmnb
    from vlmnb.engine import tiny
    from vlmnb.views.explorer import Note, explore_sample
    from PIL import Image

    tiny.save("llava", tmp_path / "m")
    vlm = vlmnb.load(tmp_path / "m")
    eos = vlm.processor.tokenizer.eos_token_id
    vlm.model.generation_config.eos_token_id = eos
    # force an immediate end of sequence: the lm head predicts EOS everywhere
    head = vlm.model.lm_head
    import torch
    with torch.no_grad():
        head.weight.zero_()
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
        head.weight[eos] = 1.0
    out = explore_sample(vlm, Image.new("RGB", (40, 40), "white"), max_new_tokens=4)
    assert isinstance(out, Note) and "no word to explore" in out._repr_html_()
