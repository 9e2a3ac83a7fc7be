"""Generate many knockout configurations of one image as one batch on a shared image prefix.

A knockout whose destination queries all come after the image (``dst`` = ``"query"``,
``"generated"`` or both; any ``src``) never changes what the system and image tokens compute:
their queries are not blocked, and causal attention keeps later tokens out of them. Their
keys and values are therefore the same in every such configuration. This module computes them
once per image (a batch of one, with the vision tower), copies that cache to as many rows as
there are configurations, and lets ``model.generate`` continue from it: the query tokens run
for every row under that row's own knockouts (the first generated token is predicted at the
last query position, as always), then all rows decode together, one weight read per step for
the whole batch. A row that ends (end-of-sequence) is padded by ``generate`` and trimmed.

Greedy outputs are the token ids each configuration gives when run alone with
:meth:`~vlmnb.models.VLM.generate`; the tests check this for every configuration of a sweep.
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

from .knockout import Knockout, RowLayout, _resolve, as_knockout_list, span_positions

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
    """

    cache: Any
    length: int
    inp: Any
    text_inputs: Any
    rope_deltas: Any = None

    def expand(self, rows: int):
        """A fresh copy of the cache with ``rows`` identical batch rows."""
        cache = copy.deepcopy(self.cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache


def prefix_length(inp) -> int:
    """Tokens before the query span: the part every configuration shares."""
    query = span_positions(inp.spans, "query")
    return int(query.min()) if query.size else int(inp.spans.prompt_length) - 1


def blocks_prefix(knockouts, inp, n_layers: int, length: int | None = None) -> bool:
    """Whether any of ``knockouts`` blocks a query before the query span (system or image)."""
    n_prefix = prefix_length(inp)
    prompt = int(inp.spans.prompt_length)
    row = RowLayout(spans=inp.spans, pad=0, prompt_length=prompt)
    for ko in as_knockout_list(knockouts):
        if not ko.layer_indices(n_layers):
            continue
        dst = _resolve(ko.dst, row, max(length or 0, prompt + 1), "dst")
        if dst[:n_prefix].any():
            return True
    return False


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
    kwargs = {_cache_kwarg(vlm.model): cache, "use_cache": True}
    if "logits_to_keep" in inspect.signature(vlm.model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    inner = _inner(vlm)
    if hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None  # computed afresh from this prompt's image grid
    with torch.no_grad():
        vlm.model(**head, **kwargs)
    if cache.get_seq_length() != n:
        raise NotImplementedError(f"{vlm.family}: the cache after the prefix holds {cache.get_seq_length()} "
                                  f"positions, expected {n}")
    text_inputs = dataclasses.replace(inp, inputs={k: v for k, v in inp.inputs.items() if k in _SEQUENCE_KEYS})
    return Prefix(cache=cache, length=n, inp=inp, text_inputs=text_inputs,
                  rope_deltas=getattr(inner, "rope_deltas", None))


def generate_rows(vlm, inp, row_knockouts: Sequence[Any], max_new_tokens: int, *, record=None,
                  prefix: Prefix | None | bool = None, **generate_kwargs):
    """Generate for one prepared input once per entry of ``row_knockouts``, as one batch.

    Args:
        row_knockouts: per row, None, a Knockout or a list of them.
        record: a Record applied to every row (e.g. the baseline's image attention).
        prefix: a :class:`Prefix` of ``inp`` to continue from, None to compute one when
            every row allows it, or False to run the whole prompt in every row.

    Returns one :class:`~vlmnb.models.Generation` per row, in order.
    """
    rows = [as_knockout_list(k) for k in row_knockouts]
    if not rows:
        return []
    share = prefix is not False and supports_prefix(vlm) and not any(
        blocks_prefix(k, inp, vlm.num_layers, int(inp.spans.prompt_length) + max_new_tokens) for k in rows)
    per_row = [k or None for k in rows]
    if not share:
        return vlm.generate_batch([inp] * len(rows), max_new_tokens=max_new_tokens, record=record,
                                  row_knockouts=per_row, **generate_kwargs)
    if not isinstance(prefix, Prefix):
        prefix = compute_prefix(vlm, inp)
    inner = _inner(vlm)
    if prefix.rope_deltas is not None:
        inner.rope_deltas = prefix.rope_deltas
    cache = prefix.expand(len(rows))
    out = vlm.generate_batch([prefix.text_inputs] * len(rows), max_new_tokens=max_new_tokens, record=record,
                             row_knockouts=per_row, **{_cache_kwarg(vlm.model): cache}, **generate_kwargs)
    for gen in out:  # report the caller's input (with its vision inputs), not the stripped copy
        gen.spans = dataclasses.replace(inp.spans, generated=gen.spans.generated) \
            if dataclasses.is_dataclass(inp.spans) else gen.spans
    return out
