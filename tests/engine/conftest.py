"""Fixtures the engine tests share: a tiny random LLaVA built from a config with hand-made
inputs (``tiny_llava``, ``tiny_vlm``, ``make_input``), noise images (``noise``), the tiny
models of every family (``built``). Factories are session-scoped, so module-scoped fixtures can
use them; each test module builds its own model from them."""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmnb.engine import tiny  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402

IMAGE_TOKEN = 99
N_IMAGE = 16  # (32 / 8) ** 2 patches, CLS dropped


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, IMAGE_TOKEN)})
    vocab["<image>"] = IMAGE_TOKEN
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=["<image>"])


def _tiny_llava(seed: int = 0, layers: int = 4, eager: bool = False):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=IMAGE_TOKEN + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         attn_implementation="eager" if eager else "sdpa")
    model = LlavaForConditionalGeneration(config).eval()
    # scale up the random weights a little so attention is far from uniform
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4.0)
    model.generation_config.eos_token_id = None  # fixed-length generations
    model.generation_config.pad_token_id = 0
    return model


def _tiny_vlm(seed: int = 0, layers: int = 4, eager: bool = False) -> VLM:
    return VLM(_tiny_llava(seed, layers, eager), _tiny_tokenizer(), name="tiny-llava", family="llava")


class FakeSpans(SimpleNamespace):
    """Stands in for vlmnb.engine.spans.Spans (same attributes and positions()), but mutable."""

    def positions(self, name):
        return getattr(self, name)


def _make_input(system=(1, 5, 6), query=(7, 8, 9), image_seed: int = 0):
    """A Prepared-like input: input_ids with the image placeholder, pixel values, spans."""
    ids = list(system) + [IMAGE_TOKEN] * N_IMAGE + list(query)
    input_ids = torch.tensor([ids])
    g = torch.Generator().manual_seed(image_seed)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "pixel_values": torch.randn(1, 3, 32, 32, generator=g)}
    s = len(system)
    spans = FakeSpans(system=np.arange(0, s), image=np.arange(s, s + N_IMAGE),
                      query=np.arange(s + N_IMAGE, len(ids)), generated=np.arange(0))
    return SimpleNamespace(inputs=inputs, spans=spans, input_ids=input_ids)


def _noise(width, height, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8))


@functools.lru_cache(maxsize=None)
def _built(family):
    return tiny.build(family, seed=0)


@pytest.fixture(scope="session")
def image_token() -> int:
    """The image placeholder id of the tiny LLaVA (``tiny_llava``)."""
    return IMAGE_TOKEN


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Factory: the word-level tokenizer of the tiny LLaVA (``w3`` .. ``w98``, ``<image>`` = 99)."""
    return _tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_llava():
    """Factory ``(seed=0, layers=4, eager=False) -> model``: a tiny random LLaVA (SDPA or eager
    attention; the same weights for the same seed), fixed-length generations."""
    return _tiny_llava


@pytest.fixture(scope="session")
def tiny_vlm():
    """Factory ``(seed=0, layers=4, eager=False) -> VLM`` over :func:`tiny_llava`."""
    return _tiny_vlm


@pytest.fixture(scope="session")
def make_input():
    """Factory ``(system=(1, 5, 6), query=(7, 8, 9), image_seed=0)``: a prepared-like input of
    the tiny LLaVA with mutable spans (tests break them on purpose)."""
    return _make_input


@pytest.fixture(scope="session")
def noise():
    """Factory ``(width, height, seed=0) -> PIL image`` of uniform noise."""
    return _noise


@pytest.fixture(scope="session")
def built():
    """Factory ``family -> (model, processor)``: the tiny model of ``family`` (seed 0), built once."""
    return _built
