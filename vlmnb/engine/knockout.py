"""Attention knockout: block attention from chosen query tokens to chosen key tokens.

This is the paper's Eq. 3. In the selected decoder layers the attention score of a query
position ``q`` to a key position ``k`` receives an additive ``-inf`` (the dtype's minimum)
whenever ``k`` is in the *source* set and ``q`` is in the *destination* set, on top of the
model's own causal and padding mask::

    with vlm.intervene(knockout=vlmnb.Knockout("image", "generated", vlmnb.from_layer(4))):
        ...
    vlm.generate(inp, knockout=vlmnb.Knockout(src="image", dst=("query", "generated")))

Sets are span names (``"system"``, ``"image"``, ``"query"``, ``"generated"``), tuples of
them, or explicit absolute token positions (row 0 of the prepared input, before any
padding). ``src`` may also be a dict ``{layer: positions}`` to block a different source set
in every layer (for example: generated tokens may only look at the top-k image tokens of
that layer).

Positions follow the paper: the first generated token is *predicted at* the last prompt
position, which belongs to the ``query`` span. ``dst="generated"`` therefore leaves the
first prediction untouched; only from the second generated token on do the blocked queries
produce tokens. Use ``dst=("query", "generated")`` to cut the image off every prediction.

Several knockouts compose (pass a list): a (query, key) pair is blocked when any knockout
active in that layer blocks it. A knockout that would leave some query with no key to attend
to (a softmax over nothing, NaN) is rejected before the model runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlmnb.core.vocab import SPAN_NAMES

__all__ = ["SPAN_NAMES", "Knockout", "FromLayer", "Outside", "from_layer", "outside", "resolve_layers",
           "as_knockout_list", "RowLayout", "span_positions", "check_spans", "resolve_selection", "LayerPlan",
           "KnockoutPlan"]


# ----------------------------------------------------------------------------- layer sets
@dataclass(frozen=True)
class FromLayer:
    """Layer ``start`` and every deeper layer."""

    start: int

    def resolve(self, n_layers: int) -> tuple[int, ...]:
        _check_layer(self.start, n_layers, "from_layer")
        return tuple(range(self.start, n_layers))


@dataclass(frozen=True)
class Outside:
    """Every layer that is not in the closed window ``[first, last]``."""

    first: int
    last: int

    def resolve(self, n_layers: int) -> tuple[int, ...]:
        _check_layer(self.first, n_layers, "outside")
        _check_layer(self.last, n_layers, "outside")
        if self.first > self.last:
            raise ValueError(f"outside({self.first}, {self.last}): the first layer must not exceed the last")
        return tuple(i for i in range(n_layers) if not self.first <= i <= self.last)


def from_layer(layer: int) -> FromLayer:
    """Select layer ``layer`` and all deeper decoder layers (0-based)."""
    return FromLayer(_as_int(layer, "from_layer"))


def outside(first: int, last: int) -> Outside:
    """Select every decoder layer outside the window ``[first, last]`` (both included)."""
    return Outside(_as_int(first, "outside"), _as_int(last, "outside"))


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: layer indices must be integers, got {value!r}")
    return int(value)


def _check_layer(index: int, n_layers: int, what: str) -> None:
    if not 0 <= index < n_layers:
        raise ValueError(f"{what}: layer {index} is out of range; this model has layers 0..{n_layers - 1}")


def resolve_layers(layers: Any, n_layers: int) -> tuple[int, ...]:
    """Turn a layer selection ("all", from_layer, outside, or indices) into sorted indices."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers={layers!r}: use 'all', vlmnb.from_layer(l), vlmnb.outside(a, b) or indices")
        return tuple(range(n_layers))
    if isinstance(layers, (FromLayer, Outside)):
        return layers.resolve(n_layers)
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(f"layers={layers!r}: use 'all', vlmnb.from_layer(l), vlmnb.outside(a, b) or indices") from None
    out = set()
    for item in items:
        index = _as_int(item, "layers")
        _check_layer(index, n_layers, "layers")
        out.add(index)
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- the spec
@dataclass(eq=False)
class Knockout:
    """Block attention from ``dst`` queries to ``src`` keys in ``layers`` (the paper's Eq. 3).

    Args:
        src: keys that become invisible: a span name, a tuple of span names, explicit
            absolute positions, or a dict ``{layer: positions}`` (per-layer source sets; the
            knockout then acts only in layers that are both in the dict and in ``layers``).
        dst: queries that lose sight of ``src``: a span name, a tuple of names, or positions.
        layers: ``"all"``, :func:`from_layer`, :func:`outside`, or an iterable of indices.
    """

    src: Any = "image"
    dst: Any = "generated"
    layers: Any = "all"

    def __post_init__(self):
        for name in ("src", "dst"):  # a list of span names means the same as a tuple
            value = getattr(self, name)
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                setattr(self, name, tuple(value))
        for name in ("src", "dst"):
            value = getattr(self, name)
            if not isinstance(value, (str, Mapping)) and np.size(value) == 0:
                raise ValueError(f"Knockout {name}: no positions given (empty); pass a span name or positions")
        if isinstance(self.src, Mapping):
            if not self.src:
                raise ValueError("Knockout: the per-layer src dict is empty")
            for layer, positions in self.src.items():
                _as_int(layer, "Knockout src dict key")
                _check_selection(positions, "src", allow_names=False)
        else:
            _check_selection(self.src, "src", allow_names=True)
        if isinstance(self.dst, Mapping):
            raise TypeError("Knockout: dst cannot be a per-layer dict; only src can")
        _check_selection(self.dst, "dst", allow_names=True)
        if not isinstance(self.layers, (str, FromLayer, Outside)):
            # materialise generators once so the spec can be reused
            if isinstance(self.layers, Iterable):
                self.layers = tuple(self.layers)

    def layer_indices(self, n_layers: int) -> tuple[int, ...]:
        """Decoder layers this knockout acts in, for a model with ``n_layers`` layers."""
        layers = resolve_layers(self.layers, n_layers)
        if isinstance(self.src, Mapping):
            keys = set()
            for layer in self.src:
                _check_layer(int(layer), n_layers, "Knockout src dict")
                keys.add(int(layer))
            layers = tuple(i for i in layers if i in keys)
        return layers

    def __repr__(self) -> str:
        def show(sel):
            if isinstance(sel, Mapping):
                return f"{{{len(sel)} layers}}"
            if isinstance(sel, (str, tuple)) and all(isinstance(s, str) for s in np.atleast_1d(sel)):
                return repr(sel)
            return f"<{len(np.atleast_1d(sel))} positions>"

        return f"Knockout(src={show(self.src)}, dst={show(self.dst)}, layers={self.layers!r})"


def as_knockout_list(knockout: Any) -> list[Knockout]:
    """Normalise ``None`` / one Knockout / an iterable of Knockouts to a list."""
    if knockout is None:
        return []
    if isinstance(knockout, Knockout):
        return [knockout]
    items = list(knockout)
    for item in items:
        if not isinstance(item, Knockout):
            raise TypeError(f"knockout must be a vlmnb.Knockout or a list of them, got {type(item).__name__}")
    return items


def _is_name_selection(sel: Any) -> bool:
    if isinstance(sel, str):
        return True
    return isinstance(sel, tuple) and len(sel) > 0 and all(isinstance(s, str) for s in sel)


def _check_selection(sel: Any, what: str, allow_names: bool) -> None:
    if isinstance(sel, str) or (isinstance(sel, tuple) and sel and all(isinstance(s, str) for s in sel)):
        if not allow_names:
            raise TypeError(f"Knockout {what}: per-layer entries must be positions, not span names")
        for name in (sel,) if isinstance(sel, str) else sel:
            if name not in SPAN_NAMES:
                raise ValueError(f"Knockout {what}: unknown span {name!r}; spans are {SPAN_NAMES}")
        return
    try:
        arr = np.asarray(sel)
    except Exception:  # noqa: BLE001 - any conversion failure is a type error for the user
        raise TypeError(f"Knockout {what}: expected span name(s) or positions, got {type(sel).__name__}") from None
    if arr.dtype == object or arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"Knockout {what}: positions must be a 1-D array of integers, got {sel!r:.80}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"Knockout {what}: positions must be non-negative, got {int(arr.min())}")


# ----------------------------------------------------------------------------- compiled plans
@dataclass
class RowLayout:
    """Where one batch row's tokens sit: spans (unpadded positions) and its left padding."""

    spans: Any
    pad: int  # number of left-padding tokens before this row's prompt
    prompt_length: int  # unpadded prompt length of this row


def span_positions(spans: Any, name: str) -> np.ndarray:
    """Absolute positions of span ``name`` from a Spans-like object."""
    if hasattr(spans, "positions"):
        pos = spans.positions(name)
    else:
        pos = getattr(spans, name)
    return np.asarray(pos, dtype=np.int64).reshape(-1)


def check_spans(spans: Any, prompt_length: int) -> None:
    """Prompt spans must be disjoint, inside the prompt, and the image span non-empty."""
    seen = np.full(prompt_length, -1, dtype=np.int64)
    for index, name in enumerate(SPAN_NAMES[:3]):
        pos = span_positions(spans, name)
        if pos.size and (pos.min() < 0 or pos.max() >= prompt_length):
            raise ValueError(f"span {name!r} has positions outside the prompt (length {prompt_length})")
        clash = seen[pos] >= 0
        if clash.any():
            other = SPAN_NAMES[int(seen[pos[clash][0]])]
            raise ValueError(f"spans {other!r} and {name!r} overlap at position {int(pos[clash][0])}")
        seen[pos] = index
    if span_positions(spans, "image").size == 0:
        raise ValueError("the prompt has no image tokens (empty 'image' span): check the prompt and processor")


def resolve_selection(sel: Any, row: RowLayout, length: int, what: str) -> np.ndarray:
    """A selection as a boolean vector over padded absolute positions ``0..length-1``."""
    vec = np.zeros(length, dtype=bool)
    if _is_name_selection(sel):
        for name in (sel,) if isinstance(sel, str) else sel:
            if name == "generated":
                vec[row.pad + row.prompt_length:] = True
                continue
            pos = span_positions(row.spans, name)
            if pos.size == 0:
                raise ValueError(f"Knockout {what}: span {name!r} is empty for this input")
            vec[pos + row.pad] = True
        return vec
    pos = np.asarray(sel, dtype=np.int64).reshape(-1)
    if pos.size and pos.max() + row.pad >= length:
        raise ValueError(f"Knockout {what}: position {int(pos.max())} is beyond the sequence "
                         f"(prompt {row.prompt_length} + generated tokens)")
    vec[pos + row.pad] = True
    return vec


@dataclass(eq=False)
class LayerPlan:
    """Blocked (query, key) pairs of one layer: OR over pairs of ``dst[q] & src[k]``.

    ``src`` and ``dst`` have shape (n_pairs, batch, length) over padded absolute positions.
    Layers with the same knockouts share one LayerPlan so a step's mask is built once.
    """

    src: np.ndarray
    dst: np.ndarray
    _torch: dict = field(default_factory=dict, repr=False)

    def touches(self, q_start: int, q_stop: int) -> bool:
        """Whether any query in ``[q_start, q_stop)`` is a destination in this layer."""
        return bool(self.dst[:, :, q_start:q_stop].any())

    def tensors(self, device):
        key = str(device)
        if key not in self._torch:
            import torch

            self._torch[key] = (torch.from_numpy(self.src).to(device), torch.from_numpy(self.dst).to(device))
        return self._torch[key]

    def blocked(self, q_positions, k_positions, device):
        """Bool tensor (batch, 1, q, kv): True where the knockout removes the key."""
        src, dst = self.tensors(device)
        d = dst[:, :, q_positions]  # (pairs, B, q)
        s = src[:, :, k_positions]  # (pairs, B, kv)
        return (d[..., :, None] & s[..., None, :]).any(0)[:, None]


class KnockoutPlan:
    """Knockouts bound to concrete batch rows: per decoder layer, a LayerPlan or None."""

    def __init__(self, knockouts_per_row: Sequence[Sequence[Knockout]], rows: Sequence[RowLayout],
                 n_layers: int, length: int):
        self.knockouts_per_row = [list(k) for k in knockouts_per_row]
        self.rows = list(rows)
        self.n_layers = n_layers
        self.length = length
        self.layers: list[LayerPlan | None] = [None] * n_layers
        self._build()

    @property
    def empty(self) -> bool:
        return all(plan is None for plan in self.layers)

    def _build(self) -> None:
        batch, length = len(self.rows), self.length
        n_slots = max((len(k) for k in self.knockouts_per_row), default=0)
        # per layer: list of (src (B, L), dst (B, L)); one pair per knockout slot; rows where
        # the slot's knockout is absent or inactive in that layer stay all-False (no effect)
        per_layer: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.n_layers)]
        for slot in range(n_slots):
            srcs: dict[int, np.ndarray] = {}
            dsts: dict[int, np.ndarray] = {}
            for b, (knockouts, row) in enumerate(zip(self.knockouts_per_row, self.rows)):
                if slot >= len(knockouts):
                    continue
                ko = knockouts[slot]
                dst = resolve_selection(ko.dst, row, length, "dst")
                const_src = None if isinstance(ko.src, Mapping) else resolve_selection(ko.src, row, length, "src")
                for layer in ko.layer_indices(self.n_layers):
                    if const_src is None:
                        positions = ko.src[layer]
                        src = resolve_selection(positions, row, length, "src")
                    else:
                        src = const_src
                    srcs.setdefault(layer, np.zeros((batch, length), dtype=bool))[b] = src
                    dsts.setdefault(layer, np.zeros((batch, length), dtype=bool))[b] = dst
            for layer in srcs:
                per_layer[layer].append((srcs[layer], dsts[layer]))
        # layers with equal content share one LayerPlan (so a step builds each mask once)
        shared: dict[bytes, LayerPlan] = {}
        for layer, pairs in enumerate(per_layer):
            pairs = [(s, d) for s, d in pairs if s.any() and d.any()]
            if not pairs:
                continue
            src = np.stack([s for s, _ in pairs])
            dst = np.stack([d for _, d in pairs])
            key = np.packbits(src).tobytes() + b"|" + np.packbits(dst).tobytes() + bytes(str(src.shape), "ascii")
            if key not in shared:
                shared[key] = LayerPlan(src, dst)
            self.layers[layer] = shared[key]

    def check_no_empty_rows(self, valid_from: Sequence[int], layer_windows: Sequence[int | None]) -> None:
        """Raise if a destination query would have every visible key blocked (a NaN row).

        ``valid_from[b]``: first non-padding position of row b. ``layer_windows[l]``: sliding
        window of layer l or None for full attention.
        """
        checked: set[tuple[int, int | None]] = set()
        for layer, plan in enumerate(self.layers):
            if plan is None or (id(plan), layer_windows[layer]) in checked:
                continue
            checked.add((id(plan), layer_windows[layer]))
            window = layer_windows[layer]
            for b, start in enumerate(valid_from):
                src, dst = plan.src[:, b], plan.dst[:, b]  # (pairs, L)
                # only queries that are themselves blocked as keys can lose every key
                candidates = np.flatnonzero((dst & src).any(0))
                for q in candidates:
                    lo = start if window is None else max(start, q - window + 1)
                    blocked_q = src[dst[:, q]].any(0)[lo:q + 1]
                    if blocked_q.all():
                        row = self.rows[b]
                        raise ValueError(
                            f"knockout would block position {q - row.pad} from every key it can see "
                            f"in layer {layer} (its softmax would be NaN); keep at least one visible "
                            f"key, e.g. do not put a query's own span in src")
