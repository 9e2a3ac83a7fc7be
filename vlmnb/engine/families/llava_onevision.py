"""LLaVA-OneVision (``llava_onevision``): LLaVA-NeXT's anyres geometry, whose high-resolution token
grid the model pools bilinearly down when it holds more than ``anyres_max_N`` tiles' worth.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.llava_next import anyres_geometry
from vlmnb.engine.tinykit import at_reference_sizes, CHATML_SPECIALS, VISION, chatml, finish, make_tokenizer, qwen2_config, seeded


TEMPLATE = chatml("<image>\\n")


def geometry(config, processor, image_size, inputs):
    """LLaVA-OneVision's anyres geometry (see :func:`~vlmnb.engine.families.llava_next.anyres_geometry`)."""
    return anyres_geometry(config, processor, image_size, inputs, family="llava_onevision")


def build_tiny(seed: int, view: int):
    """A tiny random LLaVA-OneVision (SigLIP vision, Qwen2 text, at most 4 tiles' tokens)."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor, SiglipVisionConfig)

    tok = make_tokenizer(CHATML_SPECIALS + ["<image>", "<video>"], eos="<|im_end|>", pad="<|endoftext|>",
                     named={"image_token": "<image>", "video_token": "<video>"}, chat_template=TEMPLATE)
    patch = view // 4
    pinpoints = [[view * i, view * j] for i in range(1, 4) for j in range(1, 4)]
    # at most 4 tiles' worth of tokens: a 3x3 tiling is pooled down (exercises the bilinear pooling)
    aspect = "anyres_max_4"
    image_processor = LlavaOnevisionImageProcessor(size={"height": view, "width": view}, image_grid_pinpoints=pinpoints)
    video_processor = LlavaOnevisionVideoProcessor(size={"height": view, "width": view})
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                        num_image_tokens=(view // patch) ** 2, vision_feature_select_strategy="full",
                                        vision_aspect_ratio=aspect, chat_template=TEMPLATE)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, **VISION), text_config=qwen2_config(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, vision_aspect_ratio=aspect, vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    with seeded(seed):
        model = LlavaOnevisionForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """LLaVA-OneVision: 384 px SigLIP views, 14 px patches, ``anyres_max_9``."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor

    config, tok, template = at_reference_sizes(config, processor, 384, 14)
    ip = LlavaOnevisionImageProcessor()
    config.image_grid_pinpoints = ip.image_grid_pinpoints
    config.vision_aspect_ratio = "anyres_max_9"
    return config, LlavaOnevisionProcessor(ip, tok, video_processor=processor.video_processor, num_image_tokens=729,
                                           vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                           chat_template=template)

FAMILY = Family(name="llava_onevision", geometry=geometry, build_tiny=build_tiny,
                hub_ids=("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"), reference_sizes=reference_sizes)
