"""Qwen2-VL (``qwen2_vl``): a dynamic grid of merged patches between ``<|vision_start|>`` and
``<|vision_end|>``; 3-D (M-RoPE) text positions.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, vision_patch
from vlmnb.engine.tinykit import at_reference_sizes, TEXT, chatml, finish, make_tokenizer, seeded


TEMPLATE = chatml("<|vision_start|><|image_pad|><|vision_end|>", system="You are a helpful assistant.")


def markers(config, processor):
    """``<|vision_start|>`` and ``<|vision_end|>``."""
    return (getattr(config, "vision_start_token_id", None), getattr(config, "vision_end_token_id", None))


def geometry(config, processor, image_size, inputs):
    """The picture resized to the processor's grid of patches; ``merge x merge`` patches per token."""
    ip = processor.image_processor
    t, gh, gw = (int(v) for v in inputs["image_grid_thw"][0].tolist())
    patch = int(getattr(ip, "patch_size", None) or vision_patch(config))
    merge = int(getattr(ip, "merge_size", None) or config.vision_config.spatial_merge_size)
    frame = Frame(*image_size).resize(gw * patch, gh * patch)
    grid = Grid("image", frame, gh // merge, gw // merge, patch * merge, patch * merge)
    return grid.cells() * t


_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def build_qwen(seed: int, view: int, v25: bool):
    """A tiny random Qwen2-VL or, with ``v25``, Qwen2.5-VL (M-RoPE sections, merged patches)."""
    from transformers import Qwen2VLImageProcessor

    if v25:
        from transformers import (Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model,
                                  Qwen2_5_VLProcessor as Processor)
    else:
        from transformers import (Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model,
                                  Qwen2VLProcessor as Processor)
    from transformers import Qwen2VLVideoProcessor

    tok = make_tokenizer(_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=TEMPLATE)
    patch, merge = 4, 2
    factor = patch * merge
    # a view x view picture keeps its resolution; at most 4 views' worth of pixels
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": factor * factor, "longest_edge": 4 * view * view},
        patch_size=patch, merge_size=merge, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": factor * factor, "longest_edge": 4 * view * view},
        patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = Processor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                          chat_template=TEMPLATE)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    section = [head_dim // 8, (head_dim // 2 - head_dim // 8) // 2]
    section.append(head_dim // 2 - sum(section))
    vision = dict(depth=2, embed_dim=32, num_heads=2, patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=2, hidden_size=TEXT["hidden_size"])
    if v25:
        vision.update(intermediate_size=64, out_hidden_size=TEXT["hidden_size"], hidden_size=32,
                      window_size=2 * factor, fullatt_block_indexes=[1])
    else:
        vision.update(mlp_ratio=2)
    config = Config(
        text_config=dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, rope_parameters={"rope_type": "default", "mrope_section": section,
                                                             "rope_theta": 10000.0}, **TEXT),
        vision_config=vision,
        **vision_token_ids(tok),
    )
    with seeded(seed):
        model = Model(config)
    return finish(model, tok, seed), processor


def vision_token_ids(tok) -> dict:
    """The config's image, video and begin/end-of-vision token ids (Qwen-VL's special tokens)."""
    return dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def build_tiny(seed: int, view: int):
    """A tiny random Qwen2-VL."""
    return build_qwen(seed, view, v25=False)


def reference_sizes(config, processor):
    """Qwen2-VL: 14 px patches merged 2x2, the default pixel budget."""
    from transformers import Qwen2VLImageProcessor

    config, tok, template = at_reference_sizes(config, processor, patch=14)
    return config, type(processor)(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                   video_processor=processor.video_processor, chat_template=template)

FAMILY = Family(name="qwen2_vl", geometry=geometry, build_tiny=build_tiny, markers=markers, mrope=True,
                hub_ids=("Qwen/Qwen2-VL-7B-Instruct", "Qwen/Qwen2-VL-2B-Instruct"), reference_sizes=reference_sizes)
