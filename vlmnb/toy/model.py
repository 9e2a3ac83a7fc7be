"""The toy model: a real ``LlavaForConditionalGeneration`` with a word-level tokenizer and a real processor.

Nothing here is special-cased: the model, tokenizer and processor are the stock transformers
classes, so the toy runs through exactly the code path of a hub LLaVA (``save_pretrained`` /
``from_pretrained``, ``processor.apply_chat_template``, ``generate``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

from vlmnb.toy.scenes import CELLS, COLORS, COUNT_WORDS, IMAGE_SIZE, SHAPES, SIZES

PATCH_SIZE = 10
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
DEFAULT_PROMPT = "describe the image"
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def vocabulary() -> list[str]:
    """Every token of the toy's word-level vocabulary, special tokens first."""
    words = ["user", "assistant", "describe", "the", "image", "a", "an", "at", "what", "is", "are",
             "there", "object", "objects", "nothing", "yes", "no", "of", "in"]
    words += list(SIZES) + list(COLORS) + list(SHAPES) + list(COUNT_WORDS)
    words += sorted({w for cell in CELLS for w in cell.split()})
    punctuation = [",", ".", "?", ":", "!"]
    seen: list[str] = []
    for tok in SPECIAL_TOKENS + punctuation + words:
        if tok not in seen:
            seen.append(tok)
    return seen


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased word-level tokenizer; unknown words map to ``<unk>``, a ``<s>`` is prepended."""
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words, no space before punctuation
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, model_max_length=512, padding_side="left")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def build_processor() -> LlavaProcessor:
    """A ``LlavaProcessor``: CLIP image processor (90x90, mean/std 0.5) + word-level tokenizer + chat template."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=build_tokenizer(),
                          patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>",
                          chat_template=CHAT_TEMPLATE)


@dataclass(frozen=True)
class ToyArchitecture:
    """Sizes of the toy model (defaults are those of the shipped checkpoint)."""

    text_hidden: int = 128
    text_layers: int = 8
    text_heads: int = 4
    text_intermediate: int = 256
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 256


def build_model(arch: ToyArchitecture = ToyArchitecture(), seed: int = 0) -> LlavaForConditionalGeneration:
    """A freshly initialised toy LLaVA (seeded)."""
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden, intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, projection_dim=arch.vision_hidden)
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=arch.text_hidden, intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=NUM_IMAGE_TOKENS)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def pixel_values(images) -> torch.Tensor:
    """The processor's pixel values for 90x90 RGB images, computed directly (fast path for training)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy((arr / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()
