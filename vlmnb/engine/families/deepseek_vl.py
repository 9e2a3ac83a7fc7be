"""DeepSeek-VL (``deepseek_vl``, the SigLIP-only 1.3B models): the picture is resized so its long
side fits the vision encoder (384 px), padded to a square with the mean colour and cut into
16 px SigLIP patches; each patch is one image token (576 per image), projected by a two-layer
MLP. The tokens replace ``<image_placeholder>`` inside the user turn
(``User: <image_placeholder>...\\n\\nAssistant:``, after the default system prompt); there are
no begin/end-of-image markers.
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, check_shape, clip_box, pad_to_square, size_get, vision_patch
from vlmnb.engine.tinykit import PARTS, VISION, at_reference_sizes, finish, llama_config, make_tokenizer, seeded

SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
          "the user provides, and assist the user with a variety of tasks using natural language.")

TEMPLATE = PARTS + (
    "{{ bos_token }}{%- if messages[0]['role'] != 'system' -%}{{ '" + SYSTEM + "\\n\\n' }}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ parts(m['content'], '') + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'User: ' + parts(m['content'], '<image_placeholder>') + '\\n\\n' }}"
    "{%- else -%}{{ 'Assistant:' + parts(m['content'], '') + eos_token }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"]


def cells_on_image(grid: Grid, image_size) -> list:
    """``grid``'s feature entries, row-major; None for a cell that sees only padding (no pixel of
    the image), so it gets no box and belongs to no view."""
    W, H = image_size
    return [None if math.isnan(clip_box(grid.cell_box(r, c), W, H)[0]) else (g, r, c) for g, r, c in grid.cells()]


def square_geometry(family: str, config, processor, image_size, inputs):
    """DeepSeek-VL / Janus: long side resized to the square input size (short side rounded, at
    least ``min_size``), padded to a centred square; one token per vision patch."""
    ip = processor.image_processor
    W, H = image_size
    side = size_get(ip.size, "height")
    frame = Frame(W, H)
    if getattr(ip, "do_resize", True):
        delta = side / max(W, H)
        min_size = int(getattr(ip, "min_size", 14))
        frame = frame.resize(max(round(W * delta), min_size), max(round(H * delta), min_size))
    if getattr(ip, "do_pad", True):
        frame = pad_to_square(frame)
    check_shape(family, frame, inputs["pixel_values"].shape)
    p = vision_patch(config)
    grid = Grid("image", frame, int(round(frame.h)) // p, int(round(frame.w)) // p, p, p)
    return cells_on_image(grid, image_size)


def geometry(config, processor, image_size, inputs):
    """One padded square picture, one token per SigLIP patch (see :func:`square_geometry`)."""
    return square_geometry("deepseek_vl", config, processor, image_size, inputs)


def build_tiny(seed: int, view: int):
    """A tiny random DeepSeek-VL (SigLIP vision without its pooling head, Llama text). Its output
    head is not tied to the input embeddings: a tiny random model with tied ones only repeats the
    last prompt token, whatever the image."""
    from transformers import (DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLImageProcessor,
                              DeepseekVLProcessor, SiglipVisionConfig)

    tok = make_tokenizer(_SPECIALS, bos=_SPECIALS[0], eos=_SPECIALS[1], pad=_SPECIALS[1],
                         named={"image_token": "<image_placeholder>"}, chat_template=TEMPLATE)
    patch = view // 8
    image_processor = DeepseekVLImageProcessor(size={"height": view, "width": view},
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = DeepseekVLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATE,
                                    num_image_tokens=(view // patch) ** 2)
    config = DeepseekVLConfig(
        vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, vision_use_head=False, **VISION),
        text_config=llama_config(tok), image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    with seeded(seed):
        model = DeepseekVLForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """DeepSeek-VL-1.3B: one 384 px square, 16 px SigLIP patches, 576 tokens."""
    from transformers import DeepseekVLImageProcessor, DeepseekVLProcessor

    config, tok, template = at_reference_sizes(config, processor, 384, 16)
    ip = DeepseekVLImageProcessor(size={"height": 384, "width": 384}, image_mean=[0.5, 0.5, 0.5],
                                  image_std=[0.5, 0.5, 0.5])
    return config, DeepseekVLProcessor(ip, tok, chat_template=template, num_image_tokens=576)


FAMILY = Family(name="deepseek_vl", geometry=geometry, build_tiny=build_tiny,
                hub_ids=("deepseek-community/deepseek-vl-1.3b-chat", "deepseek-community/deepseek-vl-1.3b-base"),
                reference_sizes=reference_sizes)
