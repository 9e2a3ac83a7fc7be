"""Geometry with the image-processor settings of the reference checkpoints (each family's
``reference_sizes``: 336/14 CLIP, 384/14 SigLIP with anyres_max_9, Qwen2-VL's pixel budget, 448px
InternVL tiles, ...). No weights are needed: :func:`vlmnb.engine.spans.prepare`
reads only the config, so each case pairs a config with the checkpoint's sizes and a processor
with the same settings, and checks that the geometry's feature count equals the processor's
image-token count for images of many shapes, with every box inside the image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlmnb.engine import families
from vlmnb.engine import spans as S
from vlmnb.engine import tiny


def real_sized(built, family):
    """(config, processor) with the reference checkpoint's image settings (the family's entry)."""
    model, small = built(family)
    return families.get(family).reference_sizes(model.config, small)


SHAPES = [(640, 480), (300, 1000), (1000, 300), (50, 50), (333, 777)]


@pytest.mark.slow
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_reference_sizes_token_counts_and_boxes(family, built):
    config, proc = real_sized(built, family)
    rng = np.random.RandomState(0)
    for W, H in SHAPES:
        image = Image.fromarray((rng.rand(H, W, 3) * 255).astype(np.uint8))
        prep = S.prepare(config, proc, image, "describe the image")  # raises if counts disagree
        g = prep.geometry
        b = g.boxes[g.has_box]
        assert len(b) > 0
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= W + 1e-6).all() and (b[:, 3] <= H + 1e-6).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        # the overview view sees the centre pixel
        assert set(g.token_at(W // 2, H // 2)) & set(g.view().token_indices)
