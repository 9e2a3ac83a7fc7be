"""Spans of prepared inputs for every family's tiny model: partition, image span contents,
query text, rendering rules and errors."""
from __future__ import annotations

import numpy as np
import pytest

from vlmnb.engine import families
from vlmnb.engine import spans as S
from vlmnb.engine import tiny

FAMILIES = list(tiny.MODELS)


@pytest.fixture(params=FAMILIES)
def prepared(request, built, noise):
    model, processor = built(request.param)
    return S.prepare(model, processor, noise(56, 40), "describe the red circle"), model, processor


def test_spans_partition_the_prompt(prepared):
    prep, model, _ = prepared
    n = prep.input_ids.shape[1]
    s = prep.spans
    joined = np.concatenate([s.system, s.image, s.query])
    assert np.array_equal(joined, np.arange(n))
    assert len(s.generated) == 0
    assert s.prompt_length == n
    assert len(s.image) > 0 and len(s.query) > 0
    # only a prompt that starts with the image (PaliGemma's, image tokens before the BOS) has no system span
    assert len(s.system) > 0 or prep.input_ids[0, 0] == S.image_token_id(model.config)


def test_image_span_is_image_tokens_plus_structure(prepared):
    prep, model, processor = prepared
    ids = prep.input_ids[0].numpy()
    img_id = S.image_token_id(model.config)
    image_ids = ids[prep.spans.image]
    # every image token is inside the image span, none outside it
    assert (ids == img_id).sum() == (image_ids == img_id).sum()
    # the span starts and ends with an image token or a family marker
    markers = families.get(prep.family).marker_ids(model.config, processor)
    assert image_ids[0] in markers | {img_id} and image_ids[-1] in markers | {img_id}
    # non-image-token positions of the span are structure tokens without a box
    structure = image_ids != img_id
    assert np.isnan(prep.geometry.boxes[structure]).all()
    assert len(prep.geometry.boxes) == len(prep.spans.image)
    # exact structure per family: begin/end markers, or Idefics3's per-crop tags
    n_image = int((image_ids == img_id).sum())
    n_markers = {"qwen2_vl": 2, "qwen2_5_vl": 2, "qwen3_vl": 2, "internvl": 2, "gemma3": 2, "janus": 2,
                 "glm4v": 2, "got_ocr2": 2, "internvl2": 2}.get(prep.family, 0)
    if prep.family in ("idefics3", "smolvlm"):
        tok = processor.tokenizer
        crops = len(prep.geometry.views) - 1
        assert (image_ids == tok.convert_tokens_to_ids("<fake_token_around_image>")).sum() == crops + 2
        assert sum((image_ids == tok.convert_tokens_to_ids(f"<row_{r}_col_{c}>")).sum()
                   for r in range(1, 7) for c in range(1, 7)) == crops
        assert (image_ids == tok.convert_tokens_to_ids("<global-img>")).sum() == 1
    elif prep.family == "mistral3":
        # Pixtral: [IMG_BREAK] after every row of tokens but the last, [IMG_END] after the last
        tok = processor.tokenizer
        rows = prep.geometry.view().rows
        assert (image_ids == tok.convert_tokens_to_ids("[IMG_BREAK]")).sum() == rows - 1
        assert image_ids[-1] == tok.convert_tokens_to_ids("[IMG_END]")
        assert len(image_ids) == n_image + rows
    elif prep.family == "ovis2":  # start, thumbnail, grid, tiles with column / row separators, end
        tok = processor.tokenizer
        tiles = [v for v in prep.geometry.views if v.name.startswith("tile_")]
        rows = len({v.name.split("_")[1] for v in tiles}) or 1
        count = {t: int((image_ids == tok.convert_tokens_to_ids(t)).sum()) for t in
                 ("<IMG_START>", "<IMG_GRID>", "<IMG_END>", "<IMG_COL>", "<IMG_ROW>")}
        assert count == {"<IMG_START>": 1, "<IMG_GRID>": 1, "<IMG_END>": 1,
                         "<IMG_COL>": len(tiles) - rows if tiles else 0, "<IMG_ROW>": rows - 1}
        assert len(image_ids) == n_image + sum(count.values())
    elif prep.family in ("idefics2", "aya_vision", "cohere2_vision"):
        # the structure tokens, in order, and one run of image tokens per picture between them
        views = len(prep.geometry.views)
        expected = {
            "idefics2": "<fake_token_around_image>" * (views + 1),
            "aya_vision": "<|START_OF_IMG|>" + "".join(f"TILE_{i}" for i in range(1, views)) + "TILE_GLOBAL<|END_OF_IMG|>",
            "cohere2_vision": "<|START_OF_IMG|>" + "<|IMG_LINE_BREAK|>" * views + "<|END_OF_IMG|>",
        }[prep.family]
        assert "".join(processor.tokenizer.convert_ids_to_tokens(image_ids[structure].tolist())) == expected
        runs = np.flatnonzero(np.diff(np.concatenate([[0], (~structure).astype(int), [0]])) == 1)
        assert len(runs) == views and n_image % views == 0
    else:
        assert len(image_ids) == n_image + n_markers


def test_query_holds_the_prompt_words_and_the_generation_prompt(prepared):
    prep, _, processor = prepared
    tok = processor.tokenizer
    query = tok.decode(prep.input_ids[0, prep.spans.query])
    assert "describe the red circle" in query
    system = tok.decode(prep.input_ids[0, prep.spans.system])
    assert "describe" not in system
    # the template's text after the user's words (end of turn, assistant role) ends the query
    # (a processor without a chat template renders nothing after them)
    rendered = S.render_prompt(processor, "QQ", prep.family)
    tail = rendered[rendered.rindex("QQ") + 2:]
    assert tail.strip() or not processor.chat_template
    assert query.rstrip().endswith(tail.strip())


def test_inputs_are_attributes_and_run_the_model(prepared):
    prep, model, _ = prepared
    assert prep.input_ids is prep.inputs["input_ids"]
    with pytest.raises(AttributeError):
        prep.not_an_input
    import torch

    with torch.no_grad():
        out = model(**prep.inputs)
    assert out.logits.shape[1] == prep.input_ids.shape[1]


def test_spans_helpers():
    s = S.Spans(system=[0, 1], image=[2, 3, 4], query=[5])
    assert s.lengths() == {"system": 2, "image": 3, "query": 1, "generated": 0}
    g = s.with_generated([6, 7])
    assert list(g.generated) == [6, 7] and len(s.generated) == 0
    assert g.span_of(3) == "image" and g.span_of(7) == "generated"
    with pytest.raises(ValueError, match="unknown span"):
        s.positions("images")


def test_detect_family_names_supported_list(built):
    model, _ = built("llava")
    assert S.detect_family(model.config) == "llava"

    class Config:
        model_type = "blip_2"

    with pytest.raises(ValueError, match="blip_2.*llava.*gemma3"):
        S.detect_family(Config())


def test_prompt_without_image_token_is_a_clear_error(built, noise):
    model, processor = built("llava")
    text_only = "{% for m in messages %}USER: {% for p in m['content'] if p['type'] == 'text' %}{{ p['text'] }}{% endfor %}{% endfor %} ASSISTANT:"
    saved = processor.chat_template
    try:
        processor.chat_template = text_only
        with pytest.raises(ValueError, match="no image placeholder"):
            S.prepare(model, processor, noise(32, 32), "describe the image")
    finally:
        processor.chat_template = saved
    with pytest.raises(ValueError, match="no image token"):
        S.compute_spans([1, 2, 3], image_token=9)


def test_preformatted_prompt_is_used_verbatim(built, noise):
    model, processor = built("llava")
    prep = S.prepare(model, processor, noise(32, 32), "USER: <image>\nWhat is this? ASSISTANT:")
    assert prep.text == "USER: <image>\nWhat is this? ASSISTANT:"
    assert "What is this?" in processor.tokenizer.decode(prep.input_ids[0, prep.spans.query])


def test_image_path_and_array_inputs(tmp_path, built, noise):
    model, processor = built("llava")
    img = noise(40, 30)
    img.save(tmp_path / "a.png")
    a = S.prepare(model, processor, tmp_path / "a.png", "describe")
    b = S.prepare(model, processor, np.asarray(img), "describe")
    assert np.array_equal(a.pixel_values.numpy(), b.pixel_values.numpy())
    assert a.geometry.image_size == (40, 30)
    with pytest.raises(FileNotFoundError):
        S.prepare(model, processor, tmp_path / "missing.png", "describe")


def test_fallback_prompt_without_chat_template(built, noise):
    model, processor = built("qwen2_vl")
    saved = processor.chat_template
    try:
        processor.chat_template = None
        prep = S.prepare(model, processor, noise(32, 32), "what colour is it")
    finally:
        processor.chat_template = saved
    assert prep.text == "<|image_pad|>\nwhat colour is it"
    assert len(prep.spans.system) == 0 or prep.input_ids[0, 0] == processor.tokenizer.bos_token_id
    assert "what colour is it" in processor.tokenizer.decode(prep.input_ids[0, prep.spans.query])


def test_paligemma_prompt_is_image_then_bos_then_text(built, noise):
    """PaliGemma's processor has no chat template: the image tokens come first, then the BOS, the
    text and a newline (its real prompt format), and no training labels reach the inputs."""
    model, processor = built("paligemma")
    prep = S.prepare(model, processor, noise(32, 32), "caption en")
    tok = processor.tokenizer
    ids = prep.input_ids[0].tolist()
    n = len(prep.spans.image)
    assert prep.text == "<image>caption en" and len(prep.spans.system) == 0
    assert ids[:n] == [S.image_token_id(model.config)] * n and ids[n] == tok.bos_token_id
    assert tok.decode(ids[n + 1:]) == "caption en\n"
    assert "labels" not in prep.inputs and prep.token_type_ids.sum() == 0


def test_to_casts_floating_inputs_only(built, noise):
    import torch

    model, processor = built("llava")
    prep = S.prepare(model, processor, noise(32, 32), "describe")
    moved = prep.to(dtype=torch.float64)
    assert moved.pixel_values.dtype == torch.float64 and moved.input_ids.dtype == prep.input_ids.dtype
    assert prep.pixel_values.dtype == torch.float32
    assert moved.spans is prep.spans and moved.geometry is prep.geometry


@pytest.mark.parametrize("family", ["got_ocr2"])
def test_untemplated_prompt_is_the_checkpoints_own_format(family, built):
    """Checkpoints without a chat template get their family's own prompt format: the same text
    as the tiny processor's template, which writes the real format."""
    import copy

    _, processor = built(family)
    bare = copy.deepcopy(processor)
    bare.chat_template = None
    assert S.render_prompt(bare, "describe the image", family) == \
        S.render_prompt(processor, "describe the image", family)
