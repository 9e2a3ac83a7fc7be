"""InternVL (``internvl``, the transformers-native ``-hf`` checkpoints): tiles + a thumbnail
between ``<img>`` and ``</img>``; pixel shuffle merges 2x2 patches.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, size_get, vision_patch
from vlmnb.engine.tinykit import at_reference_sizes, CHATML_SPECIALS, VISION, chatml, finish, make_tokenizer, qwen2_config, seeded


TEMPLATE = chatml("<IMG_CONTEXT>\\n")


def markers(config, processor):
    """``<img>`` and ``</img>``."""
    return (getattr(processor, "start_image_token_id", None), getattr(processor, "end_image_token_id", None))


def geometry(config, processor, image_size, inputs):
    """InternVL: the image resized onto a cols x rows grid of tiles (row-major), then a thumbnail
    of the whole image when there is more than one tile; pixel shuffle merges 2x2 patches."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    ip = processor.image_processor
    W, H = image_size
    th, tw = size_get(ip.size, "height"), size_get(ip.size, "width")
    n = int(inputs["pixel_values"].shape[0])
    vis = config.vision_config.image_size
    vis_h, vis_w = (vis if isinstance(vis, (list, tuple)) else (vis, vis))
    if (th, tw) != (vis_h, vis_w):
        raise RuntimeError(f"internvl: tiles of {tw}x{th} for a {vis_w}x{vis_h} vision encoder are not supported")
    p = vision_patch(config)
    per_side = int(round((vis_h // p) * config.downsample_ratio))
    cell_h = cell_w = p / config.downsample_ratio  # pixel shuffle merges 1/ratio x 1/ratio patches
    grids = []
    if n == 1:
        grids.append(Grid("image", Frame(W, H).resize(tw, th), per_side, per_side, cell_w, cell_h))
    else:
        cols, rows = get_optimal_tiled_canvas((H, W), (th, tw), ip.min_patches, ip.max_patches)
        if cols * rows + 1 != n:
            raise RuntimeError(f"internvl: expected {cols * rows + 1} pictures for a {cols}x{rows} tiling, got {n}")
        canvas = Frame(W, H).resize(tw * cols, th * rows)
        for i in range(cols * rows):
            r, c = divmod(i, cols)
            grids.append(Grid(f"tile_{r}_{c}", canvas.crop(c * tw, r * th, tw, th), per_side, per_side, cell_w, cell_h))
        grids.append(Grid("thumbnail", Frame(W, H).resize(tw, th), per_side, per_side, cell_w, cell_h))
    return [cell for grid in grids for cell in grid.cells()]


def build_tiny(seed: int, view: int):
    """A tiny random InternVL (tiles of ``view`` pixels + thumbnail)."""
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig)

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = make_tokenizer(CHATML_SPECIALS + list(named.values()), eos="<|im_end|>", pad="<|endoftext|>", named=named,
                     chat_template=TEMPLATE)
    patch = view // 8
    seq = (view // patch // 2) ** 2
    image_processor = GotOcr2ImageProcessor(size={"height": view, "width": view}, crop_to_patches=True,
                                            min_patches=1, max_patches=6)
    video_processor = InternVLVideoProcessor(size={"height": view, "width": view})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                  image_seq_length=seq, chat_template=TEMPLATE)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(image_size=[view, view], patch_size=[patch, patch], **VISION),
        text_config=qwen2_config(tok), image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=seq,
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    with seeded(seed):
        model = InternVLForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """InternVL (transformers' port): 448 px tiles (up to 12) plus a thumbnail, 14 px patches,
    256 tokens per tile."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor

    config, tok, template = at_reference_sizes(config, processor, [448, 448], [14, 14])
    ip = GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=12)
    return config, InternVLProcessor(ip, tok, video_processor=processor.video_processor, image_seq_length=256,
                                     chat_template=template)

FAMILY = Family(name="internvl", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("OpenGVLab/InternVL3-8B-hf", "OpenGVLab/InternVL3-1B-hf"), reference_sizes=reference_sizes)
