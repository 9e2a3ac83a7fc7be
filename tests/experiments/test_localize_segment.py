"""Text-prompted masks: a tiny random OWLv2 and a tiny random Segment Anything (the packages'
own classes at small sizes) run the whole detector -> SAM -> filter -> cache path offline."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vlmnb.experiments import localize as L
from vlmnb.data import segment as G
from vlmnb.data import toy_samples
from vlmnb.engine.loading import ModelNotAvailable


@pytest.fixture(scope="module")
def parts():
    model, processor = G.tiny_owlv2()
    return G.Detector(model, processor, name="tiny-owlv2"), G.tiny_sam()


@pytest.fixture(scope="module")
def sample():
    return toy_samples(1)[0]


def detail_for(name, image_id="toy"):
    text = f"a large {name} at the top."
    start = text.index(name)
    return L.Detail(image_id, name, 0, start, start + len(name), (0,), text)


def test_detector_boxes_are_in_image_pixels_and_sorted(parts, sample):
    detector, _ = parts
    found = detector.detect(sample.image, "red circle")
    assert found, "a detector with threshold 0 returns its boxes"
    scores = [s for s, _ in found]
    assert scores == sorted(scores, reverse=True)
    W, H = sample.image.size
    for _, (x0, y0, x1, y1) in found:
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_sam_path_end_to_end_with_cache(parts, sample, tmp_path):
    from segment_anything import SamPredictor

    detector, sam = parts
    source = G.TextPromptedMasks(detector, sam, min_box_score=0.0, min_mask_score=-np.inf, min_inside=0.0,
                                 cache_dir=tmp_path / "masks")
    dm = source(sample, detail_for("red circle"))
    # the kept mask is SAM's best proposal for the detector's best box
    _, box = detector.detect(sample.image, "red circle")[0]
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(sample.image))
    masks, scores, _ = predictor.predict(box=np.asarray(box), multimask_output=True)
    expected = masks[int(np.argmax(scores))]
    assert dm.mask is not None and dm.mask.shape == (90, 90) and dm.mask.dtype == bool
    assert np.array_equal(dm.mask, expected) and dm.score == pytest.approx(float(scores.max()))
    # the mask and its note are written for review, and read back instead of recomputed
    png = tmp_path / "masks" / sample.image_id.lower() / "red-circle.png"
    note = json.loads(png.with_suffix(".json").read_text())
    assert png.is_file() and note["detail"] == "red circle" and note["box"] == pytest.approx(list(box))
    reread = G.TextPromptedMasks(detector, sam, min_box_score=0.0, min_mask_score=-np.inf,
                                 min_inside=0.0, cache_dir=tmp_path / "masks")
    reread.detector = None  # a cache hit must not need the detector
    assert np.array_equal(reread(sample, detail_for("red circle")).mask, dm.mask)
    # the mask feeds the metric like any other
    assert L.within_one_token(_grid(), dm.mask).shape == (81,)


def _grid():
    from vlmnb.engine.spans import Geometry, View

    boxes = np.array([[c * 10, r * 10, c * 10 + 10, r * 10 + 10] for r in range(9) for c in range(9)], float)
    return Geometry((90, 90), boxes, [View("image", 9, 9, np.arange(81).reshape(9, 9), (0, 0, 90, 90))])


def test_quality_filters_reject_with_a_reason(parts, sample):
    detector, sam = parts
    strict = G.TextPromptedMasks(detector, sam, min_box_score=0.0, min_mask_score=2.0, min_inside=0.0)
    dm = strict(sample, detail_for("blue square"))
    assert dm.mask is None and "SAM predicted IoU" in dm.note
    picky = G.TextPromptedMasks(detector, sam, min_box_score=2.0)
    assert "detector score" in picky(sample, detail_for("blue square")).note


def test_real_loaders_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotAvailable, match="hf download google/owlv2"):
        G.Detector.load("owlv2")
    with pytest.raises(FileNotFoundError, match="sam_vit_b_01ec64.pth"):
        G.load_sam(tmp_path / "nope.pth", model_type="vit_b")
    with pytest.raises(ValueError, match="unknown SAM model type"):
        G.load_sam(tmp_path / "nope.pth", model_type="vit_x")


def test_detector_loads_from_a_saved_folder(parts, sample, tmp_path):
    detector, _ = parts
    detector.model.save_pretrained(tmp_path / "owl")
    detector.processor.save_pretrained(tmp_path / "owl")
    loaded = G.Detector.load(str(tmp_path / "owl"), device="cpu")
    a, b = detector.detect(sample.image, "green triangle"), loaded.detect(sample.image, "green triangle")
    assert len(a) == len(b) and np.allclose([s for s, _ in a], [s for s, _ in b])
