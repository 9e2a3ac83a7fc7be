"""InternVL2 (``internvl_chat``): the hub checkpoints ``OpenGVLab/InternVL2-*``, which run their own
modelling code (``vlmnb.load(..., trust_remote_code=True)``); the paper's InternVL2-Llama3-76B.

A picture is resized onto the ``cols x rows`` grid of 448 px tiles whose aspect ratio is closest
to its own (1 to ``max_dynamic_patch`` tiles), cut into those tiles (row-major) and, when there is
more than one, followed by a 448 px thumbnail of the whole picture. InternViT sees each tile as
32 x 32 patches of 14 px (its CLS feature is dropped); pixel shuffle merges 2 x 2 patches, so a
tile gives 256 tokens, which an MLP projects into the language model. The prompt holds them as
``<img>`` + ``<IMG_CONTEXT>`` x 256 per tile + ``</img>``, written where the user turn's
``<image>`` stood, in the checkpoint's conversation template (``config.template``; the 76B's
``Hermes-2``: ``<|im_start|>system\\n<system message><|im_end|><|im_start|>user\\n<image>\\n...
<|im_end|><|im_start|>assistant\\n``, with the system message the checkpoint's code sets).

vlmnb runs the checkpoint's own vision encoder, projector and language model
(:mod:`vlmnb.engine.remote`) with its own processor (:mod:`vlmnb.engine.internvl2_processing`).
The language model must be one of transformers' own (whose attention the engine can knock out
and record): Llama (InternVL2-40B, InternVL2-Llama3-76B) or Qwen2 (InternVL2-1B). The variants
with an InternLM2 or Phi-3 decoder (2B, 4B, 8B, 26B) ship their own decoder code and are refused.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from vlmnb.core.errors import OneLineError
from vlmnb.engine.families.base import Family
from vlmnb.engine.geometry import Frame, Grid, vision_patch
from vlmnb.engine.internvl2_processing import (IMG_CONTEXT, IMG_END, IMG_START, PLACEHOLDER, ChatFormat,
                                               InternVL2Processor)
from vlmnb.engine.remote import ImageTokenModel, RemoteCodeMissing, completed_class, remote_class
from vlmnb.engine.tinykit import CHATML_SPECIALS, TEXT, VISION, finish, make_tokenizer, seeded

#: the decoders vlmnb runs (transformers' own classes) -> the checkpoints that use them
SUPPORTED_DECODERS = {"LlamaForCausalLM": "InternVL2-40B, InternVL2-Llama3-76B", "Qwen2ForCausalLM": "InternVL2-1B"}
#: the environment variable naming a folder of InternVL2's remote code (the tiny model is built from it)
CODE_ENV = "VLMNB_INTERNVL2_CODE"
#: where that code is looked for otherwise: in the repository and each folder above it
CODE_FOLDER = Path("shared") / "third_party" / "internvl2"


class UnsupportedVariant(OneLineError, ValueError):
    """An InternVL2 checkpoint whose language model vlmnb cannot run (InternLM2, Phi-3)."""


class InternVL2Model(ImageTokenModel):
    """The engine's interface over the checkpoint's ``InternVLChatModel``: image features from its
    own ``extract_feature`` (InternViT, pixel shuffle, MLP projector), one row per tile."""

    def image_features(self, pixel_values):
        return self.extract_feature(pixel_values)


# ----------------------------------------------------------------------------- loading


def check_decoder(config, name: str = "this checkpoint") -> None:
    """Raise :class:`UnsupportedVariant` (one line) unless the language model is one vlmnb runs."""
    architectures = getattr(getattr(config, "llm_config", None), "architectures", None) or ["?"]
    if architectures[0] not in SUPPORTED_DECODERS:
        supported = "; ".join(f"{models} ({arch.removesuffix('ForCausalLM')})"
                              for arch, models in SUPPORTED_DECODERS.items())
        raise UnsupportedVariant(f"{name}: InternVL2 with a {architectures[0]} language model is not supported (its "
                                 "decoder is the checkpoint's own code, whose attention vlmnb cannot knock out); "
                                 f"supported: {supported}")


def chat_format(model) -> ChatFormat:
    """The checkpoint's conversation template (``model.conv_template``), with the system message
    its code set (``model.system_message``)."""
    conv = model.conv_template
    if getattr(conv.sep_style, "name", "") != "MPT":
        raise UnsupportedVariant(f"InternVL2 template {model.template!r} ({conv.sep_style}) is not supported; "
                                 "vlmnb writes the MPT-style templates (Hermes-2, internlm2-chat, phi3-chat)")
    user, assistant = conv.roles
    return ChatFormat(name=str(model.template), system_template=conv.system_template,
                      system_message=model.system_message, user=user, assistant=assistant, sep=conv.sep)


def processor_for(config, tokenizer, chat: ChatFormat) -> InternVL2Processor:
    """The processor with ``config``'s image settings (tile size, tiling limits, thumbnail)."""
    size = int(config.force_image_size or config.vision_config.image_size)
    tokens = int((size // vision_patch(config)) ** 2 * config.downsample_ratio ** 2)
    return InternVL2Processor(tokenizer, image_size=size, tokens_per_tile=tokens, chat=chat,
                              min_tiles=config.min_dynamic_patch, max_tiles=config.max_dynamic_patch,
                              use_thumbnail=config.use_thumbnail, dynamic=config.dynamic_image_size)


def ready(model, tokenizer):
    """``(model, processor)``: a loaded model set up as the checkpoint's ``chat()`` sets it up (the
    ``<IMG_CONTEXT>`` id; generation ends at the template's separator), its language model on
    SDPA (what vlmnb's attention function reproduces), and its processor."""
    chat = chat_format(model)
    processor = processor_for(model.config, tokenizer, chat)
    context = processor.context_token_id
    model.img_context_token_id = context
    model.config.image_token_id = context  # where the engine looks for the image token
    model.language_model.set_attn_implementation("sdpa")
    generation = model.generation_config
    generation.eos_token_id = int(tokenizer.convert_tokens_to_ids(chat.sep.strip()))
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else generation.eos_token_id
    return model.eval(), processor


def load_remote(source, config, **kwargs):
    """Load an InternVL2 hub checkpoint (its own code, ``trust_remote_code=True``) and its tokenizer:
    ``(model, processor)``. An unsupported language model is refused before any weight is read."""
    from transformers import AutoTokenizer

    check_decoder(config, str(source))
    hub = {k: kwargs[k] for k in ("revision", "local_files_only", "cache_dir", "token") if k in kwargs}
    kwargs.pop("trust_remote_code", None)
    model_class = completed_class(remote_class(config, source, **hub), InternVL2Model)
    model = model_class.from_pretrained(source, config=config, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True, **hub)
    return ready(model, tokenizer)


# ----------------------------------------------------------------------------- spans and geometry


def markers(config, processor):
    """``<img>`` and ``</img>``."""
    return (processor.start_image_token_id, processor.end_image_token_id)


def placeholder(processor) -> str:
    """``<image>``: the processor writes the image tokens in its place."""
    return PLACEHOLDER


def geometry(config, processor, image_size, inputs):
    """Tiles of ``processor.image_size`` px (row-major) on the grid the processor chose, then the
    thumbnail; pixel shuffle merges 2 x 2 patches (``ps_version`` 'v1' lists a tile's tokens
    column by column, as the model then does)."""
    W, H = image_size
    size = processor.image_size
    cols, rows = processor.grid(W, H)
    thumbnail = processor.has_thumbnail(cols, rows)
    n = int(inputs["pixel_values"].shape[0])
    if n != cols * rows + thumbnail:
        raise RuntimeError(f"internvl2: expected {cols * rows + thumbnail} pictures for a {cols}x{rows} tiling, "
                           f"got {n}")
    p = vision_patch(config)
    per_side = int(round(size // p * config.downsample_ratio))
    if size % p or per_side ** 2 != processor.tokens_per_tile:
        raise RuntimeError(f"internvl2: {size} px tiles of {p} px patches do not give the processor's "
                           f"{processor.tokens_per_tile} tokens per tile")
    cell = p / config.downsample_ratio  # pixel shuffle merges 1/ratio x 1/ratio patches
    canvas = Frame(W, H).resize(size * cols, size * rows)
    grids = [Grid("image" if cols * rows == 1 else f"tile_{r}_{c}", canvas.crop(c * size, r * size, size, size),
                  per_side, per_side, cell, cell) for r in range(rows) for c in range(cols)]
    if thumbnail:
        grids.append(Grid("thumbnail", Frame(W, H).resize(size, size), per_side, per_side, cell, cell))
    if getattr(config, "ps_version", "v1") == "v1":
        return [(g, r, c) for g in grids for c in range(g.cols) for r in range(g.rows)]
    return [cell for g in grids for cell in g.cells()]


# ----------------------------------------------------------------------------- tiny model


def remote_code_folder() -> Path:
    """The folder holding InternVL2's remote code for the tiny model: ``$VLMNB_INTERNVL2_CODE``, else
    the first ``shared/third_party/internvl2`` in the repository or a folder above it."""
    env = os.environ.get(CODE_ENV)
    repository = Path(__file__).resolve().parents[3]
    candidates = [Path(env)] if env else [folder / CODE_FOLDER for folder in (repository, *repository.parents)]
    for folder in candidates:
        if (folder / "modeling_internvl_chat.py").is_file():
            return folder
    where = env if env else f"{CODE_FOLDER} in {repository} or a folder above it"
    raise RemoteCodeMissing(f"InternVL2's remote code (modeling_internvl_chat.py, ...) is not in {where}; set "
                            f"{CODE_ENV} to a folder holding the files of an OpenGVLab/InternVL2 checkpoint")


def tiny_tokenizer(bos: bool):
    """A tinykit tokenizer with InternVL2's image tokens and the ChatML template tokens (and a
    Llama-3-style begin-of-text token when ``bos``)."""
    specials = CHATML_SPECIALS + [IMG_START, IMG_END, IMG_CONTEXT] + (["<|begin_of_text|>"] if bos else [])
    return make_tokenizer(specials, bos="<|begin_of_text|>" if bos else None, eos="<|im_end|>",
                          pad="<|endoftext|>", add_bos=bos)


def tiny_config(view: int, tokenizer) -> dict:
    """config.json of a tiny InternVL2 with a Llama decoder: tiles of ``view`` px, 8 x 8 patches."""
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": view, "min_dynamic_patch": 1,
        "max_dynamic_patch": 6, "ps_version": "v2", "select_layer": -1, "template": "Hermes-2",
        "use_thumbnail": True,
        "llm_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **TEXT, **ids},
        "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", **VISION,
                          "image_size": view, "patch_size": view // 8, "norm_type": "layer_norm",
                          "qk_normalization": False, "qkv_bias": True, "use_flash_attn": False},
    }


def build_tiny(seed: int, view: int, variant: str | None = None):
    """A tiny random InternVL2 from the checkpoints' own code (:func:`remote_code_folder`): a Llama
    decoder (the 40B's and 76B's), written to a folder and loaded back by :func:`load_remote`, as
    ``vlmnb.load(folder, trust_remote_code=True)`` loads a checkpoint; ``variant="qwen2"``: a Qwen2 decoder (the 1B's),
    made in memory -- the remote code at hand (the 2B's) has no config class for a Qwen2 decoder,
    which InternVL2-1B's own code adds, so that folder could not be read back."""
    import torch
    from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

    if variant not in (None, "qwen2"):
        raise ValueError(f"unknown internvl2 variant {variant!r}; variants: qwen2")
    code = remote_code_folder()
    tokenizer = tiny_tokenizer(bos=variant is None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "internvl2_tiny"  # one name: the code is imported once, whatever the folder
        folder.mkdir()
        for file in sorted(code.glob("*.py")):
            shutil.copyfile(file, folder / file.name)
        (folder / "config.json").write_text(json.dumps(tiny_config(view, tokenizer), indent=1))
        tokenizer.save_pretrained(folder)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model_class = completed_class(remote_class(config, folder), InternVL2Model)
        if variant == "qwen2":
            config.llm_config = Qwen2Config(**{**config.llm_config.to_dict(), "model_type": "qwen2",
                                               "architectures": ["Qwen2ForCausalLM"]})
            with seeded(seed):
                model = model_class(config, language_model=Qwen2ForCausalLM(config.llm_config))
            model, processor = ready(model, tokenizer)
        else:  # written and read back as vlmnb.load(folder, trust_remote_code=True) reads a checkpoint
            with seeded(seed), _no_progress_bars():
                model_class(config).save_pretrained(folder)
                model, processor = load_remote(folder, AutoConfig.from_pretrained(folder, trust_remote_code=True),
                                               dtype=torch.float32, local_files_only=True, trust_remote_code=True)
    return finish(model, processor.tokenizer, seed), processor


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' weight-writing and -loading bars off (a tiny model is built in a blink)."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def reference_sizes(config, processor):
    """InternVL2-Llama3-76B: 448 px tiles (1 to 6) plus a thumbnail, 14 px patches, 256 tokens per
    tile, pixel shuffle v2."""
    config = copy.deepcopy(config)
    config.force_image_size = 448
    config.vision_config.image_size, config.vision_config.patch_size = 448, 14
    config.min_dynamic_patch, config.max_dynamic_patch = 1, 6
    config.use_thumbnail, config.dynamic_image_size, config.ps_version = True, True, "v2"
    return config, processor_for(config, copy.deepcopy(processor.tokenizer), processor.chat)


FAMILY = Family(name="internvl2", model_types=("internvl_chat",), geometry=geometry, build_tiny=build_tiny,
                markers=markers, placeholder=placeholder, load_remote=load_remote, tiny_variants=("qwen2",),
                hub_ids=("OpenGVLab/InternVL2-Llama3-76B", "OpenGVLab/InternVL2-40B", "OpenGVLab/InternVL2-1B"),
                reference_sizes=reference_sizes)
