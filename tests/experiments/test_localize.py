"""Localisation of fine details (chapter 3): finding details and their tokens, the
"within one token" rule, the metric on every family's token geometry, COCO masks from an
official-format annotation file, filters, and the measurement on a real tiny model."""
from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlmnb.experiments import localize as L
from vlmnb.engine import spans as S
from vlmnb.engine import tiny
from vlmnb.data import CocoResolver, Sample
from vlmnb.judge import score
from vlmnb.engine.spans import Geometry, View

FAMILIES = list(tiny.MODELS)


@functools.lru_cache(maxsize=None)
def built(family):
    return tiny.build(family, seed=0)


def noise(width, height, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8))


def grid_geometry(cols=4, rows=4, w=10.0, h=10.0, structure=0):
    """A single-view geometry of cols x rows tokens of w x h pixels, after ``structure`` NaN rows."""
    boxes = [[np.nan] * 4] * structure
    for r in range(rows):
        for c in range(cols):
            boxes.append([c * w, r * h, (c + 1) * w, (r + 1) * h])
    tokens = np.arange(structure, structure + rows * cols).reshape(rows, cols)
    view = View("image", rows, cols, tokens, (0, 0, cols * w, rows * h))
    return Geometry((int(cols * w), int(rows * h)), np.array(boxes, dtype=float), [view])


def brute_force_within(geometry, mask, tolerance=1.0):
    """The rule written the slow, obvious way: every mask pixel square, every token."""
    boxes = np.asarray(geometry.boxes, float)
    ys, xs = np.nonzero(mask)
    out = np.zeros(len(boxes), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        dx = np.maximum(np.maximum(xs - cx, cx - (xs + 1)), 0) / w
        dy = np.maximum(np.maximum(ys - cy, cy - (ys + 1)), 0) / h
        out[i] = np.min(np.hypot(dx, dy)) <= tolerance + 1e-9
    return out


# ----------------------------------------------------------------------------- details and tokens
def test_find_mentions_plurals_case_hyphens_and_head_noun():
    text = "Two Bagels on a plate, a man and two men, a T-shirt, cycling shoes; a category of cats."
    assert [text[s:e] for s, e in L.find_mentions(text, "bagel")] == ["Bagels"]
    assert [text[s:e] for s, e in L.find_mentions(text, "man")] == ["man", "men"]
    assert [text[s:e] for s, e in L.find_mentions(text, "t shirt")] == ["T-shirt"]
    # the full phrase is absent: its head noun is used
    assert [text[s:e] for s, e in L.find_mentions(text, "red cycling shoe")] == ["shoes"]
    # whole words only: "cat" is in "category" but only "cats" is a mention
    assert [text[s:e] for s, e in L.find_mentions(text, "cat")] == ["cats"]
    assert L.find_mentions(text, "a plate") == [(16, 21)]
    assert L.find_mentions(text, "giraffe") == []


def test_missed_objects_multiset_and_deduplicated_lists():
    toy = score(["red circle", "blue square", "red circle", "red circle"], ["red circle", "blue square"],
                [("red circle", "red circle"), ("blue square", "blue square")], "exact", dedupe=False)
    # the first mention of "red circle" is the matched one; the 2nd and 3rd are lost
    assert L.missed_objects(toy) == [("red circle", 1), ("red circle", 2)]
    llm = score(["man", "bagel", "Phone"], ["person", "phone"], [("man", "person"), ("phone", "phone")], "llm")
    assert L.missed_objects(llm) == [("bagel", 0)]


def sweep_frame(rows):
    return pd.DataFrame([{"model": "m", "image_id": i, "config": c, "metric": "description", "text": t}
                         for i, c, t in rows])


def test_fine_details_are_baseline_objects_lost_under_img_to_gen():
    frame = sweep_frame([
        ("a", "baseline", "a large red circle at the top, a small blue square at the left."),
        ("a", "img->gen all", "a large red circle at the top."),
        ("b", "baseline", "a small green triangle at the center."),
        ("b", "img->gen all", "a small green triangle at the center."),
        ("c", "baseline", "a large red circle at the top."),  # no knockout run: not a candidate
    ])
    details = L.fine_details(frame, judge="exact")
    assert details[["image_id", "detail", "occurrence"]].values.tolist() == [["a", "blue square", 0]]
    assert details.baseline_text.iloc[0].startswith("a large red circle")
    with pytest.raises(ValueError, match="img->gen"):
        L.fine_details(frame[frame.config == "baseline"], judge="exact")


def test_locate_ties_a_multi_token_plural_to_its_tokens():
    from vlmnb.engine.vlm import Generation, token_offsets

    _, processor = built("llava")
    tok = processor.tokenizer
    text_in = "there are two bicycles near a small dog and a bicycle"
    ids = tok(text_in, add_special_tokens=False)["input_ids"]
    text, offsets = token_offsets(tok, ids)
    gen = Generation(text=text, token_ids=ids, tokens=[text[s:e] for s, e in offsets], offsets=offsets, spans=None)
    first = L.locate(gen, "img", "bicycle", 0)
    start = text.index("bicycles")
    assert (first.start, first.end) == (start, start + len("bicycles")) and first.phrase == "bicycles"
    assert len(first.tokens) > 1  # the tiny BPE splits the word
    assert first.tokens == tuple(i for i, (s, e) in enumerate(offsets) if s < first.end and e > first.start)
    assert "".join(gen.tokens[i] for i in first.tokens).strip().endswith("bicycles")
    second = L.locate(gen, "img", "bicycle", 1)
    assert second.phrase == "bicycle" and second.start > first.end
    assert L.locate(gen, "img", "bicycle", 5).start == second.start  # more listings than mentions: the last
    assert L.locate(gen, "img", "giraffe") is None


def test_detail_steps_producing_and_reading_rows():
    assert L.detail_steps([3, 4], 10).tolist() == [3, 4]
    assert L.detail_steps([3, 4], 10, "reading").tolist() == [4, 5]
    assert L.detail_steps([8, 9], 10, "reading").tolist() == [9]  # the last token has no reading row
    with pytest.raises(ValueError, match="producing"):
        L.detail_steps([1], 3, "writing")


# ----------------------------------------------------------------------------- the rule
def test_within_one_token_on_hand_made_masks():
    g = grid_geometry(structure=1)  # token k of the grid is row k + 1 (row 0 is a marker)
    mask = np.zeros((40, 40), bool)
    mask[15, 15] = True  # one pixel inside grid cell (1, 1)
    near = L.within_one_token(g, mask)

    def cell(r, c):
        return 1 + 4 * r + c

    assert not near[0]  # structure token
    assert near[cell(1, 1)]
    # edge neighbours: centre (15, 5) is exactly 10 px = one token from the pixel square's top edge
    assert near[cell(0, 1)] and near[cell(1, 0)] and near[cell(2, 1)] and near[cell(1, 2)]
    # diagonal neighbours are farther than one token from a single pixel, and two cells away is out
    assert not near[cell(0, 0)] and not near[cell(2, 2)] and not near[cell(1, 3)]
    assert near.sum() == 5
    assert np.array_equal(near, brute_force_within(g, mask))
    # a mask filling cell (1, 1) reaches the diagonal neighbours' centres at exactly one token
    mask[10:20, 10:20] = True
    assert L.within_one_token(g, mask).sum() == 9
    # an empty mask is near nothing; a wrong-sized mask is an error
    assert not L.within_one_token(g, np.zeros((40, 40), bool)).any()
    with pytest.raises(ValueError, match="original-image pixels"):
        L.within_one_token(g, np.zeros((20, 20), bool))


def test_within_one_token_measures_in_each_tokens_own_size():
    # 20 x 10 px tokens: 20 px to the side is one token, 20 px downwards is two
    g = grid_geometry(cols=2, rows=4, w=20, h=10)
    mask = np.zeros((40, 40), bool)
    mask[0:10, 0:20] = True  # cell (0, 0)
    near = L.within_one_token(g, mask)
    assert near[0] and near[1] and near[2]  # (0,0), (0,1) beside it, (1,0) below it
    assert not near[4]  # (2, 0): centre 25 px below the mask's edge = 1.5 tokens
    assert np.array_equal(near, brute_force_within(g, mask))
    assert L.chance_level(g, mask) == pytest.approx(near.sum() / 8)


def test_localize_takes_the_peak_over_tokens_with_a_box():
    g = grid_geometry(structure=1)
    mask = np.zeros((40, 40), bool)
    mask[30:40, 30:40] = True  # cell (3, 3)
    att = np.full((3, 17), 0.01)
    att[0, 1 + 15] = 0.5   # layer 0 peaks on the object
    att[1, 1 + 0] = 0.5    # layer 1 peaks on the far corner
    att[2, 0] = 0.9        # layer 2: a structure token takes the most, ignored ...
    att[2, 1 + 10] = 0.2   # ... so the peak is cell (2, 2), diagonal to the object
    res = L.localize(g, mask, att)
    assert res["peak"].tolist() == [16, 1, 11]
    assert res["localized"].tolist() == [True, False, True]
    assert (res["peak_x"][0], res["peak_y"][0]) == (35.0, 35.0)
    assert res["chance"] == pytest.approx(4 / 16)  # (3,3) and its three neighbours
    with pytest.raises(ValueError, match="columns"):
        L.localize(g, mask, att[:, :5])


@pytest.mark.parametrize("family", FAMILIES)
def test_metric_on_each_familys_geometry(family):
    model, processor = built(family)
    prepared = S.prepare(model, processor, noise(56, 40), "describe the image")
    g = prepared.geometry
    W, H = g.image_size
    boxes = g.boxes
    has_box = np.isfinite(boxes).all(axis=1)
    # a known token of every view: the mask is that token's box, the peak on it is localised
    for view in g.views:
        token = int(view.token_indices[len(view.token_indices) // 2])
        x0, y0, x1, y1 = boxes[token]
        mask = np.zeros((H, W), bool)
        mask[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
        att = np.zeros((1, len(boxes)))
        att[0, token] = 1.0
        res = L.localize(g, mask, att)
        assert res["peak"][0] == token and res["localized"][0], (family, view.name)
    # the fast rule agrees with the brute-force one for a blob, on tiles and thumbnails alike
    yy, xx = np.mgrid[0:H, 0:W]
    blob = (xx - 0.7 * W) ** 2 + (yy - 0.3 * H) ** 2 < (0.12 * W) ** 2
    near = L.within_one_token(g, blob)
    assert np.array_equal(near, brute_force_within(g, blob)), family
    assert not near[~has_box].any()
    # chance is neither 0 nor 1: some tokens are within one token of the detail, some are not. A
    # whole-view token's unit is its view (Idefics2's learned queries: a quarter of the image at
    # best), so every token is near a blob off the centre; a blob in a corner leaves some out
    corner = (xx > 0.9 * W) & (yy < 0.1 * H)
    assert np.array_equal(L.within_one_token(g, corner), brute_force_within(g, corner)), family
    spatial = not any(v.whole_view for v in g.views)
    for mask in ([blob] if spatial else []) + [corner]:
        assert 0 < L.chance_level(g, mask) < 1


# ----------------------------------------------------------------------------- masks
def toy_sample(index=3):
    from vlmnb.data import toy_samples

    return toy_samples(index + 1)[index]


def make_detail(text, name, occurrence=0, image_id="img"):
    spans = L.find_mentions(text, name)
    s, e = spans[min(occurrence, len(spans) - 1)]
    return L.Detail(image_id, name, occurrence, s, e, (0,), text)


def test_toy_masks_follow_name_and_stated_cell():
    sample = toy_sample()
    scene = sample.meta["scene"]
    obj = scene.objects[0]
    text = f"a {obj.size} {obj.color} {obj.shape} at the {obj.cell}."
    dm = L.ToyMasks()(sample, make_detail(text, obj.name))
    assert dm.ok and np.array_equal(dm.mask, scene.masks[0])
    # a named object that is not drawn was hallucinated: no mask
    absent = next(f"{c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square")
                  if f"{c} {s}" not in {o.name for o in scene.objects})
    miss = L.ToyMasks()(sample, make_detail(f"a small {absent} at the top.", absent))
    assert miss.mask is None and "hallucinated" in miss.note
    with pytest.raises(ValueError, match="not a toy scene"):
        L.ToyMasks()(Sample("x", image=sample.image, masks={}), make_detail(text, obj.name))


RECT = [10.0, 10.0, 30.0, 10.0, 30.0, 20.0, 10.0, 20.0]  # x, y pairs: a 20 x 10 box


def test_coco_masks_from_an_official_annotation_file(tmp_path):
    ann = {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "coco_url": "http://x/7.jpg", "width": 48, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [RECT], "area": 200.0,
             "bbox": [10, 10, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [[36.0, 2.0, 44.0, 2.0, 44.0, 8.0, 36.0, 8.0]],
             "area": 48.0, "bbox": [36, 2, 8, 6], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 2, "segmentation": [[2.0, 24.0, 12.0, 24.0, 12.0, 30.0, 2.0, 30.0]],
             "area": 60.0, "bbox": [2, 24, 10, 6], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 2, "name": "bicycle", "supercategory": "vehicle"}],
    }
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(ann))
    resolver = CocoResolver(files=[path], ids=[7])
    sample = Sample("7", image=noise(48, 32), masks=resolver.masks(7), objects=resolver.objects(7))
    text = "two men stand beside their bikes and a dog"
    men = L.CocoMasks()(sample, make_detail(text, "men"))
    assert men.ok and "person" in men.note and "2 instance" in men.note
    # both person instances, nothing of the bicycle
    assert men.mask[15, 20] and men.mask[5, 40] and not men.mask[27, 5]
    bikes = L.CocoMasks()(sample, make_detail(text, "bikes"))
    assert bikes.ok and bikes.mask[27, 5] and not bikes.mask[15, 20]
    assert bikes.mask.sum() == pytest.approx(60, abs=20)
    dog = L.CocoMasks()(sample, make_detail(text, "dog"))
    assert dog.mask is None and "no annotated COCO category" in dog.note
    # a second source answers what COCO cannot; the first answer wins
    fallback = L.FirstOf(L.CocoMasks(), BoxMask((0, 0, 4, 4)))
    assert fallback(sample, make_detail(text, "dog")).source == "box"
    assert np.array_equal(fallback(sample, make_detail(text, "men")).mask, men.mask)
    none = L.FirstOf(L.CocoMasks(), L.CocoMasks())(sample, make_detail(text, "dog"))
    assert none.mask is None and none.note.count("no annotated COCO category") == 2
    # the metric works on these masks through a geometry of the same image size
    g = grid_geometry(cols=6, rows=4, w=8, h=8)
    assert L.within_one_token(g, men.mask).sum() > 0


def test_mask_source_by_name():
    assert isinstance(L.mask_source("auto", images="toy"), L.ToyMasks)
    assert isinstance(L.mask_source("auto", images="coco"), L.CocoMasks)
    with pytest.raises(ValueError, match="unknown mask source"):
        L.mask_source("magic")


# ----------------------------------------------------------------------------- filters and windows
def measured_frame():
    """Three details in two images; per layer 0/1 outcomes chosen by hand."""
    outcomes = {("i1", "dog"): [0, 1, 1, 0], ("i1", "cat"): [0, 1, 0, 0], ("i2", "cup"): [1, 1, 1, 1]}
    rows = []
    for (image_id, detail), values in outcomes.items():
        common = {"model": "m", "image_id": image_id, "config": L.CONFIG, "detail": detail, "occurrence": 0,
                  "mask_score": np.nan, "mask_area": 0.8 if detail == "cup" else 0.1}
        rows.append({**common, "metric": "chance", "value": 0.2})
        rows += [{**common, "metric": "localized", "layer": layer, "value": float(v)} for layer, v in enumerate(values)]
    rows.append({"model": "m", "image_id": "i2", "config": L.CONFIG, "detail": "lamp", "occurrence": 0,
                 "metric": "rejected", "text": "no mask"})
    return pd.DataFrame(rows)


def test_select_applies_reject_list_and_area_filter(tmp_path):
    frame = measured_frame()
    path = tmp_path / "rejected.csv"
    path.write_text("# reviewed\nimage_id,detail,reason\ni1,cat#0,mask covers the sofa\n")
    kept, dropped = L.select(frame, reject=path, max_area=0.5)
    assert sorted(kept.detail.unique()) == ["dog"]
    reasons = dict(zip(dropped.detail, dropped.reason))
    assert reasons["cat"] == "mask covers the sofa" and "80%" in reasons["cup"] and reasons["lamp"] == "no mask"
    # a template lists every detail commented out: loading it rejects nothing
    template = L.RejectList.write_template(frame[frame.metric == "chance"], tmp_path / "t.csv")
    assert len(L.RejectList.load(template)) == 0 and "i1,dog#0" in template.read_text()
    assert len(L.RejectList.load(tmp_path / "missing.csv")) == 0


def test_accuracy_by_layer_window_and_claims():
    kept, _ = L.select(measured_frame())
    by_layer = L.accuracy_by_layer(kept)
    assert by_layer["mean"].tolist() == pytest.approx([1 / 3, 1.0, 2 / 3, 1 / 3])
    assert (by_layer.ci_low <= by_layer["mean"]).all() and (by_layer["mean"] <= by_layer.ci_high).all()
    by_window = L.accuracy_by_window(kept, 4, size=2)
    assert by_window.window.tolist() == ["0-1", "2-3"]
    # per detail first, then over details: dog (0.5, 0.5), cat (0.5, 0), cup (1, 1)
    assert by_window["mean"].tolist() == pytest.approx([2 / 3, 0.5])
    assert L.layer_windows(10, 4) == [(0, 3), (4, 7), (8, 9)]
    assert L.window_size(80) == 10 and L.window_size(32) == 4 and L.window_size(6) == 1
    ch = L.chance(kept)
    assert ch["mean"] == pytest.approx(0.2) and ch["n"] == 3
    claims = L.localization_claims(by_window, ch, 4)
    # above chance (the best window's interval lies above 0.2), but the best window is the first
    assert claims.held.tolist()[:2] == [bool(by_window.ci_low.iloc[0] > 0.2), False]
    assert "0-1" in claims.ours.iloc[1]


# ----------------------------------------------------------------------------- measuring
class BoxMask:
    """A fixed rectangular mask for every detail (a real mask source, just a simple one)."""

    name = "box"

    def __init__(self, box):
        self.box = box

    def __call__(self, sample, detail):
        W, H = sample.image.size
        mask = np.zeros((H, W), bool)
        x0, y0, x1, y1 = self.box
        mask[y0:y1, x0:x1] = True
        return L.DetailMask(mask, self.name, "fixed box")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_measure_on_a_tiny_tiled_model(tmp_path, family):
    import vlmnb
    from vlmnb.engine.vlm import VLM
    from vlmnb.engine.record import Record

    model, processor = built(family)
    vlm = VLM(model, processor, name=f"tiny-{family}")
    sample = Sample("s0", image=noise(56, 40))
    inp = vlm.prepare(sample.image)
    gen = vlm.generate(inp, max_new_tokens=12, record=Record(fractions=False, image_rows=True))
    import re

    word = re.findall(r"[A-Za-z0-9]+", gen.text)[0]  # a whole word of the babble stands in for a detail
    details = pd.DataFrame([{"image_id": "s0", "detail": word, "occurrence": 0, "baseline_text": gen.text,
                             "knocked_text": ""},
                            {"image_id": "s0", "detail": "zebra", "occurrence": 0, "baseline_text": gen.text,
                             "knocked_text": ""}])
    store = vlmnb.ResultStore(tmp_path / "store", {"family": family})
    out = L.measure(vlm, [sample], details, BoxMask((30, 5, 50, 25)), store, max_new_tokens=12,
                    map_layers=[0, 1], progress=False)
    assert set(out[out.metric == "localized"].rows) == {"producing", "reading"}
    loc = out[(out.metric == "localized") & (out.rows == "producing")].sort_values("layer")
    assert loc.layer.tolist() == list(range(vlm.num_layers))
    detail = L.locate(gen, "s0", word)
    # the same numbers from the recording of the first generation (greedy: identical run)
    steps = L.detail_steps(detail.tokens, gen.recording.n_steps)
    mask = BoxMask((30, 5, 50, 25))(sample, detail).mask
    expected = L.localize(inp.geometry, mask, gen.recording.image_rows[:, steps].mean(axis=1))
    assert loc.peak_token.tolist() == expected["peak"].tolist()
    assert loc.value.tolist() == expected["localized"].astype(float).tolist()
    assert np.isfinite(inp.geometry.boxes[loc.peak_token.to_numpy().astype(int)]).all()
    assert out[out.metric == "chance"].value.tolist() == pytest.approx([expected["chance"]] * 2)
    # "reading" rows: the steps whose query is the detail's token
    reading = out[(out.metric == "localized") & (out.rows == "reading")].sort_values("layer")
    steps = L.detail_steps(detail.tokens, gen.recording.n_steps, "reading")
    if len(steps):
        shifted = L.localize(inp.geometry, mask, gen.recording.image_rows[:, steps].mean(axis=1))
        assert reading.peak_token.tolist() == shifted["peak"].tolist()
    assert out[out.metric == "rejected"].detail.tolist() == ["zebra"]
    assert len(out[out.metric == "map"].attention_map.iloc[0]) == len(inp.geometry.boxes)
    # resumable: a second call finds the unit done and adds nothing
    again = L.measure(vlm, [sample], details, BoxMask((0, 0, 1, 1)), store, max_new_tokens=12, progress=False)
    assert len(again) == len(out)


def test_paper_table_and_closing_note_carry_the_numbers():
    kept, _ = L.select(measured_frame())
    by_window = L.accuracy_by_window(kept, 4, size=2)
    ch = L.chance(kept)
    table = L.paper_table(by_window, ch, "toy", 4, n_details=3, n_images=2, size=2)
    assert table.model.tolist() == ["InternVL2-76B (paper)", "LLaVA-1.5-7B (paper)", "toy (this run)"]
    ours = table.iloc[-1]
    assert ours["best window"] == "0-1" and ours["accuracy at best window"].startswith("0.67")
    assert ours["chance"] == "0.20" and table.iloc[0]["details"] == 231
    note = L.closing_note(by_window, ch, "toy", 3, 2)
    assert "0-1: 0.67" in note and "2-3: 0.50" in note and "3.3 times the chance level of 0.20" in note
    assert "73%" in note
    assert "no fine detail" in L.closing_note(by_window.iloc[0:0], ch, "toy", 0, 2)


def test_figures_show_the_windows_chance_and_peak():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import BarContainer

    from vlmnb.views import plots

    kept, _ = L.select(measured_frame())
    by_window = L.accuracy_by_window(kept, 4, size=2)
    fig = plots.localization_by_layer(L.accuracy_by_layer(kept), by_window, L.chance(kept), 4,
                                      paper={"peak_accuracy": 0.73, "mid_layers": (20, 40), "layers": 80})
    ax = fig.axes[0]
    bars = [p for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]
    assert sorted(round(b.get_height(), 6) for b in bars) == sorted(round(v, 6) for v in by_window["mean"])
    labels = ax.get_legend_handles_labels()[1]
    assert "chance (0.20)" in labels and any("paper: peak ~73%" in t for t in labels)
    # gallery: the cross sits on the centre of the peak token's box
    g = grid_geometry()
    values = np.zeros(16)
    values[6] = 1.0  # cell (1, 2): box x 20-30, y 10-20
    mask = np.zeros((40, 40), bool)
    mask[10:20, 20:30] = True
    item = {"image": noise(40, 40), "geometry": g, "mask": mask, "map": values, "phrase": "dog", "image_id": "i"}
    fig = plots.detail_gallery([item, item, item], ncols=2)
    assert len(fig.axes) == 8 and not fig.axes[-1].axison
    crosses = [ln for ln in fig.axes[1].lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and (crosses[0].get_xdata()[0], crosses[0].get_ydata()[0]) == (25.0, 15.0)
    html = plots.detail_text_html([{**item, "text": "a dog & a cat", "span": (2, 5)}])
    assert ">dog</span>" in html and "&amp;" in html


def test_replay_records_the_same_rows_as_generation():
    """A word-level model (the toy's architecture, random weights): the baseline text is
    tokenised back to the generated ids, and one forward pass records the generation's rows."""
    from vlmnb.data import toy_samples
    from vlmnb.engine.vlm import VLM
    from vlmnb.engine.record import Record
    from vlmnb.toy.model import build_model, build_processor

    vlm = VLM(build_model(seed=1), build_processor(), name="toy-random")
    inp = vlm.prepare(toy_samples(1)[0].image)
    gen = vlm.generate(inp, max_new_tokens=10, record=Record(fractions=False, image_rows=True))
    replay = L.replay(vlm, inp, gen.text)
    assert replay is not None and replay.text == gen.text
    n = len(replay.token_ids)
    assert replay.token_ids == gen.token_ids[:n]
    assert np.allclose(replay.recording.image_rows, gen.recording.image_rows[:, :n], atol=1e-5)
    # a text the model would not have written greedily is not replayed
    assert L.replay(vlm, inp, "a large red circle at the top left.") is None or gen.text.startswith("a large red")


def test_study_is_chapter_threes_steps(tmp_path):
    from vlmnb.data import toy_samples
    from vlmnb.data.store import ResultStore
    from vlmnb.engine.vlm import load
    from vlmnb.experiments import sweep

    vlm = load("toy")
    samples = toy_samples(8, seed=1)
    windows = []

    def detail_store(window):
        windows.append(window)
        return ResultStore.in_dir(str(tmp_path / "details"), {"w": list(window)})

    sweep_store = ResultStore.in_dir(str(tmp_path / "sweep"), {"s": 1})
    got = L.study(vlm, samples, sweep_store, detail_store, judge="exact", masks="toy", images="toy", max_new_tokens=24)
    assert windows == [got.map_window] and got.detail_store.params == {"w": list(got.map_window)}
    # by hand, as the chapter's cells do it
    frame = sweep.run(vlm, samples, [sweep.Config("baseline"), sweep.Config("img->gen")], sweep_store, max_new_tokens=24)
    details = L.fine_details(frame, judge="exact")
    assert got.details.equals(details) and len(details) > 0
    window, _ = L.map_window(vlm.name, frame, vlm.num_layers)
    assert got.map_window == tuple(window)
    kept, _ = L.select(got.measured)
    assert got.kept.equals(kept)
    assert got.by_window.equals(L.accuracy_by_window(kept, vlm.num_layers, "auto", rows="producing"))
    assert set(got.measured.rows.dropna()) >= {"producing", "reading"}   # both row choices, one run
    assert got.claims(vlm.num_layers).equals(L.claims(got.by_window, got.chance, vlm.num_layers))
