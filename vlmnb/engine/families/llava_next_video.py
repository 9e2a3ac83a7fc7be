"""LLaVA-NeXT-Video (``llava_next_video``), for pictures: LLaVA-NeXT's anyres -- a base picture of
the whole image, then a high-resolution grid of tiles whose unpadded token grid has a learned
newline token after every row -- with ``<image>`` in a Vicuna-style prompt
(``USER: <image>\\n{text} ASSISTANT:``). Videos (``<video>``, pooled frames) are not used.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.llava import TEMPLATE  # the same Vicuna prompt
from vlmnb.engine.families.llava_next import anyres_geometry, reference_image_processor
from vlmnb.engine.tinykit import VISION, at_reference_sizes, finish, llama_config, make_tokenizer, seeded



def geometry(config, processor, image_size, inputs):
    """LLaVA-NeXT's anyres geometry (see :func:`~vlmnb.engine.families.llava_next.anyres_geometry`)."""
    return anyres_geometry(config, processor, image_size, inputs, family="llava_next_video")


def build_tiny(seed: int, view: int):
    """A tiny random LLaVA-NeXT-Video (anyres pinpoints up to 3 views wide)."""
    from transformers import (CLIPVisionConfig, LlavaNextImageProcessor, LlavaNextVideoConfig,
                              LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor,
                              LlavaNextVideoVideoProcessor)

    tok = make_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"], bos="<s>", eos="</s>", pad="<pad>",
                         add_bos=True, named={"image_token": "<image>", "video_token": "<video>"},
                         chat_template=TEMPLATE)
    patch = view // 4
    pinpoints = [[view, 2 * view], [2 * view, view], [2 * view, 2 * view], [view, 3 * view], [3 * view, view]]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view},
                                              image_grid_pinpoints=pinpoints)
    video_processor = LlavaNextVideoVideoProcessor(size={"shortest_edge": view},
                                                   crop_size={"height": view, "width": view})
    processor = LlavaNextVideoProcessor(video_processor=video_processor, image_processor=image_processor, tokenizer=tok,
                                        patch_size=patch, vision_feature_select_strategy="default",
                                        num_additional_image_tokens=1, chat_template=TEMPLATE)
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **VISION), text_config=llama_config(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, image_seq_length=(view // patch) ** 2,
        video_seq_length=(view // patch // 2) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    with seeded(seed):
        model = LlavaNextVideoForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """LLaVA-NeXT-Video-7B: 336 px CLIP views, 14 px patches, LLaVA-NeXT's 2x2 / 1x3 grids."""
    from transformers import LlavaNextVideoProcessor

    config, tok, template = at_reference_sizes(config, processor, 336, 14)
    ip = reference_image_processor(config)
    return config, LlavaNextVideoProcessor(video_processor=processor.video_processor, image_processor=ip, tokenizer=tok,
                                           patch_size=14, vision_feature_select_strategy="default",
                                           num_additional_image_tokens=1, chat_template=template)


FAMILY = Family(name="llava_next_video", geometry=geometry, build_tiny=build_tiny,
                hub_ids=("llava-hf/LLaVA-NeXT-Video-7B-hf", "llava-hf/LLaVA-NeXT-Video-34B-hf"),
                reference_sizes=reference_sizes)
