"""Idefics3 (``idefics3``): crops + a global picture, each between ``<fake_token_around_image>``
markers with ``<row_i_col_j>`` / ``<global-img>`` tags; pixel shuffle merges scale x scale patches.
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, size_get, vision_patch
from vlmnb.engine.tinykit import at_reference_sizes, PARTS, VISION, finish, llama_config, make_tokenizer, seeded


TEMPLATE = PARTS + (
    "{{ '<|begin_of_text|>' }}{%- for m in messages -%}"
    "{{ (m['role'] | capitalize) + ':' + parts(m['content'], '<image>') + '<end_of_utterance>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

TEMPLATE_SMOLVLM = PARTS + (
    "{{ '<|im_start|>' }}{%- for m in messages -%}"
    "{{ (m['role'] | capitalize) + ':' + parts(m['content'], '<image>') + '<end_of_utterance>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def markers(config, processor):
    """``<fake_token_around_image>`` (by the processor's id and by its token)."""
    tok = processor.tokenizer
    return (getattr(processor, "fake_image_token_id", None),
            tok.convert_tokens_to_ids(getattr(processor, "fake_image_token", "<fake_token_around_image>")))


def geometry(config, processor, image_size, inputs):
    """Idefics3 / SmolVLM: the image resized (longest edge), resized up to multiples of the crop
    size, cut into a rows x cols grid of crops (row-major), then a global picture of the whole
    image; pixel shuffle merges scale x scale patches."""
    from transformers.models.idefics3.image_processing_idefics3 import get_resize_output_image_size

    ip = processor.image_processor
    W, H = image_size
    M = int(size_get(ip.max_image_size, "longest_edge"))
    frame = Frame(W, H)
    if getattr(ip, "do_resize", True):
        longest = size_get(ip.size, "longest_edge")
        if longest:
            h1, w1 = get_resize_output_image_size(_Shape(H, W), resolution_max_side=longest)
        else:
            h1, w1 = size_get(ip.size, "height"), size_get(ip.size, "width")
        frame = frame.resize(w1, h1)
    grids_frames = []
    if getattr(ip, "do_image_splitting", True):
        h, w = int(round(frame.h)), int(round(frame.w))
        aspect = w / h
        if w >= h:
            w2 = math.ceil(w / M) * M
            h2 = math.ceil(int(w2 / aspect) / M) * M
        else:
            h2 = math.ceil(h / M) * M
            w2 = math.ceil(int(h2 * aspect) / M) * M
        frame = frame.resize(w2, h2)
        if h2 > M or w2 > M:
            rows, cols = h2 // M, w2 // M
            for r in range(rows):
                for c in range(cols):
                    grids_frames.append((f"crop_{r}_{c}", frame.crop(c * M, r * M, M, M)))
            grids_frames.append(("global", frame.resize(M, M)))
        else:
            grids_frames.append(("image", frame))
    else:
        grids_frames.append(("image", frame.resize(M, M)))
    n = int(inputs["pixel_values"].shape[1])
    if n != len(grids_frames):
        raise RuntimeError(f"idefics3: expected {len(grids_frames)} pictures, the processor made {n}")
    p = vision_patch(config)
    per_side = (M // p) // int(config.scale_factor)
    cell = float(p * int(config.scale_factor))  # pixel shuffle merges scale x scale patches
    entries = []
    for name, f in grids_frames:
        entries += Grid(name, f, per_side, per_side, cell, cell).cells()
    return entries


class _Shape:
    """Stands in for an image tensor where a transformers helper only reads ``shape[-2:]``."""

    def __init__(self, h, w):
        self.shape = (3, h, w)


def build_idefics3(seed: int, view: int, smol: bool):
    """A tiny random Idefics3 or, with ``smol``, SmolVLM (crops + global picture)."""
    if smol:
        from transformers import (SmolVLMConfig as Config, SmolVLMForConditionalGeneration as Model,
                                  SmolVLMImageProcessor as ImageProcessor, SmolVLMProcessor as Processor,
                                  SmolVLMVideoProcessor, SmolVLMVisionConfig as VisionConfig)
    else:
        from transformers import (Idefics3Config as Config, Idefics3ForConditionalGeneration as Model,
                                  Idefics3ImageProcessor as ImageProcessor, Idefics3Processor as Processor,
                                  Idefics3VisionConfig as VisionConfig)
    bos = "<|im_start|>" if smol else "<|begin_of_text|>"
    row_col = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = [bos, "<|endoftext|>", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
    template = TEMPLATE_SMOLVLM if smol else TEMPLATE
    tok = make_tokenizer(specials + row_col, bos=bos, eos="<end_of_utterance>", pad="<|endoftext|>",
                     named={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                            "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
                     chat_template=template)
    patch = view // 8
    scale = 2
    seq = (view // patch // scale) ** 2
    image_processor = ImageProcessor(size={"longest_edge": 2 * view}, max_image_size={"longest_edge": view},
                                     do_image_splitting=True)
    kwargs = {}
    if smol:
        kwargs["video_processor"] = SmolVLMVideoProcessor(size={"longest_edge": view},
                                                          max_image_size={"longest_edge": view})
    processor = Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq, chat_template=template,
                          **kwargs)
    config = Config(
        vision_config=VisionConfig(image_size=view, patch_size=patch, **VISION), text_config=llama_config(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
    )
    with seeded(seed):
        model = Model(config)
    return finish(model, tok, seed), processor


def build_tiny(seed: int, view: int):
    """A tiny random Idefics3."""
    return build_idefics3(seed, view, smol=False)


def reference_sizes(config, processor):
    """Idefics3-8B: 364 px crops plus a global view, 14 px patches, 169 tokens per crop."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    config, tok, template = at_reference_sizes(config, processor, 364, 14)
    return config, Idefics3Processor(Idefics3ImageProcessor(), tok, image_seq_len=169, chat_template=template)

FAMILY = Family(name="idefics3", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("HuggingFaceM4/Idefics3-8B-Llama3",), reference_sizes=reference_sizes)
