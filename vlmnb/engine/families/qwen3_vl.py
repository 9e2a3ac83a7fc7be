"""Qwen3-VL (``qwen3_vl``; the MoE checkpoints are ``qwen3_vl_moe``): Qwen2-VL's picture path --
the image resized to a grid of 16 px patches (a multiple of 32 px on each side, within a pixel
budget), ``2 x 2`` patches merged per token, row-major -- between ``<|vision_start|>`` and
``<|vision_end|>`` in a ChatML user turn (no default system prompt); 3-D (interleaved M-RoPE) text
positions.

DeepStack: the vision tower also merges the features of a few of its intermediate layers, and
the text decoder *adds* them to the hidden states at the image-token positions after its first
decoder layers. That only changes what image positions hold, so the engine's invariants stand as
they are: a knockout of image keys removes whatever DeepStack put there, the image prefix a query
knockout leaves untouched stays untouched, and the features depend only on their own patches
(the painted-square geometry checks see the input-embedding part).
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.qwen2_vl import geometry, markers, vision_token_ids
from vlmnb.engine.tinykit import TEXT, at_reference_sizes, chatml, finish, make_tokenizer, seeded

TEMPLATE = chatml("<|vision_start|><|image_pad|><|vision_end|>")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]


def build_qwen3(seed: int, view: int, moe: bool = False):
    """A tiny random Qwen3-VL (16 px patches scaled to ``view // 8``, 2 x 2 merge, DeepStack from
    both vision layers into both decoder layers); with ``moe``, the Qwen3-VL-MoE variant."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    if moe:
        from transformers import Qwen3VLMoeConfig as Config, Qwen3VLMoeForConditionalGeneration as Model
    else:
        from transformers import Qwen3VLConfig as Config, Qwen3VLForConditionalGeneration as Model

    tok = make_tokenizer(SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=TEMPLATE)
    patch, merge = view // 8, 2
    factor = patch * merge
    # a view x view picture keeps its resolution; at most 4 views' worth of pixels
    sizes = dict(size={"shortest_edge": factor * factor, "longest_edge": 4 * view * view}, patch_size=patch,
                 merge_size=merge, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tok,
                                 video_processor=Qwen3VLVideoProcessor(**sizes), chat_template=TEMPLATE)
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    # interleaved sections (T, H, W) over head_dim / 2 frequencies, in the real [24, 20, 20] proportion
    section = [head_dim // 4, head_dim // 8, head_dim // 8]
    text = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                bos_token_id=None, head_dim=head_dim,
                rope_parameters={"rope_type": "default", "mrope_section": section, "mrope_interleaved": True,
                                 "rope_theta": 5000000.0}, **TEXT)
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"],
                  num_position_embeddings=(view // patch) ** 2, deepstack_visual_indexes=[0, 1])
    config = Config(
        text_config=text, vision_config=vision,
        **vision_token_ids(tok),
    )
    with seeded(seed):
        model = Model(config)
    return finish(model, tok, seed), processor


def build_tiny(seed: int, view: int):
    """A tiny random Qwen3-VL."""
    return build_qwen3(seed, view)


def build_tiny_moe(seed: int, view: int):
    """A tiny random Qwen3-VL-MoE (``qwen3_vl_moe``: 4 experts, 2 per token, in both decoder layers)."""
    return build_qwen3(seed, view, moe=True)


def reference_sizes(config, processor):
    """Qwen3-VL: 16 px patches merged 2x2, 256x256 to 4096x4096 pixels per picture, a 48x48 grid
    of learned vision positions."""
    from transformers import Qwen2VLImageProcessor

    config, tok, template = at_reference_sizes(config, processor, patch=16)
    config.vision_config.num_position_embeddings = 2304
    ip = Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, patch_size=16,
                               merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return config, type(processor)(image_processor=ip, tokenizer=tok, video_processor=processor.video_processor,
                                   chat_template=template)


FAMILY = Family(name="qwen3_vl", geometry=geometry, build_tiny=build_tiny, markers=markers, mrope=True,
                model_types=("qwen3_vl", "qwen3_vl_moe"),
                hub_ids=("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"),
                reference_sizes=reference_sizes)
