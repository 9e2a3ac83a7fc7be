"""Key/value caches whose batch rows share one unexpanded prefix, and attention over them.

:mod:`vlmnb.engine.batched` runs many knockout configurations of one image as the rows of one
batch. The rows' system and image tokens have the same keys and values, so the cache keeps
them once (batch 1) and each row only its own positions after them (:func:`shared_cache`,
:class:`SplitKV`); vlmnb's attention function reads the shared block once for all rows
(:func:`split_attention`). :func:`preallocate` gives full-attention layers of an ordinary cache
room for the whole generation, so decoding does not copy every row's cache at every step.
"""
from __future__ import annotations

import copy


class SplitKV:
    """Keys (or values) of a batch whose first positions are one shared, unexpanded prefix.

    ``prefix``: (1, heads, P, d), the same for every row; ``suffix``: (rows, heads, S, d), each
    row's own positions after it. The cache hands these to the attention function instead of
    one (rows, heads, P + S, d) tensor, so a decoding step reads the prefix once for all rows,
    not once per row (with 576+ image tokens and 30 rows, most of the memory traffic of a step).
    Only vlmnb's attention function (active inside :meth:`~vlmnb.engine.vlm.VLM.intervene`) reads
    it (:func:`split_attention`); :meth:`materialize` gives the plain tensor.
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


def preallocate(cache, capacity: int) -> None:
    """Give every full-attention layer of ``cache`` room for ``capacity`` positions."""
    from transformers.cache_utils import DynamicLayer

    growing = _growing_layer_class()
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            new = growing()
            new.__dict__.update(layer.__dict__)
            new.reserve(capacity)
            cache.layers[i] = new
