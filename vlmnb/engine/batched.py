"""Generate many knockout configurations of one image as one batch on a shared image prefix.

A knockout whose destination queries all come after the image (``dst`` = ``"query"``,
``"generated"`` or both; any ``src``) never changes what the system and image tokens compute:
their queries are not blocked, and causal attention keeps later tokens out of them. Their
keys and values are therefore the same in every such configuration. This module computes them
once per image (a batch of one, with the vision tower) and lets ``model.generate`` continue
from it for as many rows as there are configurations: the query tokens run for every row under
that row's own knockouts (the first generated token is predicted at the last query position,
as always), then all rows decode together, one weight read per step for the whole batch. The
rows share the prefix's keys and values without copying them (:func:`shared_cache`): each
step's attention reads them once for all rows (:func:`split_attention`). A row that ends
(end-of-sequence) is padded by ``generate`` and trimmed.

Greedy outputs are the token ids each configuration gives when run alone with
:meth:`~vlmnb.engine.vlm.VLM.generate`; the tests check this for every configuration of a sweep.
(Floating-point sums are ordered differently in a batch, so a near-tie between two tokens can in
principle break the other way, as in any batched generation; none has been seen in float32.)

Families whose prompt cannot continue from a cached prefix are batched without sharing: each
row then runs the whole prompt (still one decode for all rows). So is any row whose knockout
blocks a system or image query.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vlmnb.engine.knockout import Knockout, RowLayout, _resolve, as_knockout_list, span_positions

#: families checked to give the same token ids from a shared prefix (tests/test_batched.py)
PREFIX_FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "internvl",
                   "idefics3", "smolvlm", "gemma3")

# inputs that only the first forward pass over the image needs (the vision tower's inputs)
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


@dataclass
class Prefix:
    """Keys and values of a prompt's first ``length`` tokens (system + image), batch of one.

    ``text_inputs``: the prepared input without its vision inputs (what the rows feed on top
    of the cache); ``rope_deltas``: the model's 3-D position offset after the prefix
    (Qwen2-VL-style models), restored before every batch that continues from it.
    ``prompt_cache``: the same extended by the query tokens but the last, without knockout
    (made on first use): the shared start of every row whose knockout acts on generated
    tokens only.
    """

    cache: Any
    length: int
    inp: Any
    text_inputs: Any
    rope_deltas: Any = None
    prompt_cache: Any = None

    def expand(self, rows: int, cache=None):
        """A fresh copy of ``cache`` (default: the image prefix) with ``rows`` identical batch rows."""
        cache = copy.deepcopy(self.cache if cache is None else cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache


def prefix_length(inp) -> int:
    """Tokens before the query span: the part every configuration shares."""
    query = span_positions(inp.spans, "query")
    return int(query.min()) if query.size else int(inp.spans.prompt_length) - 1


def first_blocked_query(knockouts, inp, n_layers: int, length: int | None = None) -> int:
    """The earliest position whose query any of ``knockouts`` blocks (in some layer).

    Everything before it computes exactly as without the knockouts. Returns the prompt length
    when only generated tokens are blocked (or nothing is).
    """
    prompt = int(inp.spans.prompt_length)
    row = RowLayout(spans=inp.spans, pad=0, prompt_length=prompt)
    first = prompt
    for ko in as_knockout_list(knockouts):
        if not ko.layer_indices(n_layers):
            continue
        dst = np.flatnonzero(_resolve(ko.dst, row, max(length or 0, prompt + 1), "dst"))
        if dst.size:
            first = min(first, int(dst[0]))
    return first


def blocks_prefix(knockouts, inp, n_layers: int, length: int | None = None) -> bool:
    """Whether any of ``knockouts`` blocks a query before the query span (system or image)."""
    return first_blocked_query(knockouts, inp, n_layers, length) < prefix_length(inp)


def supports_prefix(vlm) -> bool:
    """Whether ``vlm``'s family is known to continue exactly from a cached image prefix."""
    return vlm.family in PREFIX_FAMILIES and vlm._active is None


def _cache_kwarg(model) -> str:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _inner(vlm):
    return getattr(vlm.model, "model", vlm.model)


def _forward_kwargs(vlm, cache) -> dict:
    kwargs = {_cache_kwarg(vlm.model): cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(vlm.model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def compute_prefix(vlm, inp) -> Prefix:
    """Run the system and image tokens of ``inp`` once (no knockout) and keep their cache."""
    import torch
    from transformers import DynamicCache

    n = prefix_length(inp)
    if n < 1:
        raise ValueError("the prompt has no tokens before its query span, so there is no prefix to share")
    inputs = vlm._to_device(dict(inp.inputs))
    head = {k: (v[:, :n] if k in _SEQUENCE_KEYS and v is not None else v) for k, v in inputs.items()}
    # the cache generate() itself would build for this model (sliding-window layers included)
    cache = DynamicCache(config=vlm.model.config.get_text_config(decoder=True))
    inner = _inner(vlm)
    if hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None  # computed afresh from this prompt's image grid
    with torch.no_grad():
        vlm.model(**head, **_forward_kwargs(vlm, cache))
    if cache.get_seq_length() != n:
        raise NotImplementedError(f"{vlm.family}: the cache after the prefix holds {cache.get_seq_length()} "
                                  f"positions, expected {n}")
    text_inputs = dataclasses.replace(inp, inputs={k: v for k, v in inp.inputs.items() if k in _SEQUENCE_KEYS})
    return Prefix(cache=cache, length=n, inp=inp, text_inputs=text_inputs,
                  rope_deltas=getattr(inner, "rope_deltas", None))


def _extend(vlm, prefix: Prefix, cache, rows: int, row_knockouts=None, max_new_tokens: int = 1) -> None:
    """Feed the query tokens but the last into ``cache`` (``rows`` rows), under per-row knockouts."""
    import torch

    ids = vlm._to_device({"input_ids": prefix.text_inputs.inputs["input_ids"]})["input_ids"]
    chunk = ids[:, prefix.length:-1].expand(rows, -1)
    if chunk.shape[1] == 0:
        return
    _restore_rope(vlm, prefix)
    kwargs = _forward_kwargs(vlm, cache)
    with torch.no_grad():
        if not row_knockouts or not any(row_knockouts):
            vlm.model(input_ids=chunk, **kwargs)
            return
        prompt = int(ids.shape[1])
        with vlm.intervene() as iv:
            iv.bind([prefix.text_inputs] * rows, length=prompt + max_new_tokens, row_knockouts=row_knockouts)
            vlm.model(input_ids=chunk, **kwargs)


def _restore_rope(vlm, prefix: Prefix) -> None:
    if prefix.rope_deltas is not None:
        _inner(vlm).rope_deltas = prefix.rope_deltas


# ---------------------------------------------------------------- a prefix shared without copies
class SplitKV:
    """Keys (or values) of a batch whose first positions are one shared, unexpanded prefix.

    ``prefix``: (1, heads, P, d), the same for every row; ``suffix``: (rows, heads, S, d), each
    row's own positions after it. The cache hands these to the attention function instead of
    one (rows, heads, P + S, d) tensor, so a decoding step reads the prefix once for all rows,
    not once per row (with 576+ image tokens and 30 rows, most of the memory traffic of a step).
    Only vlmnb's attention function (active inside :meth:`~vlmnb.engine.vlm.VLM.intervene`) reads
    it; :meth:`materialize` gives the plain tensor.
    """

    def __init__(self, prefix, suffix):
        self.prefix, self.suffix = prefix, suffix

    @property
    def shape(self):
        import torch

        rows, heads, s, d = self.suffix.shape
        return torch.Size((rows, heads, self.prefix.shape[2] + s, d))

    @property
    def device(self):
        return self.suffix.device

    @property
    def dtype(self):
        return self.suffix.dtype

    def materialize(self):
        import torch

        rows = self.suffix.shape[0]
        return torch.cat([self.prefix.expand(rows, -1, -1, -1), self.suffix], dim=2)


_SHARED_LAYER = None


def _shared_layer_class():
    """A ``DynamicLayer`` holding one batch-1 prefix and per-row suffix buffers (see :class:`SplitKV`)."""
    global _SHARED_LAYER
    if _SHARED_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class SharedPrefixLayer(DynamicLayer):
            def setup(self, prefix_keys, prefix_values, rows: int, capacity: int) -> None:
                self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
                shape = (rows, prefix_keys.shape[1], max(capacity, 1), prefix_keys.shape[3])
                self._kbuf = prefix_keys.new_empty(shape)
                self._vbuf = prefix_values.new_empty(shape)
                self.n = 0
                self.device = prefix_keys.device
                self.is_initialized = True
                self._views()

            def _views(self) -> None:
                self.keys, self.values = self._kbuf[:, :, :self.n], self._vbuf[:, :, :self.n]

            def update(self, key_states, value_states, *args, **kwargs):
                m = key_states.shape[-2]
                if self.n + m > self._kbuf.shape[2]:
                    grow = max(2 * (self.n + m), 16)
                    for name in ("_kbuf", "_vbuf"):
                        old = getattr(self, name)
                        new = old.new_empty(*old.shape[:2], grow, old.shape[3])
                        new[:, :, :self.n] = old[:, :, :self.n]
                        setattr(self, name, new)
                self._kbuf[:, :, self.n:self.n + m] = key_states
                self._vbuf[:, :, self.n:self.n + m] = value_states
                self.n += m
                self._views()
                return SplitKV(self.prefix_keys, self.keys), SplitKV(self.prefix_values, self.values)

            def set_suffix(self, keys, values) -> None:
                """Replace the rows and their suffixes (keeping the buffer capacity)."""
                m = keys.shape[2]
                capacity = max(self._kbuf.shape[2], m)
                self._kbuf = keys.new_empty(*keys.shape[:2], capacity, keys.shape[3])
                self._vbuf = values.new_empty(*values.shape[:2], capacity, values.shape[3])
                self._kbuf[:, :, :m] = keys
                self._vbuf[:, :, :m] = values
                self.n = m
                self._views()

            def get_seq_length(self) -> int:
                return self.prefix_keys.shape[2] + self.n

            def batch_select_indices(self, indices):
                self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
                self._views()

            def batch_repeat_interleave(self, repeats):
                self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
                self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
                self._views()

            def crop(self, tokens_to_remove: int) -> None:
                raise NotImplementedError("a shared-prefix cache cannot be cropped")

            def reorder_cache(self, beam_idx):
                raise NotImplementedError("beam search is not supported on a shared-prefix cache")

        _SHARED_LAYER = SharedPrefixLayer
    return _SHARED_LAYER


def shared_cache(prefix_cache, rows: int, capacity: int):
    """A cache of ``rows`` rows whose full-attention layers share ``prefix_cache``'s (batch-1)
    keys and values without copying them; other layers (sliding windows) get expanded copies.
    ``capacity``: positions each row will add after the prefix (the buffers grow if exceeded)."""
    from transformers.cache_utils import DynamicLayer

    cache = copy.copy(prefix_cache)
    cache.layers = []
    layer_class = _shared_layer_class()
    for layer in prefix_cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            new = layer_class()
            new.setup(layer.keys, layer.values, rows, capacity)
        else:
            new = copy.deepcopy(layer)
            if rows > 1:
                new.batch_repeat_interleave(rows)
        cache.layers.append(new)
    return cache


def split_attention(module, query, key: SplitKV, value: SplitKV, mask, q_start: int, *,
                    return_weights: bool = False, **kwargs):
    """Attention of ``query`` (rows, heads, L, d) over a :class:`SplitKV` prefix + suffix.

    Exactly softmax(q k^T * scale + mask) v, computed in two blocks: the prefix block as one
    matmul for all rows (the shared keys are read once), the suffix block per row. ``mask``
    (bool, True = attend, or additive float; batch 1 or rows) covers all P + S keys, or is None
    for causal attention. Returns (output (rows, L, heads, d), head-averaged float32 weights
    (rows, L, P + S) when ``return_weights``, else None).
    """
    import torch

    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise NotImplementedError("attention sinks are not supported on a shared prefix")
    rows, heads, L, d = query.shape
    kv_heads, P = key.prefix.shape[1], key.prefix.shape[2]
    rep = heads // kv_heads
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", d ** -0.5)
    # group query heads by their kv head: (kv_heads, rows * rep * L, d) against the prefix
    grouped = query.reshape(rows, kv_heads, rep, L, d).permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, d)
    s_pre = torch.bmm(grouped, key.prefix[0].transpose(1, 2))
    s_pre = s_pre.reshape(kv_heads, rows, rep, L, P).permute(1, 0, 2, 3, 4).reshape(rows, heads, L, P)
    q_suf = query.reshape(rows, kv_heads, rep * L, d)
    s_suf = torch.matmul(q_suf, key.suffix.transpose(2, 3)).reshape(rows, heads, L, -1)
    scores = torch.cat([s_pre, s_suf], dim=-1).float() * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    kv = scores.shape[-1]
    if mask is None:
        if L > 1:  # causal inside the new block; every earlier key is visible
            k_start = q_start + L - kv
            q_pos = torch.arange(q_start, q_start + L, device=query.device)
            k_pos = torch.arange(k_start, k_start + kv, device=query.device)
            scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1)
    p = probs.to(value.suffix.dtype)
    p_pre = p[..., :P].reshape(rows, kv_heads, rep, L, P).permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, P)
    out = torch.bmm(p_pre, value.prefix[0]).reshape(kv_heads, rows, rep, L, d).permute(1, 0, 2, 3, 4)
    out = out.reshape(rows, heads, L, d)
    out = out + torch.matmul(p[..., P:].reshape(rows, kv_heads, rep * L, -1), value.suffix).reshape(rows, heads, L, d)
    return out.transpose(1, 2).contiguous(), (probs.mean(1) if return_weights else None)


_GROWING_LAYER = None


def _growing_layer_class():
    """A full-attention ``DynamicLayer`` that writes new keys/values into a buffer allocated
    for the whole generation instead of concatenating (which copies every row's cache at every
    step); attention sees views of the same values."""
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            def update(self, key_states, value_states, *args, **kwargs):
                n, m = self.keys.shape[-2], key_states.shape[-2]
                if n + m > self._kbuf.shape[-2]:
                    self.reserve(2 * (n + m))
                self._kbuf[..., n:n + m, :] = key_states
                self._vbuf[..., n:n + m, :] = value_states
                self.keys, self.values = self._kbuf[..., :n + m, :], self._vbuf[..., :n + m, :]
                return self.keys, self.values

            def reserve(self, capacity: int) -> None:
                n = self.keys.shape[-2]
                bufs = []
                for old in (self.keys, self.values):
                    buf = old.new_empty(*old.shape[:-2], max(capacity, n), old.shape[-1])
                    buf[..., :n, :] = old
                    bufs.append(buf)
                self._kbuf, self._vbuf = bufs
                self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]

            def batch_repeat_interleave(self, repeats):
                super().batch_repeat_interleave(repeats)
                self.reserve(self._kbuf.shape[-2])

            def batch_select_indices(self, indices):
                super().batch_select_indices(indices)
                self.reserve(self._kbuf.shape[-2])

        _GROWING_LAYER = GrowingLayer
    return _GROWING_LAYER


def _preallocate(cache, capacity: int) -> None:
    """Give every full-attention layer of ``cache`` room for ``capacity`` positions."""
    from transformers.cache_utils import DynamicLayer

    growing = _growing_layer_class()
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            new = growing()
            new.__dict__.update(layer.__dict__)
            new.reserve(capacity)
            cache.layers[i] = new


def _concat(caches, order) -> Any:
    """One cache whose batch rows are those of ``caches`` (concatenated), reordered by ``order``."""
    import torch

    out = caches[0]
    if len(caches) == 1 and list(order) == list(range(len(order))):
        return out
    index = torch.as_tensor(order, device=out.layers[0].keys.device)
    for i, layer in enumerate(out.layers):
        if not layer.is_initialized:
            continue
        keys = torch.cat([c.layers[i].keys for c in caches]).index_select(0, index)
        values = torch.cat([c.layers[i].values for c in caches]).index_select(0, index)
        if hasattr(layer, "set_suffix"):  # shared prefix: only the suffixes are per row
            layer.set_suffix(keys, values)
        else:
            layer.keys, layer.values = keys, values
    return out


def generate_rows(vlm, inp, row_knockouts: Sequence[Any], max_new_tokens: int, *, record=None,
                  prefix: Prefix | None | bool = None, record_rows: Sequence[int] | None = None,
                  **generate_kwargs):
    """Generate for one prepared input once per entry of ``row_knockouts``, as one batch.

    Rows whose knockouts block no system or image query continue from the shared image
    prefix; among them, rows that block generated tokens only (and the last query token at
    most) also share the query tokens. Other rows run the whole prompt, in a batch of their own.

    Args:
        row_knockouts: per row, None, a Knockout or a list of them.
        record: a Record applied to every row (e.g. the baseline's image attention), or only
            to ``record_rows`` when given (the others' ``recording`` is None).
        prefix: a :class:`Prefix` of ``inp`` to continue from, None to compute one when
            some row allows it, or False to run the whole prompt in every row.

    Returns one :class:`~vlmnb.engine.vlm.Generation` per row, in order.
    """
    rows = [as_knockout_list(k) for k in row_knockouts]
    if not rows:
        return []
    prompt = int(inp.spans.prompt_length)
    per_row = [k or None for k in rows]
    n0 = prefix_length(inp)
    first = [first_blocked_query(k, inp, vlm.num_layers, prompt + max_new_tokens) for k in rows]
    shared = [i for i, f in enumerate(first) if f >= n0]
    if prefix is False or not supports_prefix(vlm) or not shared:
        return vlm.generate_batch([inp] * len(rows), max_new_tokens=max_new_tokens, record=record,
                                  row_knockouts=per_row, record_rows=record_rows, **generate_kwargs)
    results: list[Any] = [None] * len(rows)
    recorded = set(range(len(rows)) if record_rows is None else record_rows)
    alone = [i for i in range(len(rows)) if i not in set(shared)]
    if alone:
        rec, rec_rows = _group_record(alone, recorded, record)
        outs = vlm.generate_batch([inp] * len(alone), max_new_tokens=max_new_tokens, record=rec,
                                  row_knockouts=[per_row[i] for i in alone], record_rows=rec_rows,
                                  **generate_kwargs)
        for i, out in zip(alone, outs):
            results[i] = out
    if not isinstance(prefix, Prefix):
        prefix = compute_prefix(vlm, inp)
    # rows that see the query unchanged share it too (fact: dst = generated leaves it as is)
    whole = [i for i in shared if first[i] >= prompt - 1]
    query = [i for i in shared if first[i] < prompt - 1]
    # the intervention (whose attention function reads an unexpanded prefix) runs when some row
    # has a knockout or a recording; otherwise every row gets its own copy of the prefix
    rec, rec_rows = _group_record(shared, recorded, record)
    split = rec is not None or any(per_row[i] for i in shared)
    capacity = prompt - prefix.length + max_new_tokens
    caches, members = [], []
    if query:
        cache = shared_cache(prefix.cache, len(query), capacity) if split else prefix.expand(len(query))
        _extend(vlm, prefix, cache, len(query), [rows[i] for i in query], max_new_tokens)
        caches.append(cache)
        members += query
    if whole:
        if prefix.prompt_cache is None:
            prefix.prompt_cache = prefix.expand(1)
            _extend(vlm, prefix, prefix.prompt_cache, 1)
        if split:
            caches.append(_shared_from_prompt(prefix, len(whole), capacity))
        else:
            caches.append(prefix.expand(len(whole), prefix.prompt_cache))
        members += whole
    cache = _concat(caches, [members.index(i) for i in shared])
    if not split:
        _preallocate(cache, prompt + max_new_tokens)
    _restore_rope(vlm, prefix)
    outs = vlm.generate_batch([prefix.text_inputs] * len(shared), max_new_tokens=max_new_tokens, record=rec,
                              row_knockouts=[per_row[i] for i in shared], **{_cache_kwarg(vlm.model): cache},
                              record_rows=rec_rows, **generate_kwargs)
    for i, out in zip(shared, outs):
        results[i] = out
    return results


def _group_record(members: list[int], recorded: set[int], record):
    """(record, record_rows) for a batch of ``members``: no record when none of them is recorded."""
    if record is None:
        return None, None
    chosen = [k for k, i in enumerate(members) if i in recorded]
    if not chosen:
        return None, None
    return record, (None if len(chosen) == len(members) else chosen)


def _shared_from_prompt(prefix: Prefix, rows: int, capacity: int):
    """A shared-prefix cache of ``rows`` rows, each continuing with the prompt cache's query tokens."""
    cache = shared_cache(prefix.cache, rows, capacity)
    for i, layer in enumerate(cache.layers):
        source = prefix.prompt_cache.layers[i]
        if hasattr(layer, "set_suffix"):
            keys = source.keys[:, :, prefix.length:]
            values = source.values[:, :, prefix.length:]
            layer.set_suffix(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
        else:
            layer = copy.deepcopy(source)
            if rows > 1:
                layer.batch_repeat_interleave(rows)
            cache.layers[i] = layer
    return cache
