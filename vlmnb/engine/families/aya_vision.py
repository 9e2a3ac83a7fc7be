"""Aya Vision (``aya_vision``): the image resized onto a cols x rows canvas of square tiles (the
arrangement closest to its aspect ratio, at most ``max_patches`` tiles) cut row-major, then a
thumbnail of the whole image when there is more than one tile; each SigLIP picture's patch grid is
pixel-shuffled (``downsample_factor`` x ``downsample_factor`` patches per token) and projected
into the Cohere2 decoder. The prompt's ``<image>`` becomes ``<|START_OF_IMG|>``, then
``TILE_1`` ... ``TILE_{n-1}`` each before its tile's ``<|IMG_PATCH|>`` tokens, ``TILE_GLOBAL`` before
the thumbnail's, and ``<|END_OF_IMG|>``.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, size_get, vision_patch
from vlmnb.engine.tinykit import PARTS, TEXT, VISION, at_reference_sizes, finish, make_tokenizer, seeded


def cohere_template(image: str, system: str) -> str:
    """A Cohere chat template (``<|START_OF_TURN_TOKEN|><|USER_TOKEN|> ... <|END_OF_TURN_TOKEN|>``,
    the reply after ``<|CHATBOT_TOKEN|><|START_RESPONSE|>``) writing ``image`` for an image part;
    a default system turn when the conversation has none."""
    return PARTS + (
        "{{ bos_token }}{%- if messages[0]['role'] != 'system' -%}"
        "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" + system + "<|END_OF_TURN_TOKEN|>' }}{%- endif -%}"
        "{%- for m in messages -%}{{ '<|START_OF_TURN_TOKEN|>' }}"
        "{%- if m['role'] == 'user' -%}{{ '<|USER_TOKEN|>' + parts(m['content'], '" + image + "') }}"
        "{%- elif m['role'] == 'system' -%}{{ '<|SYSTEM_TOKEN|>' + parts(m['content'], '') }}"
        "{%- else -%}{{ '<|CHATBOT_TOKEN|><|START_RESPONSE|>' + parts(m['content'], '') + '<|END_RESPONSE|>' }}"
        "{%- endif -%}{{ '<|END_OF_TURN_TOKEN|>' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>' }}"
        "{%- endif -%}"
    )


TEMPLATE = cohere_template("<image>", "You are Aya Vision, a helpful assistant.")

#: the special tokens of a Cohere chat tokenizer
COHERE_SPECIALS = ["<PAD>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
                   "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|START_RESPONSE|>",
                   "<|END_RESPONSE|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]


def markers(config, processor):
    """``<|START_OF_IMG|>`` and ``<|END_OF_IMG|>``."""
    tok = processor.tokenizer
    return tuple(tok.convert_tokens_to_ids(t) for t in (processor.start_of_img_token, processor.end_of_img_token))


def tiles_and_thumbnail(family: str, config, processor, image_size, inputs, canvas, per_side: int, cell: float):
    """Entries of a tiled picture: the image resized onto ``canvas((H, W), (th, tw), min, max) ->
    (cols, rows)`` tiles cut row-major, then a thumbnail (the whole image resized to one tile)
    when there is more than one tile; each picture a ``per_side`` x ``per_side`` grid of
    ``cell``-pixel tokens. The tile size must be the vision encoder's input size."""
    ip = processor.image_processor
    W, H = image_size
    th, tw = size_get(ip.size, "height"), size_get(ip.size, "width")
    vis = config.vision_config.image_size
    vis_h, vis_w = (vis if isinstance(vis, (list, tuple)) else (vis, vis))
    if (th, tw) != (vis_h, vis_w):
        raise RuntimeError(f"{family}: tiles of {tw}x{th} for a {vis_w}x{vis_h} vision encoder are not supported")
    n = int(inputs["pixel_values"].shape[0])
    cols = rows = 1
    if getattr(ip, "crop_to_patches", False) and ip.max_patches > 1:
        cols, rows = canvas((H, W), (th, tw), ip.min_patches, ip.max_patches)
    grids = []
    if cols * rows == 1:
        grids.append(Grid("image", Frame(W, H).resize(tw, th), per_side, per_side, cell, cell))
    else:
        tiled = Frame(W, H).resize(tw * cols, th * rows)
        for i in range(cols * rows):
            r, c = divmod(i, cols)
            grids.append(Grid(f"tile_{r}_{c}", tiled.crop(c * tw, r * th, tw, th), per_side, per_side, cell, cell))
        grids.append(Grid("thumbnail", Frame(W, H).resize(tw, th), per_side, per_side, cell, cell))
    if n != len(grids):
        raise RuntimeError(f"{family}: expected {len(grids)} pictures for a {cols}x{rows} tiling, got {n}")
    return [entry for grid in grids for entry in grid.cells()]


def geometry(config, processor, image_size, inputs):
    """Tiles then thumbnail (transformers' GotOcr2 tiling); pixel shuffle merges
    ``downsample_factor`` x ``downsample_factor`` patches per token."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    p = vision_patch(config)
    factor = int(config.downsample_factor)
    vis = config.vision_config.image_size
    side = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    return tiles_and_thumbnail("aya_vision", config, processor, image_size, inputs, get_optimal_tiled_canvas,
                               (side // p) // factor, float(p * factor))


def cohere2_config(tok, **extra):
    """A tiny Cohere2 text config for tokenizer ``tok`` (a sliding-window layer, then a global one).

    Its output head is untied (the checkpoints tie it to the input embeddings): tied, a two-layer
    random model only repeats the last prompt token, whatever the image."""
    from transformers import Cohere2Config

    return Cohere2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, sliding_window=512, tie_word_embeddings=False,
                         layer_types=["sliding_attention", "full_attention"], **{**TEXT, **extra})


def build_tiny(seed: int, view: int):
    """A tiny random Aya Vision (tiles of ``view`` pixels + thumbnail, SigLIP, Cohere2 text)."""
    from transformers import (AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor,
                              GotOcr2ImageProcessor, SiglipVisionConfig)

    tok = make_tokenizer(COHERE_SPECIALS + ["TILE", "TILE_GLOBAL"], bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>",
                         pad="<PAD>", add_bos=True, chat_template=TEMPLATE)
    patch = view // 8
    factor = 2
    image_processor = GotOcr2ImageProcessor(size={"height": view, "width": view}, crop_to_patches=True,
                                            min_patches=1, max_patches=6)
    processor = AyaVisionProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch, img_size=view,
                                   downsample_factor=factor, chat_template=TEMPLATE)
    config = AyaVisionConfig(
        vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, vision_use_head=False, **VISION),
        text_config=cohere2_config(tok), downsample_factor=factor, tie_word_embeddings=False,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
    )
    with seeded(seed):
        model = AyaVisionForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Aya Vision 8B: 364 px tiles (up to 12) plus a thumbnail, 14 px SigLIP2 patches, pixel
    shuffle by 2 (169 tokens per tile)."""
    from transformers import AyaVisionProcessor, GotOcr2ImageProcessor

    config, tok, template = at_reference_sizes(config, processor, 364, 14)
    config.downsample_factor = 2
    ip = GotOcr2ImageProcessor(size={"height": 364, "width": 364}, crop_to_patches=True, min_patches=1,
                               max_patches=12)
    return config, AyaVisionProcessor(ip, tok, patch_size=14, img_size=364, downsample_factor=2,
                                      chat_template=template)


FAMILY = Family(name="aya_vision", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("CohereLabs/aya-vision-8b", "CohereLabs/aya-vision-32b"), reference_sizes=reference_sizes)
