"""PaliGemma and PaliGemma 2 (``paligemma``): one square resize, one token per SigLIP patch
(16 x 16 at 224 px), no markers. The processor has no chat template: a prompt is
``<image> * n + <bos> + text + "\\n"`` -- the image tokens come first, before the BOS, so the
system span is empty -- and the prompt's image string is written straight before the text
(``"<image>describe the image"``; the processor adds the BOS and the closing newline).

The image tokens, the BOS and the prompt form one prefix that attends bidirectionally
(``token_type_ids`` 0); only tokens after the prompt are causal (type 1, which is what
``generate`` appends and what a teacher-forced continuation gets). Position ids count from 1.
PaliGemma's text model is Gemma; PaliGemma 2's is Gemma 2, whose soft-capped attention logits run
eagerly (:func:`vlmnb.engine.attention.stock_attention`). The tiny model is a PaliGemma 2.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, check_shape, size_get, vision_patch
from vlmnb.engine.tinykit import TEXT, VISION, at_reference_sizes, finish, make_tokenizer, seeded


def untemplated(placeholder: str, prompt: str) -> str:
    """The image placeholder straight before the text: the processor inserts the BOS between them."""
    return f"{placeholder}{prompt}"


def geometry(config, processor, image_size, inputs):
    """One picture resized to the vision encoder's square; one token per patch, row-major."""
    ip = processor.image_processor
    frame = Frame(*image_size).resize(size_get(ip.size, "width"), size_get(ip.size, "height"))
    check_shape("paligemma", frame, inputs["pixel_values"].shape)
    vis = config.vision_config.image_size
    vis = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    if (int(round(frame.w)), int(round(frame.h))) != (vis, vis):
        raise RuntimeError(f"paligemma: pictures of {frame.w}x{frame.h} for a {vis}px vision encoder are not supported")
    p = vision_patch(config)
    return Grid("image", frame, vis // p, vis // p, p, p).cells()


def _processor(image_processor, tokenizer, tokens_per_image: int):
    from transformers import PaliGemmaProcessor

    # the processor reads the token count from the image processor (``image_seq_length`` of the
    # checkpoint's preprocessor_config.json)
    image_processor.image_seq_length = tokens_per_image
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny(seed: int, view: int):
    """A tiny random PaliGemma 2 (SigLIP vision, Gemma 2 text: soft-capped attention logits, sliding
    and global layers; 4 x 4 patch tokens, no chat template)."""
    from transformers import (Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipImageProcessor,
                              SiglipVisionConfig)

    tok = make_tokenizer(["<pad>", "<eos>", "<bos>", "<image>"], bos="<bos>", eos="<eos>", pad="<pad>",
                         named={"image_token": "<image>"})
    patch = view // 4
    processor = _processor(SiglipImageProcessor(size={"height": view, "width": view}), tok, (view // patch) ** 2)
    # the processor adds PaliGemma's <loc....> / <seg...> tokens to the tokenizer: size the vocabulary after it
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = Gemma2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=512,
                        layer_types=["sliding_attention", "full_attention"], **TEXT)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, vision_use_head=False, **VISION),
        text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"), vocab_size=len(tok),
        projection_dim=TEXT["hidden_size"], hidden_size=TEXT["hidden_size"],
    )
    with seeded(seed):
        model = PaliGemmaForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """PaliGemma(2) *-224: one 224 px square, 14 px patches, 256 tokens."""
    from transformers import SiglipImageProcessor

    config, tok, _ = at_reference_sizes(config, processor, 224, 14)
    config.text_config.num_image_tokens = 256
    return config, _processor(SiglipImageProcessor(size={"height": 224, "width": 224}), tok, 256)


FAMILY = Family(
    name="paligemma", geometry=geometry, build_tiny=build_tiny, untemplated=untemplated,
    hub_ids=("google/paligemma-3b-mix-224", "google/paligemma2-3b-mix-224"), reference_sizes=reference_sizes,
    # the image tokens' keys depend on the prompt after them (bidirectional prefix)
    prefix_sharing=False, generated_token_type=1, position_offset=1,
    knockout_note=("Image tokens, BOS and prompt form one prefix that attends bidirectionally; only generated "
                   "tokens are causal. A knockout image -> (query, generated) removes every read of image keys "
                   "by prompt and generated tokens, while image rows keep reading the prompt; add "
                   "query -> image to cut that direction too."),
)
