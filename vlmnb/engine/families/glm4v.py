"""GLM-4.1V (``glm4v``; GLM-4.5V / 4.6V are ``glm4v_moe``): the picture resized to a grid of
14 px patches (each side rounded to a multiple of 28 px, within a pixel budget counted for two
frames), ``2 x 2`` patches merged per token by a strided convolution, row-major, between
``<|begin_of_image|>`` and ``<|end_of_image|>`` in a ``[gMASK]<sop><|user|>`` turn; 3-D (M-RoPE)
text positions, as in Qwen2-VL.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.qwen2_vl import geometry
from vlmnb.engine.tinykit import PARTS, TEXT, at_reference_sizes, finish, make_tokenizer, seeded

TEMPLATE = PARTS + (
    "{{ '[gMASK]<sop>' }}{%- for m in messages -%}"
    "{{ '<|' + m['role'] + '|>\\n' + parts(m['content'], '<|begin_of_image|><|image|><|end_of_image|>') }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
            "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"]


def markers(config, processor):
    """``<|begin_of_image|>`` and ``<|end_of_image|>``."""
    return (getattr(config, "image_start_token_id", None), getattr(config, "image_end_token_id", None))


def build_glm4v(seed: int, view: int, moe: bool = False):
    """A tiny random GLM-4.1V (patches of ``view // 8`` px merged 2 x 2, half-rotary M-RoPE); with
    ``moe``, the GLM-4.5V (``glm4v_moe``) variant."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    if moe:
        from transformers import Glm4vMoeConfig as Config, Glm4vMoeForConditionalGeneration as Model
    else:
        from transformers import Glm4vConfig as Config, Glm4vForConditionalGeneration as Model

    tok = make_tokenizer(SPECIALS, eos="<|endoftext|>", pad="<|endoftext|>", chat_template=TEMPLATE,
                         named={"image_token": "<|image|>", "video_token": "<|video|>"})
    patch, merge = view // 8, 2
    factor = patch * merge
    # a view x view picture keeps its resolution; at most 4 views' worth of pixels (the budget
    # counts two frames, an image being repeated in time)
    sizes = dict(size={"shortest_edge": factor * factor, "longest_edge": 2 * 4 * view * view}, patch_size=patch,
                 merge_size=merge, temporal_patch_size=2)
    processor = Glm4vProcessor(image_processor=Glm4vImageProcessor(**sizes), tokenizer=tok,
                               video_processor=Glm4vVideoProcessor(**sizes), chat_template=TEMPLATE)
    # half of each head is rotated (partial_rotary_factor 0.5), split T / H / W like the real [8, 12, 12]
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    section = [head_dim // 8, head_dim // 16, head_dim // 16]
    text = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "mrope_section": section, "partial_rotary_factor": 0.5,
                                 "rope_theta": 10000.0}, **TEXT)
    if moe:
        text.update(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                    first_k_dense_replace=1, head_dim=head_dim)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, image_size=view, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"])
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
        ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
        ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>"))}
    config = Config(text_config=text, vision_config=vision, **ids)
    with seeded(seed):
        model = Model(config)
    return finish(model, tok, seed), processor


def build_tiny(seed: int, view: int):
    """A tiny random GLM-4.1V."""
    return build_glm4v(seed, view)


def build_tiny_moe(seed: int, view: int):
    """A tiny random GLM-4.5V (``glm4v_moe``: a dense first layer, then 4 routed experts + 1 shared)."""
    return build_glm4v(seed, view, moe=True)


def reference_sizes(config, processor):
    """GLM-4.1V: 14 px patches merged 2x2, 112x112 to 9.6 M pixels (two frames' worth) per picture,
    learned vision positions on a 336 px / 24 x 24 grid."""
    from transformers import Glm4vImageProcessor

    config, tok, template = at_reference_sizes(config, processor, 336, 14)
    ip = Glm4vImageProcessor(size={"shortest_edge": 12544, "longest_edge": 9633792}, patch_size=14, merge_size=2,
                             temporal_patch_size=2)
    return config, type(processor)(image_processor=ip, tokenizer=tok, video_processor=processor.video_processor,
                                   chat_template=template)


FAMILY = Family(name="glm4v", geometry=geometry, build_tiny=build_tiny, markers=markers, mrope=True,
                model_types=("glm4v", "glm4v_moe"),
                hub_ids=("zai-org/GLM-4.1V-9B-Thinking", "zai-org/GLM-4.1V-9B-Base"),
                reference_sizes=reference_sizes)
