"""PerceptionLM (``perception_lm``): "thumb+tile" -- first a thumbnail, the whole image resized to
one square tile (aspect ratio not kept), then the image resized onto a cols x rows canvas of tiles
(Llama-3-V's tiling: the canvas that fits the image without shrinking it and upsamples it most,
else the closest aspect ratio) and cut into tiles, row-major. The Perception Encoder (a ViT; its
CLS token is dropped) sees each tile as patches, and the projector average-pools 2 x 2 patches
into one token. The image tokens (``<|image|>``) of all tiles sit in a row with no markers, in a
Llama-3 chat prompt with PLM's system prompt.
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid
from vlmnb.engine.tinykit import PARTS, VISION, at_reference_sizes, finish, llama_config, make_tokenizer, seeded

SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
          "the user provides, and assist the user with a variety of tasks using natural language.")

TEMPLATE = PARTS + (
    "{{ '<|begin_of_text|>' }}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n" + SYSTEM + "<|eot_id|>' }}{%- endif -%}"
    "{%- for m in messages -%}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
    " + parts(m['content'], '<|image|>') + '<|eot_id|>' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)


def tilings(max_tiles: int) -> list[tuple[int, int]]:
    """Every ``(cols, rows)`` tiling of at most ``max_tiles`` tiles, in the image processor's order:
    grouped by aspect ratio, the ratios in order of first appearance from ``max_tiles`` tiles down."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_tiles, 0, -1):
        for cols in sorted({d for d in range(1, count + 1) if count % d == 0}):
            by_ratio.setdefault(cols / (count // cols), []).append((cols, count // cols))
    return [t for group in by_ratio.values() for t in group]


def fitted_size(W: int, H: int, canvas_w: int, canvas_h: int) -> tuple[float, float]:
    """The size of a ``W x H`` image scaled to fit a canvas with its aspect ratio kept (the
    processor's rounding: the side across the long one is floored)."""
    scale = min(canvas_w / W, canvas_h / H)
    if W / H > 1.0:
        return scale * W, math.floor(scale * W / (W / H))
    return math.floor(scale * H * (W / H)), scale * H


def tile_grid(ip, image_size) -> tuple[int, int]:
    """``(cols, rows)`` of the tile canvas PerceptionLM's image processor picks for ``image_size``:
    among the canvases that hold the image unshrunk, the one that enlarges its short side most
    (the later of equals); when none does, the closest aspect ratio (the widest / tallest)."""
    W, H = image_size
    max_tiles, tile = int(ip.max_num_tiles), int(ip.tile_size)
    if max_tiles <= 1:
        return 1, 1
    best, best_size = None, None
    for cols, rows in tilings(max_tiles):
        if cols * tile < W or rows * tile < H:
            continue
        size = fitted_size(W, H, cols * tile, rows * tile)
        if best is None or (W / H < 1.0 and size[0] >= best_size[0]) or (W / H >= 1.0 and size[1] >= best_size[1]):
            best, best_size = (cols, rows), size
    if best is not None:
        return best
    ratios: dict[float, list[tuple[int, int]]] = {}
    for cols, rows in tilings(max_tiles):
        ratios.setdefault(cols / rows, []).append((cols, rows))
    target = W / H
    if target >= 1:
        ratio = min((k for k in ratios if k <= target), key=lambda k: abs(k - target))
        return max(ratios[ratio], key=lambda t: t[0])
    ratio = min((k for k in ratios if k > target), key=lambda k: abs(1 / k - 1 / target))
    return max(ratios[ratio], key=lambda t: t[1])


def geometry(config, processor, image_size, inputs):
    """A thumbnail then the row-major tiles ("thumb+tile"), or one tile; each tile's patch grid
    average-pooled by ``pooling_ratio``."""
    ip = processor.image_processor
    W, H = image_size
    tile = int(ip.tile_size)
    pixels = inputs["pixel_values"]
    n, ph, pw = int(pixels.shape[1]), int(pixels.shape[-2]), int(pixels.shape[-1])
    if (ph, pw) != (tile, tile):
        raise RuntimeError(f"perception_lm: pictures of {pw}x{ph} for {tile}px tiles are not supported")
    p, ratio = int(processor.patch_size), int(processor.pooling_ratio)
    per_side = tile // p // ratio
    cell = float(tile / per_side)  # adaptive average pooling over a divisible patch grid: ratio x ratio patches
    thumbnail = Frame(W, H).resize(tile, tile)
    if getattr(ip, "vision_input_type", "thumb+tile") != "thumb+tile":
        grids = [Grid("image", thumbnail, per_side, per_side, cell, cell)]
    else:
        cols, rows = tile_grid(ip, image_size)
        if cols * rows + 1 != n:
            raise RuntimeError(f"perception_lm: expected {cols * rows + 1} pictures for a {cols}x{rows} tiling, "
                               f"the processor made {n}")
        canvas = Frame(W, H).resize(cols * tile, rows * tile)
        grids = [Grid("thumbnail", thumbnail, per_side, per_side, cell, cell)]
        grids += [Grid(f"tile_{r}_{c}", canvas.crop(c * tile, r * tile, tile, tile), per_side, per_side, cell, cell)
                  for r in range(rows) for c in range(cols)]
    if n != len(grids):
        raise RuntimeError(f"perception_lm: expected {len(grids)} pictures, the processor made {n}")
    return [entry for grid in grids for entry in grid.cells()]


def _vision_config(view: int, patch: int, embed_dim: int, depth: int, heads: int):
    from transformers import TimmWrapperConfig

    g = view // patch
    # the Perception Encoder (an EVA ViT with 2-D RoPE and a CLS token); no head, no pooling
    args = {"img_size": [view, view], "patch_size": patch, "embed_dim": embed_dim, "depth": depth, "num_heads": heads,
            "mlp_ratio": 2.0, "ref_feat_shape": [g, g], "global_pool": "",
            "use_post_transformer_norm": False, "init_values": 0.1}
    return TimmWrapperConfig(architecture="vit_pe_core_large_patch14_336", model_args=args, do_pooling=False,
                             num_labels=0)


def build_tiny(seed: int, view: int):
    """A tiny random PerceptionLM (Perception Encoder via timm, Llama text; a thumbnail + up to 4 tiles)."""
    from transformers import (PerceptionLMConfig, PerceptionLMForConditionalGeneration, PerceptionLMImageProcessor,
                              PerceptionLMProcessor, PerceptionLMVideoProcessor)

    named = {"image_token": "<|image|>", "video_token": "<|video|>"}
    tok = make_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>", "<|finetune_right_pad_id|>"] + list(named.values()),
                         bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", named=named,
                         chat_template=TEMPLATE)
    patch = view // 8
    image_processor = PerceptionLMImageProcessor(tile_size=view, max_num_tiles=4, size={"height": view, "width": view})
    video_processor = PerceptionLMVideoProcessor(size={"height": view, "width": view})
    processor = PerceptionLMProcessor(video_processor=video_processor, image_processor=image_processor, tokenizer=tok,
                                      patch_size=patch, pooling_ratio=2, chat_template=TEMPLATE)
    config = PerceptionLMConfig(
        vision_config=_vision_config(view, patch, VISION["hidden_size"], VISION["num_hidden_layers"],
                                     VISION["num_attention_heads"]),
        text_config=llama_config(tok), vision_use_cls_token=True, projector_pooling_ratio=2,
        image_token_id=tok.convert_tokens_to_ids("<|image|>"), video_token_id=tok.convert_tokens_to_ids("<|video|>"),
    )
    with seeded(seed):
        model = PerceptionLMForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Perception-LM-1B: 448 px tiles (a thumbnail + up to 36), 14 px patches pooled 2 x 2 (256 tokens per tile)."""
    from transformers import PerceptionLMImageProcessor, PerceptionLMProcessor

    config, tok, template = at_reference_sizes(config, processor)
    vc = config.vision_config
    config.vision_config = _vision_config(448, 14, vc.model_args["embed_dim"], vc.model_args["depth"],
                                          vc.model_args["num_heads"])
    ip = PerceptionLMImageProcessor(tile_size=448, max_num_tiles=36)
    return config, PerceptionLMProcessor(video_processor=processor.video_processor, image_processor=ip, tokenizer=tok,
                                         patch_size=14, pooling_ratio=2, chat_template=template)


FAMILY = Family(name="perception_lm", geometry=geometry, build_tiny=build_tiny,
                hub_ids=("facebook/Perception-LM-1B", "facebook/Perception-LM-8B"), reference_sizes=reference_sizes)
