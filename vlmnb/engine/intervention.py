"""Knockouts and recording applied to a model's runs: the :class:`Intervention` context.

:meth:`VLM.intervene <vlmnb.engine.vlm.VLM.intervene>` returns one. While it is open the text
decoder attends through vlmnb's registered attention function (:mod:`vlmnb.engine.attention`),
which hands every decoder layer to :meth:`Intervention.attend`. There every layer attends exactly
as transformers' own implementation does (:func:`~vlmnb.engine.attention.stock_attention`: SDPA, or
the eager attention of a soft-capped layer); a layer with an active knockout first adds
its blocked (query, key) pairs to the model's own mask, and a recorded layer additionally
recomputes the softmax of the few query rows it records.

Absolute positions: a decoder forward pass that has already cached ``seen`` tokens and gets
``q`` new ones has queries at positions ``seen .. seen + q - 1``; its keys are the last
``kv_len`` positions up to ``seen + q - 1`` (all of them, or a window for sliding-window
layers). Positions are those of the padded batch; spans are shifted by each row's left padding.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vlmnb.core.vocab import SPAN_NAMES
from vlmnb.engine.attention import ATTENTION_NAME, AttentionSwap, stock_attention
from vlmnb.engine.knockout import (Knockout, KnockoutPlan, RowLayout, as_knockout_list, check_spans, resolve_layers,
                                   span_positions)
from vlmnb.engine.record import Record, Recorder, Recording
from vlmnb.engine.sharedkv import split_attention


def attention_rows(module, query, key, mask, q_start: int, k_start: int, **kwargs):
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


class Intervention:
    """Context manager returned by :meth:`VLM.intervene <vlmnb.engine.vlm.VLM.intervene>`; see there.

    After a run, ``recordings`` holds one :class:`Recording` per batch row (or is empty) and
    ``row_knockouts`` the knockouts each row of the bound run was under.
    """

    def __init__(self, vlm, knockout=None, record: Record | None = None, inp=None):
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
        self._swap: AttentionSwap | None = None
        self._hook = None
        self._entered = False
        # run state
        self.plan: KnockoutPlan | None = None
        self.recorder: Recorder | None = None
        self._rows: list[RowLayout] = []
        self.row_knockouts: list[list[Knockout]] = []
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
        outer = vlm.active
        knockouts = (outer.knockouts if outer else []) + self.own_knockouts
        record = self.own_record or (outer.record if outer else None)
        # validate everything before touching the model
        for ko in knockouts:
            ko.layer_indices(vlm.num_layers)
        if record is not None:
            resolve_layers(record.layers, vlm.num_layers)
        self.knockouts, self.record, self._outer = knockouts, record, outer

        # apply: the attention swap (registration, implementation, routing to self.attend), the hook
        swap = AttentionSwap(vlm, ATTENTION_NAME, self)
        swap.__enter__()  # a failure here has restored what the swap touched
        self._swap = swap
        try:
            self._hook = vlm.decoder.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
            vlm.active = self
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
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._swap is not None:
            self._swap.restore()
            self._swap = None
        self._entered = False
        if vlm.active is self:
            vlm.active = self._outer
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
            prompt_length = int(input_ids_of(inp).shape[-1])
            check_spans(spans, prompt_length)
            rows.append(RowLayout(spans=spans, pad=int(pad), prompt_length=prompt_length))
        prompt_padded = rows[0].pad + rows[0].prompt_length
        if any(r.pad + r.prompt_length != prompt_padded for r in rows):
            raise ValueError("batch rows must be left-padded to one length")
        if row_knockouts is None:
            row_knockouts = [self.knockouts] * len(rows)
        else:
            row_knockouts = [(self.knockouts + as_knockout_list(k)) for k in row_knockouts]
        self._rows, self.row_knockouts = rows, row_knockouts
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
        if any(self.row_knockouts):
            plan = KnockoutPlan(self.row_knockouts, self._rows, self.vlm.num_layers, self._length)
            if check:
                plan.check_no_empty_rows([r.pad for r in self._rows], self.vlm.layer_windows())
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
            self.recorder.set_key_spans(spans if self._record_rows is None else spans[self._record_rows])

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

    def attend(self, layer, module, query, key, value, attention_mask, **kwargs):
        """Attention of decoder ``layer`` (called by the registered attention function): the stock
        attention on the model's mask plus this layer's knockouts; recorded rows are reduced on the way."""
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
        if hasattr(key, "materialize"):  # a shared, unexpanded prefix (vlmnb.engine.sharedkv.SplitKV)
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
        out, _ = stock_attention(module, query, key, value, mask, **kwargs)
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
                weights = attention_rows(module, q_rows, k_rows, row_mask, r_start, k_start, **kwargs)
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



def input_ids_of(inp):
    """The ``input_ids`` of a prepared input (or of an inputs dict)."""
    inputs = inp.inputs if hasattr(inp, "inputs") else inp
    return inputs["input_ids"]
