"""Video-LLaVA (``video_llava``), for pictures: LLaVA-1.5's geometry -- the picture resized
(shortest edge) and center-cropped to one square view of the image tower (a CLIP encoder separate
from the video tower), one token per patch, the CLS dropped -- in a Vicuna-style prompt
(``USER: <image>\\n{text} ASSISTANT:``). Its image processor hands the picture over as
``pixel_values_images``.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.llava import TEMPLATE
from vlmnb.engine.families.llava import geometry as llava_geometry
from vlmnb.engine.tinykit import VISION, at_reference_sizes, finish, llama_config, make_tokenizer, seeded


def geometry(config, processor, image_size, inputs):
    """LLaVA-1.5's one square view (see :func:`~vlmnb.engine.families.llava.geometry`), read from
    ``pixel_values_images`` (or ``pixel_values``, the processor's newer name)."""
    pixels = inputs.get("pixel_values_images")
    if pixels is None:
        pixels = inputs["pixel_values"]
    return llava_geometry(config, processor, image_size, {"pixel_values": pixels})


def build_tiny(seed: int, view: int):
    """A tiny random Video-LLaVA (CLIP image and video towers, Llama text)."""
    from transformers import (CLIPVisionConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration,
                              VideoLlavaImageProcessor, VideoLlavaProcessor, VideoLlavaVideoProcessor)

    tok = make_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"], bos="<s>", eos="</s>", pad="<pad>",
                         add_bos=True, named={"image_token": "<image>", "video_token": "<video>"},
                         chat_template=TEMPLATE)
    patch = view // 4
    sizes = dict(size={"shortest_edge": view}, crop_size={"height": view, "width": view})
    processor = VideoLlavaProcessor(image_processor=VideoLlavaImageProcessor(**sizes),
                                    video_processor=VideoLlavaVideoProcessor(**sizes), tokenizer=tok, patch_size=patch,
                                    vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                    chat_template=TEMPLATE)
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **VISION), text_config=llama_config(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_seq_length=(view // patch) ** 2, video_seq_length=8 * ((view // patch) ** 2 + 1),
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    with seeded(seed):
        model = VideoLlavaForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Video-LLaVA-7B: 224 px CLIP views, 14 px patches (256 tokens)."""
    from transformers import VideoLlavaImageProcessor, VideoLlavaProcessor

    config, tok, template = at_reference_sizes(config, processor, 224, 14)
    config.image_seq_length = 256
    ip = VideoLlavaImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return config, VideoLlavaProcessor(ip, processor.video_processor, tok, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=template)


FAMILY = Family(name="video_llava", crops=True, geometry=geometry, build_tiny=build_tiny,
                hub_ids=("LanguageBind/Video-LLaVA-7B-hf",), reference_sizes=reference_sizes)
