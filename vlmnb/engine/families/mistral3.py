"""Mistral-Small-3.1 / 3.2 (``mistral3``, Pixtral vision): the picture is resized, keeping its
aspect ratio, so that its longest edge is at most ``longest_edge`` and each side is a whole number
of ``patch x merge`` cells (rounded up); the vision encoder sees it at that size and a learned
merger joins 2x2 patches into one token. The prompt's ``[IMG]`` becomes one ``[IMG]`` per token,
row by row, with ``[IMG_BREAK]`` after every row but the last and ``[IMG_END]`` after the last
(the prompt itself is ``<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST][IMG]...[/INST]``).
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, check_shape, size_get, vision_patch
from vlmnb.engine.tinykit import TEXT, PARTS, VISION, at_reference_sizes, finish, make_tokenizer, seeded


TEMPLATE = PARTS + (
    "{{ '<s>' }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = parts(messages[0]['content'], '') -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = 'You are a helpful assistant.' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{ '[SYSTEM_PROMPT]' + system + '[/SYSTEM_PROMPT]' }}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}{{ '[INST]' + parts(m['content'], '[IMG]') + '[/INST]' }}"
    "{%- else -%}{{ parts(m['content'], '') + '</s>' }}{%- endif -%}"
    "{%- endfor -%}"
)


def markers(config, processor):
    """``[IMG_BREAK]`` (after every row of tokens) and ``[IMG_END]`` (after the last row)."""
    return (getattr(processor, "image_break_token_id", None), getattr(processor, "image_end_token_id", None))


def cell_size(config, processor) -> int:
    """Pixels per token side: the vision patch times the merge (the processor aligns to it)."""
    patch = int(getattr(processor, "patch_size", None) or vision_patch(config))
    merge = int(getattr(processor, "spatial_merge_size", None) or config.spatial_merge_size)
    return patch * merge


def resized_size(image_size, size, cell: int) -> tuple[int, int]:
    """``(w, h)`` the processor resizes a ``(W, H)`` picture to: scaled down (floored) to fit
    ``size`` if it is larger, then each side rounded up to whole cells (Pixtral's resize)."""
    W, H = image_size
    if size_get(size, "longest_edge"):
        max_h = max_w = size_get(size, "longest_edge")
    elif size_get(size, "height") and size_get(size, "width"):
        max_h, max_w = size_get(size, "height"), size_get(size, "width")
    else:
        raise ValueError(f"mistral3: unsupported image processor size {size!r}")
    ratio = max(H / max_h, W / max_w)
    h, w = (int(math.floor(H / ratio)), int(math.floor(W / ratio))) if ratio > 1 else (H, W)
    return ((w - 1) // cell + 1) * cell, ((h - 1) // cell + 1) * cell


def geometry(config, processor, image_size, inputs):
    """One picture resized to whole ``patch * merge`` cells (longest edge bounded); one token per
    cell, row-major (the ``[IMG_BREAK]`` / ``[IMG_END]`` tokens between rows see no patch)."""
    ip = processor.image_processor
    if getattr(ip, "do_center_crop", False):
        raise ValueError("mistral3: center-cropping image processors are not supported; use do_center_crop=False")
    cell = cell_size(config, processor)
    frame = Frame(*image_size)
    if getattr(ip, "do_resize", True):
        frame = frame.resize(*resized_size(image_size, ip.size, cell))
    # the batch is padded to its largest picture; image_sizes holds this picture's own size
    check_shape("mistral3", frame, tuple(int(v) for v in inputs["image_sizes"][0]))
    rows, cols = int(round(frame.h)) // cell, int(round(frame.w)) // cell
    return Grid("image", frame, rows, cols, cell, cell).cells()


def build_tiny(seed: int, view: int):
    """A tiny random Mistral3 (Pixtral vision, Mistral text); pictures up to two views wide."""
    from transformers import (MistralConfig, Mistral3Config, Mistral3ForConditionalGeneration,
                              PixtralImageProcessor, PixtralProcessor, PixtralVisionConfig)

    specials = ["<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tok = make_tokenizer(specials, bos="<s>", eos="</s>", pad="<pad>", chat_template=TEMPLATE)
    patch, merge = view // 8, 2
    longest = 2 * view
    image_processor = PixtralImageProcessor(size={"longest_edge": longest}, patch_size={"height": patch, "width": patch})
    processor = PixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                 spatial_merge_size=merge, chat_template=TEMPLATE)
    text = MistralConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, sliding_window=None, **TEXT)
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(image_size=longest, patch_size=patch, **VISION), text_config=text,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=merge, vision_feature_layer=-1,
        tie_word_embeddings=False,  # as the real checkpoints (a tied head makes a tiny model echo its last token)
    )
    with seeded(seed):
        model = Mistral3ForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Mistral-Small-3.1: longest edge 1540 px, 14 px patches merged 2x2 (28 px per token)."""
    from transformers import PixtralImageProcessor, PixtralProcessor

    config, tok, template = at_reference_sizes(config, processor, 1540, 14)
    config.spatial_merge_size = 2
    ip = PixtralImageProcessor(size={"longest_edge": 1540}, patch_size={"height": 14, "width": 14})
    return config, PixtralProcessor(ip, tok, patch_size=14, spatial_merge_size=2, chat_template=template)


FAMILY = Family(name="mistral3", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("mistralai/Mistral-Small-3.1-24B-Instruct-2503", "mistralai/Mistral-Small-3.2-24B-Instruct-2506"),
                reference_sizes=reference_sizes)
