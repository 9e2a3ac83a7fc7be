"""Idefics2 (``idefics2``): the image (with image splitting: its four quarters, then the whole
image) is resized so its short side is at least ``shortest_edge`` and its long side at most
``longest_edge``, and each picture goes through a SigLIP encoder at its own resolution; a perceiver
resampler turns every picture's patches into ``resampler_n_latents`` tokens (64 learned queries
that cross-attend to all of the picture's patches). Each picture's tokens sit between
``<fake_token_around_image>`` markers (one marker between consecutive pictures).

Geometry: a resampled token pools its whole picture and no single patch, so every token of a
picture gets that picture's box (a ``whole_view`` grid, :mod:`vlmnb.engine.geometry`): a painted
detail changes all tokens of the pictures that contain it and none of the others'. The boxes are
exact but coarse -- a quarter of the image at best -- so a token "localises" a detail only to
its quarter.
"""
from __future__ import annotations

import math

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, size_get, vision_patch
from vlmnb.engine.tinykit import PARTS, TEXT, VISION, at_reference_sizes, finish, make_tokenizer, seeded


TEMPLATE = PARTS + (
    "{%- for m in messages -%}"
    "{{ (m['role'] | capitalize) + ':' + parts(m['content'], '<image>') + '<end_of_utterance>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def markers(config, processor):
    """``<fake_token_around_image>``."""
    tok = processor.tokenizer
    return (tok.convert_tokens_to_ids(getattr(processor, "fake_image_token", "<fake_token_around_image>")),)


def resized_size(w: int, h: int, size) -> tuple[int, int]:
    """``(w, h)`` after Idefics2's resize: the long side capped at ``longest_edge`` (aspect kept,
    truncated), then each side raised to at least ``shortest_edge``; or a fixed height x width."""
    shortest, longest = size_get(size, "shortest_edge"), size_get(size, "longest_edge")
    if not (shortest and longest):
        return size_get(size, "width"), size_get(size, "height")
    aspect = w / h
    if w >= h and w > longest:
        w, h = longest, int(longest / aspect)
    elif h > w and h > longest:
        h, w = longest, int(longest * aspect)
    return max(w, shortest), max(h, shortest)


def query_grid(n: int) -> tuple[int, int]:
    """``(rows, cols)`` to order ``n`` learned queries: a square when ``n`` is one, else one row."""
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def geometry(config, processor, image_size, inputs):
    """The pictures in the processor's order (four quarters of the original image, cut at
    ``W // 2`` and ``H // 2``, then the whole image; or the image alone without splitting), each
    resized on its own; each gives ``resampler_n_latents`` tokens whose box is the part of the
    picture the encoder sees (whole patches from the top-left corner)."""
    ip = processor.image_processor
    W, H = image_size
    whole = Frame(W, H)
    if getattr(ip, "do_image_splitting", False):
        mw, mh = W // 2, H // 2
        pictures = [("crop_0_0", whole.crop(0, 0, mw, mh)), ("crop_0_1", whole.crop(mw, 0, W - mw, mh)),
                    ("crop_1_0", whole.crop(0, mh, mw, H - mh)), ("crop_1_1", whole.crop(mw, mh, W - mw, H - mh)),
                    ("global", whole)]
    else:
        pictures = [("image", whole)]
    n = int(inputs["pixel_values"].shape[1])
    if n != len(pictures):
        raise RuntimeError(f"idefics2: expected {len(pictures)} pictures, the processor made {n}")
    p = vision_patch(config)
    rows, cols = query_grid(int(config.perceiver_config.resampler_n_latents))
    entries = []
    for name, frame in pictures:
        if getattr(ip, "do_resize", True):
            frame = frame.resize(*resized_size(int(round(frame.w)), int(round(frame.h)), ip.size))
        # the encoder sees whole patches only: a remainder strip on the right / bottom is dropped
        seen_w, seen_h = (int(round(frame.w)) // p) * p, (int(round(frame.h)) // p) * p
        grid = Grid(name, frame, rows, cols, seen_w / cols, seen_h / rows, whole_view=True)
        entries += grid.cells()
    return entries


def init_random(model):
    """transformers initialises the perceiver's latents to ones: all queries alike, so every token
    of a picture would be the same vector."""
    import torch

    latents = model.model.connector.perceiver_resampler.latents
    with torch.no_grad():
        latents.normal_(0.0, 1.0)


def build_tiny(seed: int, view: int):
    """A tiny random Idefics2 (image splitting on, 16 learned queries per picture, Mistral text)."""
    from transformers import (Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessor,
                              Idefics2PerceiverConfig, Idefics2Processor, Idefics2VisionConfig, MistralConfig)

    named = {"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>"}
    tok = make_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<fake_token_around_image>", "<image>",
                          "<end_of_utterance>"], bos="<s>", eos="<end_of_utterance>", pad="<pad>", add_bos=True,
                         named=named, chat_template=TEMPLATE)
    patch = view // 8
    latents = 16
    # the encoder's position grid spans the longest side; pictures keep their own resolution
    image_processor = Idefics2ImageProcessor(size={"shortest_edge": view, "longest_edge": 2 * view},
                                             do_image_splitting=True)
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=latents,
                                  chat_template=TEMPLATE)
    text = MistralConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, sliding_window=None, **TEXT)
    perceiver = Idefics2PerceiverConfig(hidden_size=TEXT["hidden_size"], rms_norm_eps=text.rms_norm_eps,
                                        resampler_n_latents=latents, resampler_depth=2, resampler_n_heads=4,
                                        resampler_head_dim=16, num_key_value_heads=2)
    config = Idefics2Config(
        vision_config=Idefics2VisionConfig(image_size=2 * view, patch_size=patch, **VISION),
        perceiver_config=perceiver, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    with seeded(seed):
        model = Idefics2ForConditionalGeneration(config)
        init_random(model)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """Idefics2-8B: image splitting, pictures from 378 to 980 px, 14 px patches, 64 learned queries."""
    from transformers import Idefics2ImageProcessor, Idefics2Processor

    config, tok, template = at_reference_sizes(config, processor, 980, 14)
    config.perceiver_config.resampler_n_latents = 64
    ip = Idefics2ImageProcessor(size={"shortest_edge": 378, "longest_edge": 980}, do_image_splitting=True)
    return config, Idefics2Processor(ip, tok, image_seq_len=64, chat_template=template)


FAMILY = Family(name="idefics2", geometry=geometry, build_tiny=build_tiny, markers=markers,
                hub_ids=("HuggingFaceM4/idefics2-8b", "HuggingFaceM4/idefics2-8b-chatty"),
                reference_sizes=reference_sizes, init_random=init_random)
