"""Generate many knockout configurations of one image as one batch on a shared image prefix.

A knockout whose destination queries all come after the image (``dst`` = ``"query"``,
``"generated"`` or both; any ``src``) never changes what the system and image tokens compute:
their queries are not blocked, and causal attention keeps later tokens out of them. Their
keys and values are therefore the same in every such configuration. This module computes them
once per image (a batch of one, with the vision tower) and lets ``model.generate`` continue
from it for as many rows as there are configurations: the query tokens run for every row under
that row's own knockouts (the first generated token is predicted at the last query position,
as always), then all rows decode together, one weight read per step for the whole batch. The
rows share the prefix's keys and values without copying them (:func:`~vlmnb.engine.sharedkv.shared_cache`):
each step's attention reads them once for all rows (:func:`~vlmnb.engine.sharedkv.split_attention`). A row that ends
(end-of-sequence) leaves the batch: the rows are decoded by a greedy loop of this module
(:func:`generate_rows`' ``early_stop``), which drops finished rows from the cache and the
intervention, so later steps cost what the rows still running cost, not what the longest row's
batch cost (a recorded row stays to the end, padded and trimmed, as ``generate`` does). Without
early stop, with sampling or generation options the loop does not reproduce (logits processors,
beams), and for rows that run the whole prompt (below), ``generate`` decodes and pads finished
rows to the longest one.

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

from vlmnb.engine import families
from vlmnb.engine.knockout import RowLayout, as_knockout_list, resolve_selection, span_positions
from vlmnb.engine.sharedkv import SplitKV, preallocate, shared_cache, split_attention
from vlmnb.engine.vlm import Generation, token_offsets, with_generated

#: default of :func:`generate_rows`'s ``early_stop``: drop rows from the batch when they end
EARLY_STOP = True

__all__ = ["EARLY_STOP", "Prefix", "prefix_length", "first_blocked_query", "blocks_prefix", "supports_prefix",
           "compute_prefix", "generate_rows", "SplitKV", "shared_cache", "split_attention", "preallocate"]

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
        dst = np.flatnonzero(resolve_selection(ko.dst, row, max(length or 0, prompt + 1), "dst"))
        if dst.size:
            first = min(first, int(dst[0]))
    return first


def blocks_prefix(knockouts, inp, n_layers: int, length: int | None = None) -> bool:
    """Whether any of ``knockouts`` blocks a query before the query span (system or image)."""
    return first_blocked_query(knockouts, inp, n_layers, length) < prefix_length(inp)


def supports_prefix(vlm) -> bool:
    """Whether ``vlm``'s family is known to continue exactly from a cached image prefix (its
    registry entry's ``prefix_sharing``), outside any intervention context."""
    family = families.REGISTRY.get(vlm.family)
    return family is not None and family.prefix_sharing and vlm.active is None


def _forward_kwargs(vlm, cache) -> dict:
    kwargs = {vlm.cache_argument: cache, "use_cache": True}
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
    inputs = vlm.to_device(dict(inp.inputs))
    head = {k: (v[:, :n] if k in _SEQUENCE_KEYS and v is not None else v) for k, v in inputs.items()}
    # the cache generate() itself would build for this model (sliding-window layers included)
    cache = DynamicCache(config=vlm.model.config.get_text_config(decoder=True))
    inner = vlm.inner_model
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

    ids = vlm.to_device({"input_ids": prefix.text_inputs.inputs["input_ids"]})["input_ids"]
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
        vlm.inner_model.rope_deltas = prefix.rope_deltas



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
                  early_stop: bool | None = None, **generate_kwargs):
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
        early_stop: decode the shared-prefix rows with vlmnb's own greedy loop, which drops a
            row from the batch when it ends (end-of-sequence) instead of carrying it to the
            longest row; None: the module default :data:`EARLY_STOP`. False (or sampling, or
            generation options the loop does not reproduce) uses ``model.generate``.

    Returns one :class:`~vlmnb.engine.vlm.Generation` per row, in order.
    """
    rows = [as_knockout_list(k) for k in row_knockouts]
    if not rows:
        return []
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
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
        preallocate(cache, prompt + max_new_tokens)
    _restore_rope(vlm, prefix)
    stop_early = EARLY_STOP if early_stop is None else early_stop
    stop = greedy_setup(vlm, prompt, generate_kwargs) if stop_early else None
    if stop is not None:
        outs = _decode(vlm, prefix, cache, [per_row[i] for i in shared], max_new_tokens, rec, rec_rows, stop)
    else:
        outs = vlm.generate_batch([prefix.text_inputs] * len(shared), max_new_tokens=max_new_tokens, record=rec,
                                  row_knockouts=[per_row[i] for i in shared], **{vlm.cache_argument: cache},
                                  record_rows=rec_rows, **generate_kwargs)
    for i, out in zip(shared, outs):
        results[i] = out
    return results


def greedy_setup(vlm, prompt: int, generate_kwargs: dict):
    """Whether the rows can be decoded by :func:`_decode` (plain greedy search, as ``generate``
    would run it here): returns the end-of-sequence ids and the padding id, or None."""
    extra = {k: v for k, v in generate_kwargs.items() if not (k == "do_sample" and not v)
             and not (k == "use_cache" and v)}
    if extra:
        return None
    cfg = copy.deepcopy(vlm.model.generation_config)
    cfg.do_sample = False
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
        if hasattr(cfg, name):
            setattr(cfg, name, None)
    if (getattr(cfg, "num_beams", 1) or 1) != 1 or (getattr(cfg, "num_return_sequences", 1) or 1) != 1 \
            or getattr(cfg, "stop_strings", None):
        return None
    try:  # generate()'s logits processors for this config: plain greedy search has none
        if len(vlm.model._get_logits_processor(cfg, input_ids_seq_length=prompt, device=vlm.device,
                                               model_kwargs={})):
            return None
    except Exception:  # noqa: BLE001 - any doubt: let generate() decode
        return None
    eos = cfg.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    return {int(t) for t in eos}, _pad_id(vlm, cfg)


def _rebind(iv, inp, row_knockouts: list, length: int, record_rows: list[int] | None) -> None:
    """Bind ``iv`` afresh to the batch rows still running (``row_knockouts``: theirs, in batch
    order; ``record_rows``: where the recorded rows now are). Recorded rows never leave, in the
    same order, so the recorder of the whole run is kept, with what it has observed so far."""
    recorder = iv.recorder
    iv.bind([inp] * len(row_knockouts), length=length, row_knockouts=row_knockouts, record_rows=record_rows)
    if recorder is not None:
        iv.recorder = recorder


def _pad_id(vlm, cfg) -> int:
    """The id ``generate`` feeds a finished row (as :meth:`VLM.generate_batch` sets it up)."""
    for pad in (cfg.pad_token_id, getattr(vlm.tokenizer, "pad_token_id", None)):
        if pad is not None:
            return int(pad)
    eos = cfg.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    return int(eos if eos is not None else 0)


def _decode(vlm, prefix: Prefix, cache, row_knockouts, max_new_tokens: int, record, record_rows, stop):
    """Greedy decoding of ``len(row_knockouts)`` rows continuing ``cache`` (the prompt but its last
    token), dropping rows from the batch once they have produced an end-of-sequence id (as soon
    as a quarter of the batch has ended; rows ended before that are fed the padding id).

    Each step is what ``model.generate`` runs for greedy search (the new token, an all-ones
    attention mask, the cache; argmax of the float32 logits), on the rows still running. A
    row that is recorded stays to the end (its recorder rows do not move); like ``generate``
    it is fed the padding id after its end, and the recording is trimmed to its tokens.
    """
    import contextlib

    import torch

    eos, pad = stop
    inp = prefix.text_inputs
    ids = vlm.to_device({"input_ids": inp.inputs["input_ids"]})["input_ids"]
    prompt, n, device = int(ids.shape[1]), len(row_knockouts), ids.device
    kept = set() if record is None else set(range(n)) if record_rows is None else set(record_rows)
    tokens: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    live = list(range(n))  # the row of ``row_knockouts`` each batch row is
    kwargs = {vlm.cache_argument: cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(vlm.model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    step_ids = ids[:, -1:].expand(n, 1)
    intervene = record is not None or any(row_knockouts)
    with torch.no_grad(), (vlm.intervene(record=record) if intervene else contextlib.nullcontext()) as iv:
        if iv is not None:
            iv.bind([inp] * n, length=prompt + max_new_tokens, row_knockouts=row_knockouts, record_rows=record_rows)
        active = [list(k) for k in iv.row_knockouts] if iv is not None else [[] for _ in range(n)]
        for step in range(max_new_tokens):
            mask = torch.ones((len(live), prompt + step), dtype=torch.long, device=device)
            extra = {}
            if prefix.rope_deltas is not None:  # 3-D positions (Qwen2-VL style): position + the prefix's offset
                delta = prefix.rope_deltas.to(device)
                position = torch.full((3, len(live), 1), prompt + step - 1, dtype=torch.long, device=device)
                extra["position_ids"] = position + delta.repeat_interleave(len(live) // delta.shape[0], dim=0)
            logits = vlm.model(input_ids=step_ids, attention_mask=mask, **extra, **kwargs).logits[:, -1]
            nxt = torch.argmax(logits.to(torch.float32), dim=-1)
            finished = [done[r] for r in live]
            if any(finished):  # recorded rows past their end: the padding id, as generate() feeds
                nxt = torch.where(torch.as_tensor(finished, device=nxt.device), pad, nxt)
            for b, (r, t) in enumerate(zip(live, nxt.tolist())):
                if not done[r]:
                    tokens[r].append(t)
                    done[r] = t in eos
            if step == max_new_tokens - 1 or all(done):
                break
            keep = [b for b, r in enumerate(live) if not done[r] or r in kept]
            # drop the rows that ended, once they are a quarter of the batch (each drop re-binds the
            # intervention, which costs about one small step; carried rows until then are trimmed)
            if len(live) - len(keep) >= max(1, len(live) // 4):
                index = torch.as_tensor(keep, device=nxt.device)
                cache.batch_select_indices(index)
                nxt = nxt.index_select(0, index)
                live = [live[b] for b in keep]
                if iv is not None:
                    recorded = None if record_rows is None else [b for b, r in enumerate(live) if r in kept]
                    _rebind(iv, inp, [row_knockouts[r] for r in live], prompt + max_new_tokens, recorded)
            step_ids = nxt[:, None]
        recordings = iv.finish([len(tokens[r]) for r in live]) if iv is not None else []
    by_row = dict(zip(live, recordings)) if recordings else {}
    n_prompt = prompt
    out = []
    for r in range(n):
        text, offsets = token_offsets(vlm.tokenizer, tokens[r])
        out.append(Generation(
            text=text, token_ids=tokens[r], tokens=[text[s:e] for s, e in offsets], offsets=offsets,
            spans=with_generated(inp.spans, np.arange(n_prompt, n_prompt + len(tokens[r]))),
            recording=by_row.get(r), knockout=active[r]))
    return out


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
