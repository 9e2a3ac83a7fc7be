"""VipLLaVA (``vipllava``): LLaVA-1.5's picture -- resized (shortest edge) and center-cropped to
one square CLIP view, one token per patch, the CLS dropped -- whose features concatenate the
hidden states of several vision layers (``vision_feature_layers``) before the projector. The
prompt is ``<s>{system}###Human: <image>\\n{text}###Assistant:``.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.llava import geometry as llava_geometry
from vlmnb.engine.families.llava import tiny_processor
from vlmnb.engine.tinykit import PARTS, VISION, at_reference_sizes, finish, llama_config, seeded

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")

TEMPLATE = PARTS + (
    "{%- if messages[0]['role'] != 'system' -%}{{ '" + SYSTEM.replace("'", "\\'") + "' }}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ parts(m['content'], '') }}"
    "{%- elif m['role'] == 'user' -%}{{ '###Human: ' + parts(m['content'], '<image>\\n') }}"
    "{%- else -%}{{ '###Assistant: ' + parts(m['content'], '') + '</s>' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '###Assistant:' }}{%- endif -%}"
)


def geometry(config, processor, image_size, inputs):
    """LLaVA-1.5's one square view (see :func:`~vlmnb.engine.families.llava.geometry`); VipLLaVA
    always drops the CLS feature."""
    return llava_geometry(config, processor, image_size, inputs)


def build_tiny(seed: int, view: int):
    """A tiny random VipLLaVA (CLIP vision, Llama text; features of three vision layers)."""
    from transformers import CLIPVisionConfig, VipLlavaConfig, VipLlavaForConditionalGeneration

    tok, processor, patch = tiny_processor(view, TEMPLATE)
    config = VipLlavaConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **VISION), text_config=llama_config(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(view // patch) ** 2,
        # the real checkpoints take layers (-2, -5, -8, -11, 6) of 24; the tiny encoder has 2 (+ embeddings)
        vision_feature_layer=[-2, -1, 0],
    )
    with seeded(seed):
        model = VipLlavaForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """VipLLaVA-7B: 336 px CLIP views, 14 px patches (576 tokens)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    config, tok, template = at_reference_sizes(config, processor, 336, 14)
    config.image_seq_length = 576
    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return config, LlavaProcessor(ip, tok, patch_size=14, vision_feature_select_strategy="default",
                                  num_additional_image_tokens=1, chat_template=template)


FAMILY = Family(name="vipllava", crops=True, geometry=geometry, build_tiny=build_tiny,
                hub_ids=("llava-hf/vip-llava-7b-hf", "llava-hf/vip-llava-13b-hf"), reference_sizes=reference_sizes)
