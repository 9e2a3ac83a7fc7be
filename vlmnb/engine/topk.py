"""Top-k image tokens: per layer, which image tokens a top-``k`` selection drops.

The paper ranks image tokens by the attention the generated tokens gave them (averaged over
heads and tokens) and keeps the top ``k`` fraction per layer: top-k knockouts (chapter 4, via
:mod:`vlmnb.experiments.sweep`) and compressed contexts (:mod:`vlmnb.engine.compress`) both
use this one ranking.
"""
from __future__ import annotations

import numpy as np


def topk_dropped(image_attention: np.ndarray, image_positions: np.ndarray, k: float) -> dict[int, np.ndarray]:
    """Per layer, the image positions *not* among the top ``k`` fraction by attention.

    ``image_attention`` is (n_layers, n_image): the attention the generated tokens gave each
    image token in the baseline run, averaged over heads and tokens (the paper's ranking).
    At least one token is kept per layer. Ties break towards the earlier token.
    """
    att = np.asarray(image_attention, dtype=float)
    positions = np.asarray(image_positions)
    keep = max(1, int(round(k * att.shape[1])))
    dropped = {}
    for layer, row in enumerate(att):
        order = np.argsort(-row, kind="stable")
        if keep < len(order):
            dropped[layer] = np.sort(positions[order[keep:]])
    return dropped
