"""LLaVA-1.5 (``llava``): one picture, padded to a square / resized / center-cropped; a CLS
feature first when the model keeps it (``vision_feature_select_strategy='full'``).
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import (Frame, Grid, center_crop, check_shape, pad_to_square, resize_by_size, size_get,
                                   vision_patch)
from vlmnb.engine.tinykit import at_reference_sizes, PARTS, TEXT, VISION, finish, make_tokenizer, seeded


TEMPLATE = PARTS + (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ parts(m['content'], '') + ' ' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'USER: ' + parts(m['content'], '<image>\\n') + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + parts(m['content'], '') + '</s>' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def picture_frame(image_processor, image_size) -> Frame:
    """The picture as a CLIP-style image processor prepares it: padded to a square if it pads,
    resized, center-cropped."""
    ip = image_processor
    frame = Frame(*image_size)
    if getattr(ip, "do_pad", False):
        frame = pad_to_square(frame)
    if getattr(ip, "do_resize", True):
        frame = resize_by_size(frame, ip.size)
    if getattr(ip, "do_center_crop", False):
        frame = center_crop(frame, size_get(ip.crop_size, "width"), size_get(ip.crop_size, "height"))
    return frame


def geometry(config, processor, image_size, inputs):
    """One picture: padded to a square if the processor pads, resized, center-cropped; a patch grid."""
    frame = picture_frame(processor.image_processor, image_size)
    check_shape("llava", frame, inputs["pixel_values"].shape)
    p = vision_patch(config)
    grid = Grid("image", frame, int(round(frame.h)) // p, int(round(frame.w)) // p, p, p)
    entries = grid.cells()
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        entries = [None] + entries  # the CLS token comes first and sees no patch
    return entries


def tiny_processor(view: int, template: str = TEMPLATE):
    """``(tokenizer, LlavaProcessor, patch)`` of a tiny LLaVA-1.5-style model: a CLIP image
    processor for ``view`` px squares, 4 x 4 patches, a Vicuna prompt."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tok = make_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                         add_bos=True, named={"image_token": "<image>"}, chat_template=template)
    patch = view // 4
    image_processor = CLIPImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=template)
    return tok, processor, patch


def build_tiny(seed: int, view: int):
    """A tiny random LLaVA-1.5 (CLIP vision, Llama text)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok, processor, patch = tiny_processor(view)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **VISION),
        text_config=LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(view // patch) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    with seeded(seed):
        model = LlavaForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """LLaVA-1.5-7B: 336 px CLIP views, 14 px patches."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    config, tok, template = at_reference_sizes(config, processor, 336, 14)
    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return config, LlavaProcessor(ip, tok, patch_size=14, vision_feature_select_strategy="default",
                                  num_additional_image_tokens=1, chat_template=template)

FAMILY = Family(name="llava", crops=True, geometry=geometry, build_tiny=build_tiny,
                hub_ids=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"), reference_sizes=reference_sizes)
