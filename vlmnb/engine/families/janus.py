"""Janus / Janus-Pro (``janus``, the understanding path; the image-generation path is not used):
like DeepSeek-VL, the picture is resized so its long side fits the SigLIP encoder (384 px),
padded to a centred square and cut into 16 px patches, one image token each (576 per image),
projected by a two-layer MLP. The processor wraps the tokens in ``<begin_of_image>`` ...
``<end_of_image>`` where the prompt says ``<image_placeholder>``, inside
``<|User|>: ...\\n\\n<|Assistant|>:``, and puts the default system prompt in front.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.deepseek_vl import square_geometry
from vlmnb.engine.tinykit import PARTS, TEXT, at_reference_sizes, finish, llama_config, make_tokenizer, seeded

# the system prompt is the processor's (use_default_system_prompt); BOS is the tokenizer's
TEMPLATE = PARTS + (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ parts(m['content'], '') + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ '<|User|>: ' + parts(m['content'], '<image_placeholder>\\n') + '\\n\\n' }}"
    "{%- else -%}{{ '<|Assistant|>:' + parts(m['content'], '') + eos_token }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|Assistant|>:' }}{%- endif -%}"
)

_NAMED = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|User|>", "<|Assistant|>"] + list(_NAMED.values())


def markers(config, processor):
    """``<begin_of_image>`` and ``<end_of_image>``."""
    tok = processor.tokenizer
    return (tok.convert_tokens_to_ids(processor.image_start_token), tok.convert_tokens_to_ids(processor.image_end_token))


def geometry(config, processor, image_size, inputs):
    """One padded square picture, one token per SigLIP patch (DeepSeek-VL's geometry)."""
    return square_geometry("janus", config, processor, image_size, inputs)


def build_tiny(seed: int, view: int):
    """A tiny random Janus (SigLIP-like vision, Llama text, a small VQ model for the unused
    generation path). The output head is not tied to the input embeddings: a tiny random model
    with tied ones only repeats the last prompt token, whatever the image."""
    from transformers import (JanusConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor,
                              JanusVisionConfig, JanusVQVAEConfig)

    tok = make_tokenizer(_SPECIALS, bos=_SPECIALS[0], eos=_SPECIALS[1], pad=_SPECIALS[1], add_bos=True,
                         named=_NAMED, chat_template=TEMPLATE)
    patch = view // 8
    seq = (view // patch) ** 2
    image_processor = JanusImageProcessor(size={"height": view, "width": view},
                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATE,
                               use_default_system_prompt=True, num_image_tokens=seq)
    hidden = TEXT["hidden_size"]
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2.0,
                               image_size=view, patch_size=patch, projection_dim=hidden, depth=2,
                               num_image_tokens=seq)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=32, latent_channels=8, base_channels=32,
                          channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=hidden,
                          image_token_embed_dim=hidden)
    config = JanusConfig(vision_config=vision, vq_config=vq, text_config=llama_config(tok),
                         image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"), tie_word_embeddings=False)
    with seeded(seed):
        model = JanusForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Janus-Pro: one 384 px square, 16 px patches, 576 tokens."""
    from transformers import JanusImageProcessor, JanusProcessor

    config, tok, template = at_reference_sizes(config, processor, 384, 16)
    config.vision_config.num_image_tokens = 576
    ip = JanusImageProcessor(size={"height": 384, "width": 384}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return config, JanusProcessor(ip, tok, chat_template=template, use_default_system_prompt=True, num_image_tokens=576)


FAMILY = Family(name="janus", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("deepseek-community/Janus-Pro-7B", "deepseek-community/Janus-Pro-1B"),
                reference_sizes=reference_sizes)
