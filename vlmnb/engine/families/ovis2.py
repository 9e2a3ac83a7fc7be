"""Ovis2 (``ovis2``, the transformers-native ``-hf`` checkpoints): a thumbnail of the whole
image, then (when the image needs more than one) a grid of 448 px tiles chosen to cover 90% of
the image with as few tiles as possible. Each picture's 14 px patches are merged 2x2
(``hidden_stride``) into 256 tokens; every token is a probability vector over a visual
vocabulary, embedded through the visual embedding table. The prompt's ``<image>`` becomes
``<IMG_START>`` + thumbnail tokens + ``<IMG_GRID>`` + the tiles' tokens (``<IMG_COL>`` between
the tiles of a row, ``<IMG_ROW>`` between rows) + ``<IMG_END>``; those five structure tokens
get learned visual-indicator embeddings that do not depend on the pixels.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, size_get, vision_patch
from vlmnb.engine.tinykit import (CHATML_SPECIALS, TEXT, at_reference_sizes, chatml, finish, make_tokenizer,
                                  qwen2_config, seeded)

TEMPLATE = chatml("<image>\\n", system="You are a helpful assistant.")

#: the structure tokens, in the order of the config's ``visual_indicator_token_ids``
INDICATORS = ["<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"]


def markers(config, processor):
    """``<IMG_START>`` and ``<IMG_END>`` (``<IMG_GRID>``, ``<IMG_COL>``, ``<IMG_ROW>`` lie between)."""
    tok = processor.tokenizer
    return (tok.convert_tokens_to_ids("<IMG_START>"), tok.convert_tokens_to_ids("<IMG_END>"))


def tile_grid(processor, image_size) -> tuple[int, int]:
    """``(cols, rows)`` of the processor's tiling of an image of ``image_size`` ``(W, H)``."""
    from transformers.models.ovis2.image_processing_ovis2 import get_min_tile_covering_grid, get_optimal_tiled_canvas

    ip = processor.image_processor
    W, H = image_size
    if not (getattr(ip, "crop_to_patches", False) and ip.max_patches > 1):
        return 1, 1
    th, tw = size_get(ip.size, "height"), size_get(ip.size, "width")
    if getattr(ip, "use_covering_area_grid", True):
        return get_min_tile_covering_grid((H, W), target_patch_size=th, max_image_tiles=ip.max_patches)
    return get_optimal_tiled_canvas((H, W), (th, tw), ip.min_patches, ip.max_patches)


def geometry(config, processor, image_size, inputs):
    """Ovis2: the thumbnail (the whole image squashed to one tile), then the tiles of the image
    resized onto a cols x rows grid, row-major; ``hidden_stride`` merges patches."""
    ip = processor.image_processor
    W, H = image_size
    th, tw = size_get(ip.size, "height"), size_get(ip.size, "width")
    vis = config.vision_config.image_size
    vis_h, vis_w = (vis if isinstance(vis, (list, tuple)) else (vis, vis))
    p = vision_patch(config)
    stride = int(config.vision_config.hidden_stride)
    if (th, tw) != (vis_h, vis_w) or (vis_h // p) % stride:
        raise RuntimeError(f"ovis2: tiles of {tw}x{th} for a {vis_w}x{vis_h} vision encoder with {p}px patches "
                           f"merged {stride}x{stride} are not supported")
    per_side = vis_h // p // stride
    cell = float(p * stride)
    cols, rows = tile_grid(processor, image_size)
    n = int(inputs["pixel_values"].shape[0])
    expected = cols * rows + (1 if cols * rows > 1 else 0)
    if n != expected:
        raise RuntimeError(f"ovis2: expected {expected} pictures for a {cols}x{rows} tiling, the processor made {n}")
    whole = Frame(W, H).resize(tw, th)
    if cols * rows == 1:
        return Grid("image", whole, per_side, per_side, cell, cell).cells()
    entries = Grid("thumbnail", whole, per_side, per_side, cell, cell).cells()
    canvas = Frame(W, H).resize(tw * cols, th * rows)
    for i in range(cols * rows):
        r, c = divmod(i, cols)
        entries += Grid(f"tile_{r}_{c}", canvas.crop(c * tw, r * th, tw, th), per_side, per_side, cell, cell).cells()
    return entries


def build_tiny(seed: int, view: int):
    """A tiny random Ovis2 (tiles of ``view`` pixels + thumbnail, 16 tokens each, a visual
    vocabulary of 64 entries, Qwen2 text). The output head is not tied to the input embeddings: a
    tiny random model with tied ones only repeats the last prompt token, whatever the image."""
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2ImageProcessor, Ovis2Processor

    specials = CHATML_SPECIALS + ["<image>", "<IMG_ATOM>"] + INDICATORS
    tok = make_tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>", named={"image_token": "<IMG_ATOM>"},
                         chat_template=TEMPLATE)
    patch, stride = view // 8, 2
    seq = (view // patch // stride) ** 2
    image_processor = Ovis2ImageProcessor(size={"height": view, "width": view}, crop_to_patches=True, max_patches=6)
    processor = Ovis2Processor(image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATE,
                               image_seq_length=seq)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=view,
                  patch_size=patch, hidden_stride=stride, vocab_size=64, num_visual_indicator_tokens=5)
    config = Ovis2Config(vision_config=vision, text_config=qwen2_config(tok), hidden_size=TEXT["hidden_size"],
                         vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<IMG_ATOM>"),
                         visual_indicator_token_ids=[tok.convert_tokens_to_ids(t) for t in INDICATORS],
                         tie_word_embeddings=False)
    with seeded(seed):
        model = Ovis2ForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Ovis2 (transformers' port): 448 px tiles (up to 12, covering 90% of the image) plus a
    thumbnail, 14 px patches merged 2x2, 256 tokens per picture."""
    from transformers import Ovis2ImageProcessor, Ovis2Processor

    config, tok, template = at_reference_sizes(config, processor, 448, 14)
    ip = Ovis2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True)
    return config, Ovis2Processor(ip, tok, chat_template=template, image_seq_length=256)


FAMILY = Family(name="ovis2", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("thisisiron/Ovis2-2B-hf", "thisisiron/Ovis2-1B-hf"), reference_sizes=reference_sizes)
