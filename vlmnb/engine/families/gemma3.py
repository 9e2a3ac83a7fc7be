"""Gemma3 (``gemma3``, pan & scan off): one square picture between ``<start_of_image>`` and
``<end_of_image>``, its patch grid average-pooled to ``mm_tokens_per_image`` tokens. The prompt's
image placeholder is the begin-of-image token.
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, check_shape, size_get, vision_patch
from vlmnb.engine.tinykit import at_reference_sizes, PARTS, TEXT, VISION, finish, make_tokenizer, seeded


TEMPLATE = PARTS + (
    "{{ '<bos>' }}{%- for m in messages -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n'"
    " + parts(m['content'], '<start_of_image>') + '<end_of_turn>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def markers(config, processor):
    """The begin / end-of-image tokens (under either config name)."""
    return (getattr(config, "boi_token_index", None), getattr(config, "eoi_token_index", None),
            getattr(config, "boi_token_id", None), getattr(config, "eoi_token_id", None))


def placeholder(processor) -> str:
    """``<start_of_image>``: the processor expands it into the image tokens."""
    return processor.boi_token


def geometry(config, processor, image_size, inputs):
    """Gemma3 (pan & scan off): one square resize; the patch grid is average-pooled to
    ``mm_tokens_per_image`` tokens."""
    ip = processor.image_processor
    if getattr(ip, "do_pan_and_scan", False):
        raise ValueError("gemma3: pan & scan crops are not supported; load the processor with do_pan_and_scan=False")
    frame = Frame(*image_size).resize(size_get(ip.size, "width"), size_get(ip.size, "height"))
    check_shape("gemma3", frame, inputs["pixel_values"].shape)
    per_side = int(round(math.sqrt(config.mm_tokens_per_image)))
    vis = config.vision_config.image_size
    vis = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    if (int(round(frame.w)), int(round(frame.h))) != (vis, vis):
        raise RuntimeError(f"gemma3: pictures of {frame.w}x{frame.h} for a {vis}px vision encoder are not supported")
    p = vision_patch(config)
    cell = float(p * ((vis // p) // per_side))  # average pooling merges kernel x kernel patches
    return Grid("image", frame, per_side, per_side, cell, cell).cells()


def init_random(model):
    """transformers initialises the image projection to zeros, which makes the image invisible."""
    import torch

    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(0.0, weight.shape[0] ** -0.5)


def build_tiny(seed: int, view: int):
    """A tiny random Gemma3 (SigLIP vision, 16 pooled tokens per image)."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = make_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"] + list(named.values()),
                     bos="<bos>", eos="<eos>", pad="<pad>", named=named, chat_template=TEMPLATE)
    patch = view // 8
    tokens_per_image = 16
    image_processor = Gemma3ImageProcessor(size={"height": view, "width": view}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATE,
                                image_seq_length=tokens_per_image)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = Gemma3TextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                            sliding_window=512, layer_types=["sliding_attention", "full_attention"], **TEXT)
    config = Gemma3Config(
        text_config=text, vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, **VISION),
        mm_tokens_per_image=tokens_per_image, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    with seeded(seed):
        model = Gemma3ForConditionalGeneration(config)
        init_random(model)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Gemma3: one 896 px square, 14 px patches pooled to 256 tokens."""
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    config, tok, template = at_reference_sizes(config, processor, 896, 14)
    config.mm_tokens_per_image = 256
    ip = Gemma3ImageProcessor(size={"height": 896, "width": 896})
    return config, Gemma3Processor(ip, tok, chat_template=template, image_seq_length=256)

FAMILY = Family(name="gemma3", geometry=geometry, build_tiny=build_tiny, markers=markers, placeholder=placeholder,
                hub_ids=("google/gemma-3-4b-it", "google/gemma-3-27b-it"), reference_sizes=reference_sizes,
                init_random=init_random,
                knockout_note=("Image tokens attend to each other in both directions within the image block; "
                               "a knockout removes the attention of query and generated tokens to image keys, "
                               "and image rows keep their bidirectional attention."))
