"""Command A Vision (``cohere2_vision``): the image resized onto a cols x rows canvas of square
tiles (the least-upscaling arrangement of at most ``max_patches`` tiles) cut row-major, then a
thumbnail of the whole image when there is more than one tile; each SigLIP picture's patch grid is
pixel-shuffled (``downsample_factor`` x ``downsample_factor`` patches per token) and projected
into the Cohere2 decoder. The prompt's ``<|IMG_PATCH|>`` becomes ``<|START_OF_IMG|>``, every
picture's ``<|IMG_PATCH|>`` tokens each followed by ``<|IMG_LINE_BREAK|>``, and ``<|END_OF_IMG|>``.
"""
from __future__ import annotations

from vlmnb.engine.families.aya_vision import COHERE_SPECIALS, cohere2_config, cohere_template, tiles_and_thumbnail
from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import vision_patch
from vlmnb.engine.tinykit import VISION, at_reference_sizes, finish, make_tokenizer, seeded


TEMPLATE = cohere_template("<|IMG_PATCH|>", "You are Command A Vision, a helpful assistant.")


def markers(config, processor):
    """``<|START_OF_IMG|>`` and ``<|END_OF_IMG|>``."""
    tok = processor.tokenizer
    return tuple(tok.convert_tokens_to_ids(t) for t in (processor.boi_token, processor.eoi_token))


def geometry(config, processor, image_size, inputs):
    """Tiles then thumbnail (the Cohere2 Vision tiling); pixel shuffle merges ``downsample_factor``
    x ``downsample_factor`` patches per token."""
    from transformers.models.cohere2_vision.image_processing_cohere2_vision import get_optimal_tiled_canvas

    p = vision_patch(config)
    factor = int(config.downsample_factor)
    vis = config.vision_config.image_size
    side = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    per_side = (side // p) // factor
    tokens_per_tile = int(processor.patch_size) ** 2
    if tokens_per_tile != per_side ** 2:
        raise RuntimeError(f"cohere2_vision: the processor writes {tokens_per_tile} tokens per tile but the model "
                           f"makes {per_side ** 2}; the processor's patch_size must be {per_side}")
    return tiles_and_thumbnail("cohere2_vision", config, processor, image_size, inputs, get_optimal_tiled_canvas,
                               per_side, float(p * factor))


def build_tiny(seed: int, view: int):
    """A tiny random Command A Vision (tiles of ``view`` pixels + thumbnail, SigLIP, Cohere2 text)."""
    from transformers import (Cohere2VisionConfig, Cohere2VisionForConditionalGeneration,
                              Cohere2VisionImageProcessor, Cohere2VisionProcessor, SiglipVisionConfig)

    named = {"boi_token": "<|START_OF_IMG|>", "eoi_token": "<|END_OF_IMG|>", "image_token": "<|IMG_PATCH|>",
             "img_line_break_token": "<|IMG_LINE_BREAK|>"}
    tok = make_tokenizer(COHERE_SPECIALS, bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", pad="<PAD>", add_bos=True,
                         named=named, chat_template=TEMPLATE)
    patch = view // 8
    factor = 2
    # the processor's patch_size is the tokens per tile side after the pixel shuffle
    image_processor = Cohere2VisionImageProcessor(size={"height": view, "width": view}, crop_to_patches=True,
                                                  min_patches=1, max_patches=6, patch_size=view // patch // factor)
    processor = Cohere2VisionProcessor(image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATE)
    config = Cohere2VisionConfig(
        vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, vision_use_head=False, **VISION),
        text_config=cohere2_config(tok), downsample_factor=factor, alignment_intermediate_size=128,
        tie_word_embeddings=False,
        image_token_id=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
    )
    with seeded(seed):
        model = Cohere2VisionForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Command A Vision: 512 px tiles (up to 12) plus a thumbnail, 16 px SigLIP2 patches, pixel
    shuffle by 2 (256 tokens per tile)."""
    from transformers import Cohere2VisionImageProcessor, Cohere2VisionProcessor

    config, tok, template = at_reference_sizes(config, processor, 512, 16)
    config.downsample_factor = 2
    ip = Cohere2VisionImageProcessor(size={"height": 512, "width": 512}, crop_to_patches=True, min_patches=1,
                                     max_patches=12, patch_size=16)
    return config, Cohere2VisionProcessor(ip, tok, chat_template=template)


FAMILY = Family(name="cohere2_vision", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("CohereLabs/command-a-vision-07-2025",), reference_sizes=reference_sizes)
