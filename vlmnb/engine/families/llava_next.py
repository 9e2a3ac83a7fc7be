"""LLaVA-NeXT (``llava_next``): anyres -- a base picture of the whole image, then a
high-resolution grid of tiles with a learned newline token after every row of its token grid.
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, center_crop, check_shape, resize_by_size, size_get, vision_patch
from vlmnb.engine.tinykit import at_reference_sizes, PARTS, VISION, finish, llama_config, make_tokenizer, seeded


TEMPLATE = PARTS + (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ '[INST] ' + parts(m['content'], '<image>\\n') + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + parts(m['content'], '') + '</s>' }}{%- endif -%}"
    "{%- endfor -%}"
)


def post_patch(ip, frame: Frame) -> Frame:
    """The per-picture resize + center crop LLaVA-NeXT/OneVision apply to every base/tile picture."""
    if getattr(ip, "do_resize", True):
        frame = resize_by_size(frame, ip.size)
    if getattr(ip, "do_center_crop", False) and ip.crop_size is not None:
        frame = center_crop(frame, size_get(ip.crop_size, "width"), size_get(ip.crop_size, "height"))
    return frame


def anyres_geometry(config, processor, image_size, inputs, family):
    """LLaVA-NeXT / OneVision: a base picture of the whole image, then a high-resolution grid
    (the image resized into the best grid resolution, padded, cut into tiles) whose token grid is
    unpadded and, for OneVision, possibly pooled down, with a newline token after every row."""
    from transformers.image_processing_utils import select_best_resolution

    ip = processor.image_processor
    W, H = image_size
    size = ip.size
    if size_get(size, "height") and size_get(size, "width"):
        base_h, base_w = size_get(size, "height"), size_get(size, "width")
    else:
        base_h = base_w = size_get(size, "shortest_edge")
    crop = getattr(ip, "crop_size", None)
    tile_px = size_get(crop, "height") or size_get(size, "height") or size_get(size, "shortest_edge")
    pinpoints = [list(p) for p in (config.image_grid_pinpoints or ip.image_grid_pinpoints)]
    vis = config.vision_config.image_size
    vis = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    p = vision_patch(config)
    g = vis // p

    base = post_patch(ip, Frame(W, H).resize(base_w, base_h))
    check_shape(family, base, inputs["pixel_values"].shape)
    tile_after = post_patch(ip, Frame(tile_px, tile_px))
    if (tile_after.w, tile_after.h, tile_after.sx, tile_after.sy) != (vis, vis, 1.0, 1.0) or tile_px != vis:
        raise RuntimeError(f"{family}: tiles of {tile_px}px resized again to {vis}px are not supported by vlmnb's geometry")

    best_h, best_w = select_best_resolution((H, W), pinpoints)
    # mirror of get_patch_output_size + the centred padding of _pad_for_patching
    scale_w, scale_h = best_w / W, best_h / H
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(H * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(W * scale_h), best_w)
    pad_x, pad_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    canvas = Frame(W, H).resize(new_w, new_h).pad(pad_x, pad_y, best_w - new_w - pad_x, best_h - new_h - pad_y)
    n_tiles = (best_h // tile_px) * (best_w // tile_px)
    if int(inputs["pixel_values"].shape[1]) < 1 + n_tiles:
        raise RuntimeError(f"{family}: expected {1 + n_tiles} pictures, the processor made {inputs['pixel_values'].shape[1]}")

    # the model's token grid over the canvas, then its unpadding (modeling unpad_image)
    cur_h, cur_w = (best_h // vis) * g, (best_w // vis) * g
    top = left = 0
    if W / H > cur_w / cur_h:
        new_rows = int(round(H * (cur_w / W), 7))
        top = (cur_h - new_rows) // 2
    else:
        new_cols = int(round(W * (cur_h / H), 7))
        left = (cur_w - new_cols) // 2
    rows, cols = cur_h - 2 * top, cur_w - 2 * left
    cell = float(p)  # a patch; the encoder ignores a remainder narrower than a patch (384px / 14px)
    out_rows, out_cols = rows, cols
    if family == "llava_onevision":
        max_tiles = int(str(getattr(config, "vision_aspect_ratio", "anyres_max_9")).strip("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_tiles * g ** 2))
        if ratio > 1.1:  # the model pools the grid bilinearly down to this size
            out_rows, out_cols = int(rows // ratio), int(cols // ratio)
    highres = Grid("highres", canvas, out_rows, out_cols, cell * cols / out_cols, cell * rows / out_rows,
                    u0=left * cell, v0=top * cell)
    base_grid = Grid("base", base, g, g, p, p)
    entries = base_grid.cells()
    for r in range(out_rows):
        entries += [(highres, r, c) for c in range(out_cols)] + [None]  # learned newline token
    return entries


def geometry(config, processor, image_size, inputs):
    """LLaVA-NeXT's anyres geometry (see :func:`anyres_geometry`)."""
    return anyres_geometry(config, processor, image_size, inputs, family="llava_next")


def build_tiny(seed: int, view: int):
    """A tiny random LLaVA-NeXT (anyres pinpoints up to 3 views wide)."""
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    tok = make_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                     add_bos=True, named={"image_token": "<image>"}, chat_template=TEMPLATE)
    patch = view // 4
    pinpoints = [[view, 2 * view], [2 * view, view], [2 * view, 2 * view], [view, 3 * view], [3 * view, view]]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=TEMPLATE)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **VISION), text_config=llama_config(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        image_seq_length=(view // patch) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    with seeded(seed):
        model = LlavaNextForConditionalGeneration(config)
    return finish(model, tok, seed), processor


#: LLaVA-NeXT's any-resolution grids at 336 px views (2x2, 1x2, 2x1, 1x3, 3x1)
REFERENCE_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def reference_image_processor(config):
    """LLaVA-NeXT's image processor at the checkpoints' sizes; sets ``config``'s pinpoints to match."""
    from transformers import LlavaNextImageProcessor

    config.image_grid_pinpoints = REFERENCE_PINPOINTS
    return LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                   image_grid_pinpoints=REFERENCE_PINPOINTS)


def reference_sizes(config, processor):
    """LLaVA-NeXT (1.6): 336 px CLIP views, 14 px patches, the 2x2 / 1x3 any-resolution grids."""
    from transformers import LlavaNextProcessor

    config, tok, template = at_reference_sizes(config, processor, 336, 14)
    ip = reference_image_processor(config)
    return config, LlavaNextProcessor(ip, tok, patch_size=14, vision_feature_select_strategy="default",
                                      num_additional_image_tokens=1, chat_template=template)

FAMILY = Family(name="llava_next", geometry=geometry, build_tiny=build_tiny,
                hub_ids=("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-13b-hf"), reference_sizes=reference_sizes)
