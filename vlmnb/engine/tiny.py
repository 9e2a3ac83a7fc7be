"""Tiny randomly initialised models of every supported family, with offline processors.

``build(family)`` returns ``(model, processor)``: the family's real model class built from a
small config (two decoder layers, hidden size 64, a vision encoder of one or two layers that
sees 32x32 views), and the family's real processor class made without any download: a
byte-level BPE tokenizer trained on a built-in corpus with the special tokens the family's
processor needs, the family's image processor class with small sizes, and a chat template that
writes the family's prompt format. ``save(family, path)`` writes a folder that
``AutoProcessor`` / ``AutoModelForImageTextToText`` load offline -- the chapter notebooks accept
such a folder as their ``model`` parameter. Everything is deterministic in ``seed``.

These models produce random text; they exist to exercise the code paths (spans, geometry,
knockout, recording) of each family on a CPU in seconds.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

FAMILIES = (
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl",
    "internvl", "idefics3", "smolvlm", "gemma3",
)

# words the tokenizer learns merges from; generated text of random models is random anyway
_CORPUS = """
describe the image in detail . what is in this picture ? the image shows a scene with objects .
there is a red circle , a blue square and a green triangle on a white background .
a yellow star is in the top left corner and a purple heart in the bottom right corner .
the photo shows a man riding a horse next to a dog on the grass under a cloudy sky .
a woman holds an umbrella while a car and a bus drive along the street near a building .
on the table there is a cup , a plate with food , a bottle and a bowl of fruit .
two cats sit on a sofa ; a small bird stands on the window and a tree grows outside .
left right top bottom center middle above below behind front small large big tiny
"""

_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_DEFAULT_VIEW = 32  # pixel side of one view the vision encoder sees


@functools.lru_cache(maxsize=None)
def _trained_bpe(specials: tuple[str, ...], vocab_size: int = 400) -> str:
    """JSON of a BPE ``tokenizers.Tokenizer`` trained on the built-in corpus.

    Metaspace pre-tokenisation over an alphabet of printable ASCII plus newline (other
    characters become ``<unk>``), so every generated token decodes to valid text.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c")) + ["\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(specials), special_tokens=list(specials), show_progress=False,
        initial_alphabet=alphabet, limit_alphabet=len(alphabet),
    )
    lines = [line.strip() for line in _CORPUS.strip().splitlines()]
    tok.train_from_iterator(lines * 4, trainer)
    return tok.to_str()


def _tokenizer(specials: list[str], *, bos=None, eos=None, pad=None, add_bos=False, named=None,
               chat_template=None, padding_side="left"):
    """A transformers tokenizer over the trained BPE with ``specials`` as special tokens.

    ``named`` maps attribute names (``image_token``, ``boi_token``, ...) to special tokens, so
    processors that read ``tokenizer.image_token`` find them (saved in tokenizer_config.json).
    """
    from tokenizers import Tokenizer, processors
    from transformers import TokenizersBackend

    if "<unk>" not in specials:
        specials = ["<unk>"] + list(specials)
    tok = Tokenizer.from_str(_trained_bpe(tuple(specials)))
    if add_bos and bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    kwargs = dict(bos_token=bos, eos_token=eos, pad_token=pad, padding_side=padding_side)
    if named:
        kwargs["extra_special_tokens"] = dict(named)
    hf = TokenizersBackend(tokenizer_object=tok, **{k: v for k, v in kwargs.items() if v is not None})
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _finish(model, tokenizer, seed):
    """Eval mode, generation ids from the tokenizer, greedy defaults."""
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.do_sample = False
    model.eval()
    return model


# ----------------------------------------------------------------------------- chat templates
# Each writes one family's prompt format; ``message['content']`` is a list of
# {"type": "image"} / {"type": "text", "text": ...} parts (a plain string is accepted too).

_PARTS = (
    "{%- macro parts(content, image) -%}"
    "{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}{{ image }}{%- endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)

_TEMPLATE_LLAVA = _PARTS + (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ parts(m['content'], '') + ' ' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'USER: ' + parts(m['content'], '<image>\\n') + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + parts(m['content'], '') + '</s>' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

_TEMPLATE_LLAVA_NEXT = _PARTS + (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ '[INST] ' + parts(m['content'], '<image>\\n') + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + parts(m['content'], '') + '</s>' }}{%- endif -%}"
    "{%- endfor -%}"
)


def _chatml(image: str, system: str | None = None) -> str:
    head = ""
    if system is not None:
        head = ("{%- if messages[0]['role'] != 'system' -%}{{ '<|im_start|>system\\n" + system
                + "<|im_end|>\\n' }}{%- endif -%}")
    return _PARTS + head + (
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + parts(m['content'], '"
        + image + "') + '<|im_end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


_TEMPLATE_ONEVISION = _chatml("<image>\\n")
_TEMPLATE_QWEN = _chatml("<|vision_start|><|image_pad|><|vision_end|>", system="You are a helpful assistant.")
_TEMPLATE_INTERNVL = _chatml("<IMG_CONTEXT>\\n")

_TEMPLATE_IDEFICS3 = _PARTS + (
    "{{ '<|begin_of_text|>' }}{%- for m in messages -%}"
    "{{ (m['role'] | capitalize) + ':' + parts(m['content'], '<image>') + '<end_of_utterance>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

_TEMPLATE_SMOLVLM = _PARTS + (
    "{{ '<|im_start|>' }}{%- for m in messages -%}"
    "{{ (m['role'] | capitalize) + ':' + parts(m['content'], '<image>') + '<end_of_utterance>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

_TEMPLATE_GEMMA3 = _PARTS + (
    "{{ '<bos>' }}{%- for m in messages -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n'"
    " + parts(m['content'], '<start_of_image>') + '<end_of_turn>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


# ----------------------------------------------------------------------------- families


def _build_llava(seed: int, view: int):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                     add_bos=True, named={"image_token": "<image>"}, chat_template=_TEMPLATE_LLAVA)
    patch = view // 4
    image_processor = CLIPImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_TEMPLATE_LLAVA)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **_VISION),
        text_config=LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, **_TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(view // patch) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config)
    return _finish(model, tok, seed), processor


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def _build_qwen(seed: int, view: int, v25: bool):
    from transformers import Qwen2VLImageProcessor

    if v25:
        from transformers import (Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model,
                                  Qwen2_5_VLProcessor as Processor)
    else:
        from transformers import (Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model,
                                  Qwen2VLProcessor as Processor)
    from transformers import Qwen2VLVideoProcessor

    tok = _tokenizer(_QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=_TEMPLATE_QWEN)
    patch, merge = 4, 2
    factor = patch * merge
    # a view x view picture keeps its resolution; at most 4 views' worth of pixels
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": factor * factor, "longest_edge": 4 * view * view},
        patch_size=patch, merge_size=merge, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": factor * factor, "longest_edge": 4 * view * view},
        patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = Processor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                          chat_template=_TEMPLATE_QWEN)
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    section = [head_dim // 8, (head_dim // 2 - head_dim // 8) // 2]
    section.append(head_dim // 2 - sum(section))
    vision = dict(depth=2, embed_dim=32, num_heads=2, patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=2, hidden_size=_TEXT["hidden_size"])
    if v25:
        vision.update(intermediate_size=64, out_hidden_size=_TEXT["hidden_size"], hidden_size=32,
                      window_size=2 * factor, fullatt_block_indexes=[1])
    else:
        vision.update(mlp_ratio=2)
    config = Config(
        text_config=dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, rope_parameters={"rope_type": "default", "mrope_section": section,
                                                             "rope_theta": 10000.0}, **_TEXT),
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    with _seeded(seed):
        model = Model(config)
    return _finish(model, tok, seed), processor


def _llama(tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **{**_TEXT, **extra})


def _qwen2(tok, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **{**_TEXT, **extra})


def _build_llava_next(seed: int, view: int):
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    tok = _tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                     add_bos=True, named={"image_token": "<image>"}, chat_template=_TEMPLATE_LLAVA_NEXT)
    patch = view // 4
    pinpoints = [[view, 2 * view], [2 * view, view], [2 * view, 2 * view], [view, 3 * view], [3 * view, view]]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": view}, crop_size={"height": view, "width": view},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=_TEMPLATE_LLAVA_NEXT)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=view, patch_size=patch, **_VISION), text_config=_llama(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        image_seq_length=(view // patch) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    with _seeded(seed):
        model = LlavaNextForConditionalGeneration(config)
    return _finish(model, tok, seed), processor


_CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _build_llava_onevision(seed: int, view: int):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor, SiglipVisionConfig)

    tok = _tokenizer(_CHATML + ["<image>", "<video>"], eos="<|im_end|>", pad="<|endoftext|>",
                     named={"image_token": "<image>", "video_token": "<video>"}, chat_template=_TEMPLATE_ONEVISION)
    patch = view // 4
    pinpoints = [[view * i, view * j] for i in range(1, 4) for j in range(1, 4)]
    # at most 4 tiles' worth of tokens: a 3x3 tiling is pooled down (exercises the bilinear pooling)
    aspect = "anyres_max_4"
    image_processor = LlavaOnevisionImageProcessor(size={"height": view, "width": view}, image_grid_pinpoints=pinpoints)
    video_processor = LlavaOnevisionVideoProcessor(size={"height": view, "width": view})
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                        num_image_tokens=(view // patch) ** 2, vision_feature_select_strategy="full",
                                        vision_aspect_ratio=aspect, chat_template=_TEMPLATE_ONEVISION)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, **_VISION), text_config=_qwen2(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, vision_aspect_ratio=aspect, vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    with _seeded(seed):
        model = LlavaOnevisionForConditionalGeneration(config)
    return _finish(model, tok, seed), processor


def _build_internvl(seed: int, view: int):
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig)

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = _tokenizer(_CHATML + list(named.values()), eos="<|im_end|>", pad="<|endoftext|>", named=named,
                     chat_template=_TEMPLATE_INTERNVL)
    patch = view // 8
    seq = (view // patch // 2) ** 2
    image_processor = GotOcr2ImageProcessor(size={"height": view, "width": view}, crop_to_patches=True,
                                            min_patches=1, max_patches=6)
    video_processor = InternVLVideoProcessor(size={"height": view, "width": view})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                  image_seq_length=seq, chat_template=_TEMPLATE_INTERNVL)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(image_size=[view, view], patch_size=[patch, patch], **_VISION),
        text_config=_qwen2(tok), image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=seq,
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    with _seeded(seed):
        model = InternVLForConditionalGeneration(config)
    return _finish(model, tok, seed), processor


def _build_idefics3(seed: int, view: int, smol: bool):
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
    template = _TEMPLATE_SMOLVLM if smol else _TEMPLATE_IDEFICS3
    tok = _tokenizer(specials + row_col, bos=bos, eos="<end_of_utterance>", pad="<|endoftext|>",
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
        vision_config=VisionConfig(image_size=view, patch_size=patch, **_VISION), text_config=_llama(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
    )
    with _seeded(seed):
        model = Model(config)
    return _finish(model, tok, seed), processor


def _build_gemma3(seed: int, view: int):
    import torch
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"] + list(named.values()),
                     bos="<bos>", eos="<eos>", pad="<pad>", named=named, chat_template=_TEMPLATE_GEMMA3)
    patch = view // 8
    tokens_per_image = 16
    image_processor = Gemma3ImageProcessor(size={"height": view, "width": view}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=_TEMPLATE_GEMMA3,
                                image_seq_length=tokens_per_image)
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    text = Gemma3TextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                            sliding_window=512, layer_types=["sliding_attention", "full_attention"], **_TEXT)
    config = Gemma3Config(
        text_config=text, vision_config=SiglipVisionConfig(image_size=view, patch_size=patch, **_VISION),
        mm_tokens_per_image=tokens_per_image, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    with _seeded(seed):
        model = Gemma3ForConditionalGeneration(config)
        # transformers initialises this projection to zeros, which would make the image invisible
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            weight.normal_(0.0, weight.shape[0] ** -0.5)
    return _finish(model, tok, seed), processor


_BUILDERS = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "llava_onevision": _build_llava_onevision,
    "qwen2_vl": lambda seed, view: _build_qwen(seed, view, v25=False),
    "qwen2_5_vl": lambda seed, view: _build_qwen(seed, view, v25=True),
    "internvl": _build_internvl,
    "idefics3": lambda seed, view: _build_idefics3(seed, view, smol=False),
    "smolvlm": lambda seed, view: _build_idefics3(seed, view, smol=True),
    "gemma3": _build_gemma3,
}


def build(family: str, seed: int = 0, image_size: int | None = None):
    """A tiny random ``(model, processor)`` of ``family`` (one of :data:`FAMILIES`).

    ``image_size`` is the pixel side of one view the vision encoder sees (a crop, tile or
    square; default 32, a multiple of 16). The model is in eval mode with greedy generation
    defaults; weights depend only on ``seed``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; tiny models exist for: {', '.join(FAMILIES)}")
    view = int(image_size or _DEFAULT_VIEW)
    if view % 16 or view <= 0:
        raise ValueError(f"image_size must be a positive multiple of 16, got {image_size}")
    return _BUILDERS[family](seed, view)


def save(family: str, path, seed: int = 0, image_size: int | None = None) -> Path:
    """Write a tiny ``family`` model and its processor to folder ``path`` (save_pretrained
    layout; loadable offline with ``AutoProcessor`` / ``AutoModelForImageTextToText``)."""
    path = Path(path)
    model, processor = build(family, seed=seed, image_size=image_size)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
