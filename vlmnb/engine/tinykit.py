"""Shared parts of the tiny random models (:mod:`vlmnb.engine.tiny`) that the family modules
build theirs from: small text / vision sizes, a byte-level BPE tokenizer trained on a built-in
corpus with the family's special tokens, seeding, and chat-template pieces.
"""
from __future__ import annotations

import contextlib
import functools

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

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
DEFAULT_VIEW = 32  # pixel side of one view the vision encoder sees


@functools.lru_cache(maxsize=None)
def trained_bpe(specials: tuple[str, ...], vocab_size: int = 400) -> str:
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


def make_tokenizer(specials: list[str], *, bos=None, eos=None, pad=None, add_bos=False, named=None,
               chat_template=None, padding_side="left"):
    """A transformers tokenizer over the trained BPE with ``specials`` as special tokens.

    ``named`` maps attribute names (``image_token``, ``boi_token``, ...) to special tokens, so
    processors that read ``tokenizer.image_token`` find them (saved in tokenizer_config.json).
    """
    from tokenizers import Tokenizer, processors
    from transformers import TokenizersBackend

    if "<unk>" not in specials:
        specials = ["<unk>"] + list(specials)
    tok = Tokenizer.from_str(trained_bpe(tuple(specials)))
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
def seeded(seed: int):
    """Run the block with torch's global generator seeded, restoring its state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def finish(model, tokenizer, seed):
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

PARTS = (
    "{%- macro parts(content, image) -%}"
    "{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}{{ image }}{%- endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)


def chatml(image: str, system: str | None = None) -> str:
    """A ChatML template (``<|im_start|>role ... <|im_end|>``) writing ``image`` for an image part."""
    head = ""
    if system is not None:
        head = ("{%- if messages[0]['role'] != 'system' -%}{{ '<|im_start|>system\\n" + system
                + "<|im_end|>\\n' }}{%- endif -%}")
    return PARTS + head + (
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + parts(m['content'], '"
        + image + "') + '<|im_end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def llama_config(tok, **extra):
    """A tiny Llama text config for tokenizer ``tok``."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **{**TEXT, **extra})


def qwen2_config(tok, **extra):
    """A tiny Qwen2 text config for tokenizer ``tok``."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **{**TEXT, **extra})


#: the special tokens of a ChatML tokenizer
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def at_reference_sizes(config, processor, image_size=None, patch=None):
    """``(config, tokenizer, chat_template)``: a copy of a tiny model's config, with the vision
    encoder's input ``image_size`` and ``patch`` size set when given, and copies of its
    processor's tokenizer and template -- the parts a family's ``reference_sizes`` starts from."""
    import copy

    config = copy.deepcopy(config)
    if image_size is not None:
        config.vision_config.image_size = image_size
    if patch is not None:
        config.vision_config.patch_size = patch
    return config, copy.deepcopy(processor.tokenizer), processor.chat_template
