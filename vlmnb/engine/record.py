"""Attention statistics reduced on the fly, without ``output_attentions``.

``output_attentions=True`` keeps layers x heads x queries x keys for every generation step
(hundreds of MB per sample on a 7B model). :class:`Record` instead asks the attention
function to reduce each step immediately: the attention row of the query that produces the
next token is averaged over heads and summed per span, and optionally its image-token part is
kept. The model's own output is computed exactly as without recording.

Row convention: row ``i`` of a :class:`Recording` is the attention row of the forward step
that produced generated token ``i``. Step 0's query is the last prompt position (it predicts
the first generated token); step ``i``'s query is generated token ``i - 1``. In a
teacher-forced forward with a continuation of ``n`` tokens, the rows are the ``n`` positions
that predict those tokens (last prompt position up to the second-to-last continuation token).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmnb.core.vocab import SPAN_NAMES
from vlmnb.engine.knockout import resolve_layers


@dataclass
class Record:
    """What to record during a run.

    Args:
        fractions: per layer and step, the head-averaged share of attention that goes to each
            span (system, image, query, generated); the four shares sum to 1.
        image_rows: also keep the head-averaged attention row over the image tokens
            (n_layers x n_steps x n_image floats; for maps, histograms and top-k selection).
        layers: which decoder layers to record ("all", vlmnb.from_layer(l), indices).
    """

    fractions: bool = True
    image_rows: bool = False
    layers: Any = "all"

    def __post_init__(self):
        if not (self.fractions or self.image_rows):
            raise ValueError("Record: nothing to record; set fractions=True and/or image_rows=True")


@dataclass
class Recording:
    """Attention statistics of one sample (see the module docstring for the row convention).

    Attributes:
        fractions: (n_layers, n_steps, 4) float32 shares per span, or None.
        image_rows: (n_layers, n_steps, n_image) float32 head-averaged attention to each image
            token, or None. Columns follow ``image_positions``.
        layers: decoder layer index of each first-axis entry.
        span_names: names of the last axis of ``fractions``.
        image_positions: absolute positions of the image tokens (columns of ``image_rows``).
    """

    fractions: np.ndarray | None
    image_rows: np.ndarray | None
    layers: tuple[int, ...]
    image_positions: np.ndarray
    span_names: tuple[str, ...] = SPAN_NAMES
    meta: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        arr = self.fractions if self.fractions is not None else self.image_rows
        return int(arr.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (bytes)."""
        return sum(a.nbytes for a in (self.fractions, self.image_rows) if a is not None)

    def _need_fractions(self) -> np.ndarray:
        if self.fractions is None:
            raise ValueError("this Recording has no fractions; record with Record(fractions=True)")
        return self.fractions

    def mean_fractions(self, steps: slice | np.ndarray | None = None):
        """DataFrame (one row per layer, one column per span): fractions averaged over steps."""
        import pandas as pd

        fr = self._need_fractions()
        if steps is not None:
            fr = fr[:, steps]
        return pd.DataFrame(fr.mean(axis=1), index=pd.Index(self.layers, name="layer"),
                            columns=list(self.span_names))

    def fractions_frame(self):
        """Long DataFrame with columns layer, step, span, fraction."""
        import pandas as pd

        fr = self._need_fractions()
        n_layers, n_steps, n_spans = fr.shape
        return pd.DataFrame({
            "layer": np.repeat(np.asarray(self.layers), n_steps * n_spans),
            "step": np.tile(np.repeat(np.arange(n_steps), n_spans), n_layers),
            "span": np.tile(np.asarray(self.span_names), n_layers * n_steps),
            "fraction": fr.reshape(-1),
        })

    def image_attention(self, layers: Any = "all", steps: slice | np.ndarray | None = None) -> np.ndarray:
        """Head-averaged attention to each image token, averaged over the chosen layers and steps."""
        if self.image_rows is None:
            raise ValueError("this Recording has no image rows; record with Record(image_rows=True)")
        rows = self.image_rows
        if steps is not None:
            rows = rows[:, steps]
        wanted = set(resolve_layers(layers, max(self.layers) + 1)) if layers != "all" else set(self.layers)
        index = [i for i, layer in enumerate(self.layers) if layer in wanted]
        if not index:
            raise ValueError(f"none of the layers {sorted(wanted)} were recorded (recorded: {self.layers})")
        return rows[index].mean(axis=(0, 1))


class Recorder:
    """Collects reduced attention rows during a run (used by the engine, not by users).

    Keys of each batch row are labelled with their span (0..3, -1 for padding); the rows to
    record are query positions ``first .. first + n_steps - 1`` (padded coordinates). Blocks
    stay on the model's device until :meth:`finish`, so recording adds no host syncs.
    """

    def __init__(self, spec: Record, layers: tuple[int, ...], key_spans, image_index, first: int):
        import torch

        self.spec = spec
        self.layers = layers
        self._slot = {layer: i for i, layer in enumerate(layers)}
        self.key_spans = key_spans  # (B, L) int64 tensor (CPU), -1 = padding
        self.image_index = image_index  # (B, n_image) int64 tensor (padded positions)
        self.first = first
        self._device_cache: dict[str, tuple] = {}
        self.blocks: list[tuple[int, int, Any, Any]] = []  # (slot, step0, fractions, image rows)
        self._torch = torch
        self._onehot_key = None
        self._onehot = None

    def wants(self, layer: int) -> bool:
        """Whether ``layer`` is recorded."""
        return layer in self._slot

    def set_key_spans(self, key_spans) -> None:
        """Replace the key labels (the run grew longer) and drop what was derived from them."""
        self.key_spans = key_spans
        self._device_cache = {}
        self._onehot_key = None

    def _on(self, device):
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = (self.key_spans.to(device), self.image_index.to(device))
        return self._device_cache[key]

    def rows_of(self, q_start: int, q_stop: int) -> tuple[int, int]:
        """Recorded query positions among ``[q_start, q_stop)`` (may be empty)."""
        return max(q_start, self.first), q_stop

    def observe(self, layer: int, weights, k_start: int, step0: int) -> None:
        """Reduce head-averaged ``weights`` (B, rows, kv); the first row is step ``step0``."""
        torch = self._torch
        key_spans, image_index = self._on(weights.device)
        kv = weights.shape[-1]
        fractions = image = None
        if self.spec.fractions:
            # every full-attention layer of a step sees the same keys: build the labels once
            key = (str(weights.device), k_start, kv)
            if self._onehot_key != key:
                labels = key_spans[:, k_start:k_start + kv]  # (B, kv)
                self._onehot = torch.nn.functional.one_hot(labels + 1, len(SPAN_NAMES) + 1)[..., 1:].float()
                self._onehot_key = key
            fractions = torch.bmm(weights, self._onehot)  # (B, rows, 4)
        if self.spec.image_rows:
            rel = image_index - k_start  # (B, n_image)
            inside = (rel >= 0) & (rel < kv)
            idx = rel.clamp(0, kv - 1)[:, None, :].expand(-1, weights.shape[1], -1)
            image = torch.gather(weights, 2, idx) * inside[:, None, :]
        self.blocks.append((self._slot[layer], step0, fractions, image))

    def finish(self, n_steps_per_row: list[int], image_positions_per_row: list[np.ndarray],
               meta: dict | None = None) -> list[Recording]:
        """Assemble one Recording per batch row, each trimmed to that row's steps."""
        batch = len(n_steps_per_row)
        n_steps = max(n_steps_per_row, default=0)
        n_layers = len(self.layers)
        n_image = self.image_index.shape[1]
        fr = np.zeros((batch, n_layers, n_steps, len(SPAN_NAMES)), np.float32) if self.spec.fractions else None
        im = np.zeros((batch, n_layers, n_steps, n_image), np.float32) if self.spec.image_rows else None
        for slot, step0, fractions, image in self.blocks:  # later blocks overwrite earlier ones
            if step0 >= n_steps:
                continue
            stop = min(step0 + (fractions if fractions is not None else image).shape[1], n_steps)
            if fr is not None:
                fr[:, slot, step0:stop] = fractions[:, :stop - step0].float().cpu().numpy()
            if im is not None:
                im[:, slot, step0:stop] = image[:, :stop - step0].float().cpu().numpy()
        self.blocks = []
        out = []
        for b in range(batch):
            n = n_steps_per_row[b]
            out.append(Recording(
                fractions=None if fr is None else np.ascontiguousarray(fr[b, :, :n]),
                image_rows=None if im is None else np.ascontiguousarray(im[b, :, :n]),
                layers=tuple(self.layers),
                image_positions=np.asarray(image_positions_per_row[b]),
                meta=dict(meta or {}),
            ))
        return out
