"""FastVLM (``fast_vlm``): LLaVA's single picture -- the image resized (shortest edge 1024) and
center-cropped to 1024 x 1024 -- seen by FastViTHD, a convolutional / attention hybrid that
downsamples by 64: its 16 x 16 feature map, row-major, gives 256 image tokens of 64 x 64 pixels
(no CLS). The ``<image>`` tokens sit without markers in a ChatML prompt with Qwen2's system prompt::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<image>\\n...<|im_end|>\\n<|im_start|>assistant\\n
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.llava import picture_frame
from vlmnb.engine.geometry import Grid, check_shape
from vlmnb.engine.tinykit import CHATML_SPECIALS, at_reference_sizes, chatml, finish, make_tokenizer, qwen2_config, seeded

TEMPLATE = chatml("<image>\\n", system="You are a helpful assistant.")


def geometry(config, processor, image_size, inputs):
    """One picture (padded to a square if the processor pads, resized, center-cropped); a grid of
    ``processor.patch_size`` cells -- the encoder's total stride."""
    frame = picture_frame(processor.image_processor, image_size)
    check_shape("fast_vlm", frame, inputs["pixel_values"].shape)
    stride = int(processor.patch_size)
    w, h = int(round(frame.w)), int(round(frame.h))
    return Grid("image", frame, h // stride, w // stride, stride, stride).cells()


def _vision_config(embed_dims: tuple[int, ...]):
    from transformers import TimmWrapperConfig

    stages = len(embed_dims)
    # FastViT stages of RepMixer blocks (reparameterised convolutions); the stem downsamples by 4,
    # every later stage by 2. The checkpoint's last two stages attend, with convolutional position
    # encodings that a JSON config cannot name, so the tiny one keeps to RepMixer.
    args = {"inference_mode": True, "layers": [1] * stages, "embed_dims": list(embed_dims), "mlp_ratios": [2] * stages,
            "se_downsamples": [False] * stages, "downsamples": [False] + [True] * (stages - 1),
            "pos_embs": [None] * stages, "token_mixers": ["repmixer"] * stages, "lkc_use_act": True,
            "stem_use_scale_branch": False}
    return TimmWrapperConfig(architecture="fastvit_mci3", do_pooling=False, hidden_size=2 * embed_dims[-1],
                             model_args=args, num_labels=0)


def init_random(model):
    """transformers draws the timm encoder's convolutions with std 0.02, under which a random
    FastViT fades the picture out within a few layers; re-draw them scaled to their fan-in."""
    import torch

    with torch.no_grad():
        for module in model.model.vision_tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5)


def build_tiny(seed: int, view: int):
    """A tiny random FastVLM (a two-stage FastViT of stride 8 via timm, Qwen2 text)."""
    from transformers import CLIPImageProcessor, FastVlmConfig, FastVlmForConditionalGeneration, LlavaProcessor

    tok = make_tokenizer(CHATML_SPECIALS + ["<image>"], eos="<|im_end|>", pad="<|endoftext|>",
                         named={"image_token": "<image>"}, chat_template=TEMPLATE)
    stride = 8
    image_processor = CLIPImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view},
                                         image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=stride,
                               chat_template=TEMPLATE)
    config = FastVlmConfig(vision_config=_vision_config((16, 32)), text_config=qwen2_config(tok),
                           image_token_index=tok.convert_tokens_to_ids("<image>"),
                           image_seq_length=(view // stride) ** 2)
    with seeded(seed):
        model = FastVlmForConditionalGeneration(config)
        init_random(model)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """FastVLM: one 1024 px picture, FastViTHD's stride of 64 (256 tokens)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    config, tok, template = at_reference_sizes(config, processor)
    config.vision_config = _vision_config((16, 16, 32, 32, 64))  # stem / 4, then 4 stages / 2: stride 64
    config.image_seq_length = 256
    ip = CLIPImageProcessor(size={"shortest_edge": 1024}, crop_size={"height": 1024, "width": 1024},
                            image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    return config, LlavaProcessor(ip, tok, patch_size=64, chat_template=template)


FAMILY = Family(name="fast_vlm", geometry=geometry, build_tiny=build_tiny, crops=True,
                hub_ids=("KamilaMila/FastVLM-0.5B", "KamilaMila/FastVLM-7B"), reference_sizes=reference_sizes,
                init_random=init_random)
