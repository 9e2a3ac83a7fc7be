"""Load a Hugging Face vision-language model and run it with knockouts and attention recording.

The engine never edits transformers. It registers one attention function under the name
``"vlmnb"`` in transformers' ``AttentionInterface`` (and the standard SDPA mask builder under
the same name in ``AttentionMaskInterface``, without which the model would build no causal or
padding mask), and selects it for the text decoder only while a :meth:`VLM.intervene`
context is open. Inside, every decoder layer calls torch SDPA exactly as the stock ``"sdpa"``
implementation does; a layer with an active knockout first adds its blocked (query, key)
pairs to the model's own mask, and a recorded layer additionally recomputes the softmax of the
few query rows it records. Leaving the context restores the attention implementation of
every config and removes the registration, hooks and state it added, also on an exception.

Absolute positions: a decoder forward pass that has already cached ``seen`` tokens and gets
``q`` new ones has queries at positions ``seen .. seen + q - 1``; its keys are the last
``kv_len`` positions up to ``seen + q - 1`` (all of them, or a window for sliding-window
layers). Positions are those of the padded batch; spans are shifted by each row's left padding.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlmnb.core.errors import OneLineError
from vlmnb.engine.knockout import (SPAN_NAMES, Knockout, KnockoutPlan, RowLayout, as_knockout_list, check_spans,
                       resolve_layers, span_positions)
from vlmnb.engine.record import Record, Recorder, Recording

ATTENTION_NAME = "vlmnb"

# attention module -> (active Intervention, decoder layer index); filled only inside contexts
_ACTIVE: dict[Any, tuple["Intervention", int]] = {}
_MISSING = object()


class ModelNotAvailable(OneLineError, FileNotFoundError):
    """A model that is neither a local folder nor in the local Hugging Face cache, while offline."""


# ============================================================================ attention function
def _attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: plain SDPA unless an intervention covers ``module``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    entry = _ACTIVE.get(module)
    if entry is None:
        if hasattr(key, "materialize"):  # a shared-prefix cache outside an intervention
            key, value = key.materialize(), value.materialize()
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    intervention, layer = entry
    return intervention._attend(layer, module, query, key, value, attention_mask, **kwargs)


_REGISTERED: dict[str, int] = {}  # attention name -> open contexts relying on its registration


def register_attention(name: str, function) -> None:
    """Register ``function`` under ``name`` in transformers' ``AttentionInterface`` (and the
    standard SDPA mask builder under the same name, without which the model builds no causal
    or padding mask); counted, so nested contexts register once."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if _REGISTERED.get(name, 0) == 0:
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sdpa_mask)
    _REGISTERED[name] = _REGISTERED.get(name, 0) + 1


def unregister_attention(name: str) -> None:
    """Undo one :func:`register_attention`; the last one removes the entries again."""
    from transformers import AttentionInterface, AttentionMaskInterface

    _REGISTERED[name] -= 1
    if _REGISTERED[name] == 0:
        del _REGISTERED[name]
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def _register() -> None:
    register_attention(ATTENTION_NAME, _attention)


def _unregister() -> None:
    unregister_attention(ATTENTION_NAME)


def _attention_rows(module, query, key, mask, q_start: int, k_start: int, **kwargs):
    """Head-averaged softmax rows (B, rows, kv) in float32 for ``query`` (B, H, rows, d).

    ``mask`` is the mask given to SDPA, already sliced to these rows (bool: True = keep;
    float: additive), or None for plain causal attention.
    """
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    n_rep = query.shape[1] // key.shape[1]
    keys = repeat_kv(key, n_rep).float()
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
    scores = torch.matmul(query.float(), keys.transpose(-1, -2)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    rows, kv = query.shape[2], key.shape[2]
    if mask is None:
        if not (rows == 1 and q_start == k_start + kv - 1):  # (the newest query sees every key)
            q_pos = torch.arange(q_start, q_start + rows, device=query.device)
            k_pos = torch.arange(k_start, k_start + kv, device=query.device)
            scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], torch.finfo(torch.float32).min)
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    else:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1).mean(1)


# ============================================================================ interventions
class Intervention:
    """Context manager returned by :meth:`VLM.intervene`; see there.

    After a run, ``recordings`` holds one :class:`Recording` per batch row (or is empty).
    """

    def __init__(self, vlm: "VLM", knockout=None, record: Record | None = None, inp=None):
        self.vlm = vlm
        self.own_knockouts = as_knockout_list(knockout)
        if record is not None and not isinstance(record, Record):
            raise TypeError(f"record must be a vlmnb.Record, got {type(record).__name__}")
        self.own_record = record
        self.inp = inp
        self.knockouts: list[Knockout] = []
        self.record: Record | None = None
        self.recordings: list[Recording] = []
        self._outer: Intervention | None = None
        self._saved_impls: list[tuple[Any, Any]] = []
        self._saved_active: dict = {}
        self._hook = None
        self._entered = False
        self._registered = False
        # run state
        self.plan: KnockoutPlan | None = None
        self.recorder: Recorder | None = None
        self._rows: list[RowLayout] = []
        self._row_knockouts: list[list[Knockout]] = []
        self._length = 0
        self._record_rows: list[int] | None = None
        self._q_end: int | None = None
        self._mask_cache: dict = {}
        self._calls = 0

    @property
    def recording(self) -> Recording | None:
        """The first row's recording of the last run (batch 1), or None."""
        return self.recordings[0] if self.recordings else None

    # -------------------------------------------------------------- enter / exit
    def __enter__(self) -> "Intervention":
        if self._entered:
            raise RuntimeError("this intervention context is already open; create a new one with vlm.intervene()")
        vlm = self.vlm
        outer = vlm._active
        knockouts = (outer.knockouts if outer else []) + self.own_knockouts
        record = self.own_record or (outer.record if outer else None)
        # validate everything before touching the model
        for ko in knockouts:
            ko.layer_indices(vlm.num_layers)
        if record is not None:
            resolve_layers(record.layers, vlm.num_layers)
        attn_modules = vlm._attention_modules()
        if not vlm._decoder._can_set_attn_implementation():
            raise NotImplementedError(
                f"{type(vlm._decoder).__name__} does not dispatch attention through transformers' "
                "AttentionInterface (remote code?), so knockouts and recording cannot be applied to it")
        self.knockouts, self.record, self._outer = knockouts, record, outer

        # apply: registration, attention implementation of the text decoder, hook, dispatch table
        _register()
        self._registered = True
        try:
            self._saved_impls = [(cfg, cfg.__dict__.get("_attn_implementation_internal", _MISSING))
                                 for cfg in vlm._all_configs()]
            vlm._decoder.set_attn_implementation(ATTENTION_NAME)
            self._hook = vlm._decoder.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
            for layer, module in enumerate(attn_modules):
                self._saved_active[module] = _ACTIVE.get(module)
                _ACTIVE[module] = (self, layer)
            vlm._active = self
            self._entered = True
            if self.inp is not None:
                self.bind([self.inp], length=None)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        vlm = self.vlm
        for module, previous in self._saved_active.items():
            if previous is None:
                _ACTIVE.pop(module, None)
            else:
                _ACTIVE[module] = previous
        self._saved_active = {}
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for cfg, value in self._saved_impls:
            if value is _MISSING:
                cfg.__dict__.pop("_attn_implementation_internal", None)
            else:
                cfg.__dict__["_attn_implementation_internal"] = value
        self._saved_impls = []
        if self._registered:
            _unregister()
            self._registered = False
        self._entered = False
        if vlm._active is self:
            vlm._active = self._outer
        self.plan = None
        self._mask_cache = {}

    # -------------------------------------------------------------- binding a run
    def bind(self, prepared: Sequence[Any], length: int | None, pads: Sequence[int] | None = None,
             row_knockouts: Sequence[Sequence[Knockout]] | None = None,
             record_rows: Sequence[int] | None = None) -> None:
        """Resolve knockouts and the recorder for concrete inputs (batch rows).

        ``length`` is the padded total length the run may reach (prompt + generated); None
        means "grow when needed". ``record_rows`` limits recording to these batch rows (the
        others get no recording and cost nothing). Raises ValueError (before the model runs) on
        bad spans or a knockout that would leave a query with nothing to attend to.
        """
        import torch

        if not self._entered:
            raise RuntimeError("bind() needs an open intervention context")
        pads = list(pads) if pads is not None else [0] * len(prepared)
        rows = []
        for inp, pad in zip(prepared, pads):
            spans = inp.spans
            prompt_length = int(_input_ids(inp).shape[-1])
            check_spans(spans, prompt_length)
            rows.append(RowLayout(spans=spans, pad=int(pad), prompt_length=prompt_length))
        prompt_padded = rows[0].pad + rows[0].prompt_length
        if any(r.pad + r.prompt_length != prompt_padded for r in rows):
            raise ValueError("batch rows must be left-padded to one length")
        if row_knockouts is None:
            row_knockouts = [self.knockouts] * len(rows)
        else:
            row_knockouts = [(self.knockouts + as_knockout_list(k)) for k in row_knockouts]
        self._rows, self._row_knockouts = rows, row_knockouts
        self._prompt_padded = prompt_padded
        self._length = length if length is not None else prompt_padded + 256
        self._build_plan(check=True)
        self.recorder = None
        self._record_rows = None
        if self.record is not None:
            layers = resolve_layers(self.record.layers, self.vlm.num_layers)
            chosen = list(range(len(rows))) if record_rows is None else sorted(set(int(b) for b in record_rows))
            if not chosen or chosen[0] < 0 or chosen[-1] >= len(rows):
                raise ValueError(f"record_rows must name rows of the batch (0..{len(rows) - 1}), got {record_rows}")
            image = [span_positions(rows[b].spans, "image") + rows[b].pad for b in chosen]
            n_image = max(len(i) for i in image)
            if any(len(i) != n_image for i in image):
                raise ValueError("recording image rows needs the same number of image tokens in every batch row")
            if len(chosen) < len(rows):
                self._record_rows = chosen
            self.recorder = Recorder(self.record, layers, self._key_spans(self._length)[chosen],
                                     torch.as_tensor(np.stack(image)), first=prompt_padded - 1)
        self.recordings = []
        self._q_end = None
        self._calls = 0

    def _build_plan(self, check: bool) -> None:
        if any(self._row_knockouts):
            plan = KnockoutPlan(self._row_knockouts, self._rows, self.vlm.num_layers, self._length)
            if check:
                plan.check_no_empty_rows([r.pad for r in self._rows], self.vlm._layer_windows())
            self.plan = None if plan.empty else plan
        else:
            self.plan = None
        self._mask_cache = {}

    def _key_spans(self, length: int):
        import torch

        labels = np.full((len(self._rows), length), -1, dtype=np.int64)
        for b, row in enumerate(self._rows):
            for index, name in enumerate(SPAN_NAMES[:3]):
                labels[b, span_positions(row.spans, name) + row.pad] = index
            labels[b, row.pad + row.prompt_length:] = SPAN_NAMES.index("generated")
        return torch.from_numpy(labels)

    def _grow(self, needed: int) -> None:
        self._length = max(needed, 2 * self._length)
        self._build_plan(check=False)
        if self.recorder is not None:
            spans = self._key_spans(self._length)
            self.recorder.key_spans = spans if self._record_rows is None else spans[self._record_rows]
            self.recorder._device_cache = {}
            self.recorder._onehot_key = None

    def finish(self, n_steps_per_row: Sequence[int], meta: dict | None = None) -> list[Recording]:
        """Assemble the recordings of the bound run (one per row, trimmed to its steps)."""
        if self._calls == 0:
            raise RuntimeError("the model never called the vlmnb attention function, so the knockout/recording "
                               "was not applied; this model's text decoder bypasses AttentionInterface")
        if self.recorder is None:
            self.recordings = []
        else:
            chosen = self._record_rows if self._record_rows is not None else range(len(self._rows))
            positions = [span_positions(self._rows[b].spans, "image") for b in chosen]
            recorded = self.recorder.finish([list(n_steps_per_row)[b] for b in chosen], positions, meta)
            self.recordings = [None] * len(self._rows)
            for b, recording in zip(chosen, recorded):
                self.recordings[b] = recording
        return self.recordings

    # -------------------------------------------------------------- during the forward pass
    def _pre_forward(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        seen = 0
        if cache is not None:
            seen = int(cache.get_seq_length())
        self._q_end = seen + int(x.shape[1]) - 1 if x is not None else None
        self._mask_cache = {}

    def _attend(self, layer, module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self._calls += 1
        if (self.plan is not None or self.recorder is not None) and query.shape[0] != len(self._rows):
            raise RuntimeError(f"the model runs {query.shape[0]} sequences for {len(self._rows)} prepared "
                               "inputs; beam search and num_return_sequences > 1 are not supported with "
                               "knockout or recording")
        q_len, kv_len = query.shape[2], key.shape[2]
        q_end = self._q_end if self._q_end is not None else kv_len - 1
        q_start = q_end - q_len + 1
        # dynamic caches hold the last kv_len positions; a static cache holds 0..max_len-1
        k_start = max(q_end - kv_len + 1, 0)
        if (self.plan is not None or self.recorder is not None) and k_start + kv_len > self._length:
            self._grow(k_start + kv_len)
        mask = attention_mask
        plan = self.plan.layers[layer] if self.plan is not None else None
        if plan is not None and plan.touches(q_start, q_end + 1):
            mask = self._knockout_mask(plan, attention_mask, q_start, q_len, k_start, kv_len, module, query.device)
        recorder = self.recorder
        if hasattr(key, "materialize"):  # a shared, unexpanded prefix (vlmnb.engine.batched.SplitKV)
            from vlmnb.engine.batched import split_attention

            if mask is None and not getattr(module, "is_causal", True):
                mask = query.new_ones((1, 1, q_len, kv_len), dtype=bool)
            recording = recorder is not None and recorder.wants(layer)
            out, weights = split_attention(module, query, key, value, mask, q_start, return_weights=recording,
                                           **kwargs)
            if recording:
                r_start, r_stop = recorder.rows_of(q_start, q_end + 1)
                if r_start < r_stop:
                    weights = weights[:, r_start - q_start:r_stop - q_start]
                    if self._record_rows is not None:
                        weights = weights[self._record_rows]
                    recorder.observe(layer, weights, k_start, r_start - recorder.first)
            return out, None
        out, _ = sdpa_attention_forward(module, query, key, value, mask, **kwargs)
        if recorder is not None and recorder.wants(layer):
            r_start, r_stop = recorder.rows_of(q_start, q_end + 1)
            if r_start < r_stop:
                rows = slice(r_start - q_start, r_stop - q_start)
                row_mask = None if mask is None else mask[:, :, rows] if mask.shape[2] > 1 else mask
                if row_mask is None and not getattr(module, "is_causal", True):
                    row_mask = query.new_ones((1, 1, r_stop - r_start, kv_len), dtype=bool)
                q_rows, k_rows = query[:, :, rows], key
                if self._record_rows is not None:  # only some batch rows are recorded
                    index = self._record_rows
                    q_rows = q_rows[index]
                    k_rows = key[index] if key.shape[0] > 1 else key
                    if row_mask is not None and row_mask.shape[0] > 1:
                        row_mask = row_mask[index]
                weights = _attention_rows(module, q_rows, k_rows, row_mask, r_start, k_start, **kwargs)
                recorder.observe(layer, weights, k_start, r_start - recorder.first)
        return out, None

    def _knockout_mask(self, plan, base, q_start, q_len, k_start, kv_len, module, device):
        import torch

        # layers sharing a LayerPlan (and base mask, and device) share the combined mask of a step
        cache_key = (id(plan), id(base) if base is not None else None, q_start, q_len, k_start, kv_len,
                     str(device), getattr(module, "is_causal", True))
        cached = self._mask_cache.get(cache_key)
        if cached is not None:
            return cached
        if base is not None and base.device != device:
            base = base.to(device)
        blocked = plan.blocked(slice(q_start, q_start + q_len), slice(k_start, k_start + kv_len), device)
        if base is None:
            if q_len > 1 and getattr(module, "is_causal", True):
                q_pos = torch.arange(q_start, q_start + q_len, device=blocked.device)
                k_pos = torch.arange(k_start, k_start + kv_len, device=blocked.device)
                mask = (k_pos[None, :] <= q_pos[:, None])[None, None] & ~blocked
            else:
                mask = ~blocked
        elif base.dtype == torch.bool:
            mask = base & ~blocked
        else:  # an additive float mask: Eq. 3's -inf is the dtype's minimum
            mask = base.masked_fill(blocked, torch.finfo(base.dtype).min)
        self._mask_cache[cache_key] = mask
        return mask


def _input_ids(inp):
    inputs = inp.inputs if hasattr(inp, "inputs") else inp
    return inputs["input_ids"]


# ============================================================================ results
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


def _token_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
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


# ============================================================================ the model wrapper
class VLM:
    """A loaded vision-language model with its processor (see :func:`load`).

    Attributes:
        model, processor: the transformers objects.
        name: what it was loaded from. family: e.g. "llava", "qwen2_vl".
        num_layers: text decoder layers. device: where inputs go. image_token_id: the id of
        the image placeholder token in ``input_ids``.
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
        self.family = family or _detect_family(model.config)
        self._decoder = _find_decoder(model)
        self.text_config = self._decoder.config
        self.num_layers = len(self._attention_modules())
        cfg = model.config
        self.image_token_id = getattr(cfg, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(cfg, "image_token_index", None)
        self._active: Intervention | None = None

    def __repr__(self) -> str:
        return (f"VLM({self.name!r}, family={self.family!r}, layers={self.num_layers}, "
                f"device={self.device})")

    @property
    def device(self):
        return self.model.get_input_embeddings().weight.device

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    # -------------------------------------------------------------- internals
    def _attention_modules(self) -> list:
        layers = getattr(self._decoder, "layers", None)
        if layers is None:
            raise NotImplementedError(f"{type(self._decoder).__name__} has no `.layers`; this model's "
                                      "text decoder is not supported by the engine")
        modules = []
        for layer in layers:
            attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None)
            if attn is None:
                raise NotImplementedError(f"decoder layer {type(layer).__name__} has no self_attn module")
            modules.append(attn)
        return modules

    def _all_configs(self) -> list:
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

    def _layer_windows(self) -> list[int | None]:
        cfg = self.text_config
        types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if not types or not window:
            return [None] * self.num_layers
        return [window if t == "sliding_attention" else None for t in types[: self.num_layers]]

    def _to_device(self, inputs: dict) -> dict:
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

    def compress(self, image, **kwargs):
        """Describe ``image`` once and keep a compressed context to ask more questions
        (see :func:`vlmnb.engine.compress.compress`)."""
        from vlmnb.engine.compress import compress

        return compress(self, image, **kwargs)

    def prepare(self, image, prompt: str = "describe the image"):
        """Model inputs for one image and prompt, with token spans and image-token geometry."""
        from vlmnb.engine import spans

        return spans.prepare(self.model, self.processor, _load_image(image), prompt, self.family)

    @contextmanager
    def _run(self, knockout, record, force: bool = False) -> Iterator[Intervention | None]:
        if knockout is None and record is None and self._active is None and not force:
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

        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if row_knockouts is not None and len(row_knockouts) != len(inps):
            raise ValueError(f"row_knockouts has {len(row_knockouts)} entries for {len(inps)} inputs")
        inputs, pads = _collate(inps, self._pad_id())
        inputs = self._to_device(inputs)
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
            active = [list(iv._row_knockouts[b]) if iv is not None else [] for b in range(len(inps))]
        out = []
        for b, (inp, ids) in enumerate(zip(inps, ids_per_row)):
            text, offsets = _token_offsets(self.tokenizer, ids)
            n_prompt = int(_input_ids(inp).shape[-1])
            out.append(Generation(
                text=text, token_ids=ids, tokens=[text[s:e] for s, e in offsets], offsets=offsets,
                spans=_with_generated(inp.spans, np.arange(n_prompt, n_prompt + len(ids))),
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

        inputs = self._to_device(dict(inp.inputs))
        prompt = int(inputs["input_ids"].shape[1])
        cont = [] if continuation_ids is None else [int(t) for t in continuation_ids]
        if cont:
            inputs = _append_tokens(inputs, torch.tensor([cont], device=self.device))
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


# ============================================================================ helpers
_SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}


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


def _append_tokens(inputs: dict, tokens) -> dict:
    import torch

    out = dict(inputs)
    n = tokens.shape[1]
    out["input_ids"] = torch.cat([inputs["input_ids"], tokens], dim=1)
    for key, fill in (("attention_mask", 1), ("token_type_ids", 0), ("mm_token_type_ids", 0)):
        if key in inputs and inputs[key] is not None:
            v = inputs[key]
            out[key] = torch.cat([v, torch.full((v.shape[0], n), fill, dtype=v.dtype, device=v.device)], dim=1)
    return out


def _with_generated(spans, generated: np.ndarray):
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


def _detect_family(config) -> str:
    try:
        from vlmnb.engine.spans import detect_family
    except ImportError:
        return getattr(config, "model_type", "unknown")
    return detect_family(config)


def _load_image(image):
    """A PIL RGB image from a PIL image, a file path, or an array (H, W[, C])."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read {path} as an image ({exc.__class__.__name__}); "
                             "pass a PNG/JPEG file, a PIL image or an array") from None
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # channels-first
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"cannot use an array of shape {arr.shape} as an image; expected (H, W) or (H, W, 3)")
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255)
        arr = arr.astype(np.uint8)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return Image.fromarray(arr).convert("RGB")
    raise TypeError(f"cannot use {type(image).__name__} as an image; pass a PIL image, a path or an array")


# ============================================================================ loading
def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    hostname, _, port = host.partition(":")
    try:
        with socket.create_connection((hostname, int(port or 443)), timeout=3):
            return False
    except OSError:
        return True


def _model_class(config, trust_remote_code: bool):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        AutoModelForImageTextToText._model_mapping[type(config)]
        return AutoModelForImageTextToText
    except KeyError:
        pass
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        return AutoModelForCausalLM
    if trust_remote_code and "AutoModel" in auto_map:
        return AutoModel
    if auto_map and not trust_remote_code:
        raise ValueError(f"{config.model_type!r} needs the checkpoint's own code; load it with "
                         "vlmnb.load(..., trust_remote_code=True) if you trust that repository")
    raise ValueError(f"model type {config.model_type!r} is not an image-text-to-text model transformers knows")


def load(name_or_path: str | os.PathLike, *, dtype=None, device_map=None, trust_remote_code: bool = False,
         **kwargs) -> VLM:
    """Load a vision-language model and its processor as a :class:`VLM`.

    Args:
        name_or_path: ``"toy"`` / ``"toy-yesno"`` (the embedded models), a local
            ``save_pretrained`` folder, or a Hugging Face hub id. Hub ids are read from the
            local cache first; when the hub is unreachable (or ``HF_HUB_OFFLINE=1``) only the
            cache is used and a missing model raises :class:`ModelNotAvailable`.
        dtype: torch dtype; default float32 on CPU and the checkpoint's own dtype on GPU.
        device_map: passed to accelerate (e.g. ``"auto"`` with ``max_memory=...`` to shard a
            large model over GPUs); default ``"auto"`` when CUDA is available, else CPU.
        trust_remote_code: run the checkpoint's own modelling code (off unless you ask).
        **kwargs: passed to ``from_pretrained`` of the model (e.g. ``max_memory``, ``revision``).
    """
    import torch
    from transformers import AutoConfig, AutoProcessor

    name = str(name_or_path)
    if name in ("toy", "toy-yesno"):
        from vlmnb import toy

        source = str(toy.checkpoint_path(name))
        local = True
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model folder (no config.json); "
                                    "pass a folder written by save_pretrained or a hub id")
        source, local = str(path), True
    else:
        source, local = name, False

    local_only = local
    if not local:
        try:
            AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
            local_only = True
        except (OSError, ValueError):
            if _offline():
                raise ModelNotAvailable(
                    f"{name!r} is not in the local cache and the hub is unreachable; download it first "
                    f"with `huggingface-cli download {name}` on a machine with network access") from None
            local_only = False

    config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    try:
        family = _detect_family(config)
    except ValueError as exc:
        raise ValueError(f"{name!r}: {exc}. Remote-code checkpoints (e.g. OpenGVLab/InternVL2-*) bypass "
                         "transformers' attention interface; use their transformers-native '-hf' "
                         "conversion instead") from None
    cuda = torch.cuda.is_available()
    if device_map is None and cuda:
        device_map = "auto"
    if dtype is None:
        dtype = "auto" if (cuda or device_map is not None) else torch.float32
    model_cls = _model_class(config, trust_remote_code)
    common = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
    try:
        model = model_cls.from_pretrained(source, dtype=dtype, device_map=device_map, **common, **kwargs)
        processor = AutoProcessor.from_pretrained(source, **common)
    except OSError as exc:
        if local_only and not local and _offline():
            raise ModelNotAvailable(f"{name!r} is only partly in the local cache and the hub is unreachable "
                                    f"({exc}); download it completely first") from None
        raise
    return VLM(model, processor, name=name, family=family, revision=weights_revision(source, config))


def weights_revision(source: str, config=None) -> str:
    """A short identifier of the weights behind ``source``: the hub commit when transformers
    recorded one, else a digest of the folder's weight files (their bytes when small, their
    names, sizes and first and last MiB when large)."""
    import hashlib

    commit = getattr(config, "_commit_hash", None) if config is not None else None
    if commit:
        return str(commit)[:12]
    digest = hashlib.sha256()
    folder = Path(source)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
    if not files:
        return "unknown"
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if size <= 256 * 2 ** 20:
                for chunk in iter(lambda: fh.read(2 ** 20), b""):
                    digest.update(chunk)
            else:
                digest.update(fh.read(2 ** 20))
                fh.seek(size - 2 ** 20)
                digest.update(fh.read(2 ** 20))
    return digest.hexdigest()[:12]
