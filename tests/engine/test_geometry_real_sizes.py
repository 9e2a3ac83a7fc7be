"""Geometry with the image-processor settings of the reference checkpoints (336/14 CLIP,
384/14 SigLIP with anyres_max_9, Qwen2-VL's pixel budget, 448px InternVL tiles, 364px Idefics3
crops, 512px SmolVLM crops, 896px Gemma3). No weights are needed: :func:`vlmnb.engine.spans.prepare`
reads only the config, so each case pairs a config with the checkpoint's sizes and a processor
with the same settings, and checks that the geometry's feature count equals the processor's
image-token count for images of many shapes, with every box inside the image."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from vlmnb.engine import spans as S
from vlmnb.engine import tiny


def _vision(config, image_size, patch):
    config.vision_config.image_size = image_size
    config.vision_config.patch_size = patch


def real_sized(built, family):
    """(config, processor) with the reference checkpoint's image settings."""
    import transformers as T

    model, small = built(family)
    config = copy.deepcopy(model.config)
    tok = copy.deepcopy(small.tokenizer)
    template = small.chat_template
    if family == "llava":
        _vision(config, 336, 14)
        ip = T.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        proc = T.LlavaProcessor(ip, tok, patch_size=14, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1, chat_template=template)
    elif family == "llava_next":
        _vision(config, 336, 14)
        pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        config.image_grid_pinpoints = pins
        ip = T.LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                       image_grid_pinpoints=pins)
        proc = T.LlavaNextProcessor(ip, tok, patch_size=14, vision_feature_select_strategy="default",
                                    num_additional_image_tokens=1, chat_template=template)
    elif family == "llava_onevision":
        _vision(config, 384, 14)
        ip = T.LlavaOnevisionImageProcessor()
        config.image_grid_pinpoints = ip.image_grid_pinpoints
        config.vision_aspect_ratio = "anyres_max_9"
        proc = T.LlavaOnevisionProcessor(ip, tok, video_processor=small.video_processor, num_image_tokens=729,
                                         vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                         chat_template=template)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        config.vision_config.patch_size = 14
        if family == "qwen2_5_vl":
            config.vision_config.window_size = 112
        ip = T.Qwen2VLImageProcessor()
        proc = type(small)(image_processor=ip, tokenizer=tok, video_processor=small.video_processor,
                           chat_template=template)
    elif family == "internvl":
        _vision(config, [448, 448], [14, 14])
        ip = T.GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=12)
        proc = T.InternVLProcessor(ip, tok, video_processor=small.video_processor, image_seq_length=256,
                                   chat_template=template)
    elif family == "idefics3":
        _vision(config, 364, 14)
        ip = T.Idefics3ImageProcessor()
        proc = T.Idefics3Processor(ip, tok, image_seq_len=169, chat_template=template)
    elif family == "smolvlm":
        _vision(config, 512, 16)
        config.scale_factor = 4
        ip = T.SmolVLMImageProcessor(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
        proc = T.SmolVLMProcessor(ip, tok, video_processor=small.video_processor, image_seq_len=64,
                                  chat_template=template)
    elif family == "gemma3":
        _vision(config, 896, 14)
        config.mm_tokens_per_image = 256
        ip = T.Gemma3ImageProcessor(size={"height": 896, "width": 896})
        proc = T.Gemma3Processor(ip, tok, chat_template=template, image_seq_length=256)
    else:  # pragma: no cover - every family has a case
        raise AssertionError(family)
    return config, proc


SHAPES = [(640, 480), (300, 1000), (1000, 300), (50, 50), (333, 777)]


@pytest.mark.slow
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_reference_sizes_token_counts_and_boxes(family, built):
    config, proc = real_sized(built, family)
    rng = np.random.RandomState(0)
    for W, H in SHAPES:
        image = Image.fromarray((rng.rand(H, W, 3) * 255).astype(np.uint8))
        prep = S.prepare(config, proc, image, "describe the image")  # raises if counts disagree
        g = prep.geometry
        b = g.boxes[g.has_box]
        assert len(b) > 0
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= W + 1e-6).all() and (b[:, 3] <= H + 1e-6).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        # the overview view sees the centre pixel
        assert set(g.token_at(W // 2, H // 2)) & set(g.view().token_indices)


@pytest.mark.slow
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_reference_sizes_painted_region_end_to_end(family, built, make_local, assert_paint_localised):
    """A random model at the checkpoint's image sizes (tiny widths): the tokens whose boxes cover a
    painted region are the image tokens whose embeddings change."""
    import torch
    import transformers as T

    config, proc = real_sized(built, family)
    model_class = getattr(T, type(built(family)[0]).__name__)
    torch.manual_seed(0)
    model = make_local(model_class(config).eval())
    if family == "gemma3":
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    assert_paint_localised(model, proc, (500, 360), (40, 200, 300, 330))
