"""GOT-OCR2 (``got_ocr2``): a SAM-style (ViTDet) vision encoder sees one square picture -- the
image resized to 1024 x 1024, aspect ratio not kept -- as 16 px patches; a neck and two stride-2
convolutions turn the 64 x 64 patch grid into 16 x 16 = 256 image tokens, each a 4 x 4 block of
patches. With ``crop_to_patches`` (off unless asked for at call time) the image is instead resized
onto a grid of 1024 px tiles (row-major, InternVL's tiling) followed by a thumbnail of the whole
image, 256 tokens each. The image tokens (``<imgpad>``) of all views sit between one ``<img>`` and
one ``</img>``, in a ChatML prompt without newlines between turns::

    <|im_start|>system\\nYou should follow ...<|im_end|><|im_start|>user\\n<img>...</img>\\nOCR: <|im_end|><|im_start|>assistant\\n
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, size_get, vision_patch
from vlmnb.engine.tinykit import PARTS, at_reference_sizes, finish, make_tokenizer, qwen2_config, seeded

SYSTEM = "You should follow the instructions carefully and explain your answers in detail."

# the prompt GotOcr2Processor builds itself when it is given no text (the checkpoint has no chat template)
TEMPLATE = PARTS + (
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>' }}"
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + parts(m['content'], '<img><imgpad></img>\\n')"
    " + '<|im_end|>' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

def untemplated(placeholder: str, prompt: str) -> str:
    """The checkpoints ship no chat template: the prompt GotOcr2Processor itself writes around
    the image, with ``prompt`` in place of its ``OCR:``."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\n<img>{placeholder}</img>\n{prompt}"
            "<|im_end|><|im_start|>assistant\n")


#: the projector's two stride-2 convolutions: one token per 4 x 4 patches
MERGE = 4


def markers(config, processor):
    """``<img>`` and ``</img>``."""
    tok = processor.tokenizer
    return (tok.convert_tokens_to_ids(getattr(processor, "img_start_token", "<img>")),
            tok.convert_tokens_to_ids(getattr(processor, "img_end_token", "</img>")))


def placeholder(processor) -> str:
    """``<imgpad>``: the processor expands it into 256 tokens per view."""
    return processor.image_token


def tiling(processor) -> tuple[int, int]:
    """``(min_patches, max_patches)`` in force: the processor's image defaults override the image
    processor's own settings (GotOcr2Processor passes them to every call)."""
    ip = processor.image_processor
    defaults = {"min_patches": getattr(ip, "min_patches", 1), "max_patches": getattr(ip, "max_patches", 12)}
    defaults.update({k: v for k, v in (getattr(processor, "images_kwargs", None) or {}).items() if k in defaults})
    return int(defaults["min_patches"]), int(defaults["max_patches"])


def geometry(config, processor, image_size, inputs):
    """One resized square, or (``crop_to_patches``) a row-major grid of tiles plus a thumbnail;
    each view a 16 x 16 grid of tokens over 4 x 4 patches."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    ip = processor.image_processor
    W, H = image_size
    th, tw = size_get(ip.size, "height"), size_get(ip.size, "width")
    pixels = inputs["pixel_values"]
    n, ph, pw = int(pixels.shape[0]), int(pixels.shape[-2]), int(pixels.shape[-1])
    vis = config.vision_config.image_size
    vis_h, vis_w = (vis if isinstance(vis, (list, tuple)) else (vis, vis))
    if (th, tw) != (ph, pw) or (ph, pw) != (vis_h, vis_w):
        raise RuntimeError(f"got_ocr2: pictures of {pw}x{ph} for a {vis_w}x{vis_h} vision encoder are not supported")
    p = vision_patch(config)
    rows, cols = -(-(-(-vis_h // p) // 2) // 2), -(-(-(-vis_w // p) // 2) // 2)  # two stride-2 convolutions
    cell = float(p * MERGE)
    if n == 1:
        grids = [Grid("image", Frame(W, H).resize(tw, th), rows, cols, cell, cell)]
    else:
        low, high = tiling(processor)
        tiles_x, tiles_y = get_optimal_tiled_canvas((H, W), (th, tw), low, high)
        if tiles_x * tiles_y + 1 != n:
            raise RuntimeError(f"got_ocr2: expected {tiles_x * tiles_y + 1} pictures for a {tiles_x}x{tiles_y} tiling, "
                               f"the processor made {n}")
        canvas = Frame(W, H).resize(tw * tiles_x, th * tiles_y)
        grids = [Grid(f"tile_{r}_{c}", canvas.crop(c * tw, r * th, tw, th), rows, cols, cell, cell)
                 for r in range(tiles_y) for c in range(tiles_x)]
        grids.append(Grid("thumbnail", Frame(W, H).resize(tw, th), rows, cols, cell, cell))
    return [entry for grid in grids for entry in grid.cells()]


def build_tiny(seed: int, view: int):
    """A tiny random GOT-OCR2 (SAM-style windowed vision encoder, Qwen2 text).

    GotOcr2Processor writes 256 image tokens per view whatever the model (a class default that
    save_pretrained does not keep), so the tiny vision encoder sees a 64 x 64 patch grid: views of
    ``64 * max(1, view // 64)`` pixels (64 px of 1 px patches for the default ``view`` of 32).
    """
    from transformers import (GotOcr2Config, GotOcr2ForConditionalGeneration, GotOcr2ImageProcessor,
                              GotOcr2Processor, GotOcr2VisionConfig)

    tok = make_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"],
                         eos="<|im_end|>", pad="<|endoftext|>", chat_template=TEMPLATE)
    patch = max(1, view // 64)
    side = 64 * patch
    image_processor = GotOcr2ImageProcessor(size={"height": side, "width": side})
    processor = GotOcr2Processor(image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATE)
    vision = GotOcr2VisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                                 mlp_dim=64, image_size=side, patch_size=patch, window_size=8,
                                 global_attn_indexes=[1], initializer_range=0.02)  # default 1e-10: a blind encoder
    # untied output embeddings (the checkpoint ties them): a tied random model repeats its last token
    config = GotOcr2Config(vision_config=vision, text_config=qwen2_config(tok), tie_word_embeddings=False,
                           image_token_index=tok.convert_tokens_to_ids("<imgpad>"), image_seq_length=256)
    with seeded(seed):
        model = GotOcr2ForConditionalGeneration(config)
    return finish(model, tok, seed), processor


def reference_sizes(config, processor):
    """GOT-OCR-2.0: one 1024 px square, 16 px patches, 256 tokens per view."""
    from transformers import GotOcr2ImageProcessor, GotOcr2Processor

    config, tok, template = at_reference_sizes(config, processor, 1024, 16)
    ip = GotOcr2ImageProcessor(size={"height": 1024, "width": 1024})
    return config, GotOcr2Processor(ip, tok, chat_template=template)


FAMILY = Family(name="got_ocr2", geometry=geometry, build_tiny=build_tiny, markers=markers, placeholder=placeholder,
                untemplated=untemplated,
                hub_ids=("stepfun-ai/GOT-OCR-2.0-hf", "yonigozlan/GOT-OCR-2.0-hf"), reference_sizes=reference_sizes)
