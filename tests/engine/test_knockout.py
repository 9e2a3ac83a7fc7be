"""Knockout specs: layer selections, position resolution, composition, per-layer sources."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vlmnb
from vlmnb.engine.knockout import Knockout, KnockoutPlan, RowLayout, resolve_layers
from vlmnb.engine.spans import Spans


@pytest.fixture(scope="module")
def vlm(tiny_vlm):
    return tiny_vlm(seed=1)


def test_layer_selections():
    assert resolve_layers("all", 5) == (0, 1, 2, 3, 4)
    assert resolve_layers(vlmnb.from_layer(3), 5) == (3, 4)
    assert resolve_layers(vlmnb.outside(1, 2), 5) == (0, 3, 4)
    assert resolve_layers([4, 0, 4], 5) == (0, 4)
    assert resolve_layers(range(2), 5) == (0, 1)
    assert resolve_layers(np.int64(2), 5) == (2,)
    with pytest.raises(ValueError, match="layers 0..4"):
        resolve_layers(vlmnb.from_layer(5), 5)
    with pytest.raises(ValueError, match="must not exceed"):
        resolve_layers(vlmnb.outside(3, 1), 5)
    with pytest.raises(TypeError, match="integers"):
        vlmnb.from_layer(1.5)
    with pytest.raises(TypeError):
        resolve_layers(None, 5)


def _spans():
    return Spans(system=np.arange(0, 2), image=np.arange(2, 6), query=np.arange(6, 8), generated=np.arange(0))


def test_plan_blocks_exactly_src_keys_for_dst_queries():
    row = RowLayout(spans=_spans(), pad=0, prompt_length=8)
    plan = KnockoutPlan([[Knockout("image", ("query", "generated"), vlmnb.from_layer(1))]], [row], 3, 11)
    assert plan.layers[0] is None and plan.layers[1] is plan.layers[2]  # shared by content
    blocked = plan.layers[1].blocked(slice(0, 11), slice(0, 11), "cpu")[0, 0].numpy()
    expected = np.zeros((11, 11), bool)
    expected[np.ix_(np.arange(6, 11), np.arange(2, 6))] = True
    np.testing.assert_array_equal(blocked, expected)
    # decode step: one query at position 9 against keys 0..9
    step = plan.layers[2].blocked(slice(9, 10), slice(0, 10), "cpu")[0, 0, 0].numpy()
    np.testing.assert_array_equal(step, expected[9, :10])
    assert plan.layers[1].touches(6, 7) and not plan.layers[1].touches(0, 6)


def test_plan_left_padding_shifts_positions_and_composes():
    row = RowLayout(spans=_spans(), pad=3, prompt_length=8)
    kos = [Knockout("image", "generated"), Knockout([0], "query", [0])]
    plan = KnockoutPlan([kos], [row], 2, 13)
    b0 = plan.layers[0].blocked(slice(0, 13), slice(0, 13), "cpu")[0, 0].numpy()
    b1 = plan.layers[1].blocked(slice(0, 13), slice(0, 13), "cpu")[0, 0].numpy()
    assert b0[11:, 5:9].all() and not b0[11:, :5].any() and not b0[11:, 9:].any()  # image shifted by 3
    assert b0[9:11, 3].all() and b0.sum() == 2 * 4 + 2  # position 0 (padded 3) from the query, layer 0 only
    assert b1.sum() == 2 * 4


def test_per_layer_sources_block_different_keys(vlm, make_input):
    inp = make_input()
    image = inp.spans.image
    keep = {0: image[:4], 1: image[:8], 2: image[:12], 3: image}  # layer 3 keeps every image token
    drop = {layer: np.setdiff1d(image, kept) for layer, kept in keep.items()}
    out = vlm.generate(inp, 4, knockout=Knockout(src=drop, dst="generated"),
                       record=vlmnb.Record(image_rows=True))
    rows = out.recording.image_rows  # (layers, steps, n_image); step 0 is the query row: untouched
    for layer, kept in keep.items():
        dropped = np.isin(image, drop[layer])
        assert np.all(rows[layer, 1:, dropped.nonzero()[0]] == 0)
        assert np.all(rows[layer, 1:][:, ~dropped] > 0)
        assert np.all(rows[layer, 0] > 0)
    # an explicit positions knockout equals the same knockout spelled with a span name
    by_name = vlm.forward(inp, out.token_ids, knockout=Knockout("image", "generated", [1, 2]))
    by_pos = vlm.forward(inp, out.token_ids, knockout=Knockout(image, "generated", [1, 2]))
    assert torch.equal(by_name, by_pos)


def test_composed_knockouts_equal_their_union(vlm, make_input):
    inp = make_input()
    cont = [10, 11, 12]
    a = Knockout("image", ("query", "generated"), [0, 1])
    b = Knockout("system", "generated", [0, 1])
    union_pos = Knockout(np.concatenate([inp.spans.system, inp.spans.image]), "generated", [0, 1])
    both = vlm.forward(inp, cont, knockout=[a, b])
    # nested contexts add up to the same thing
    with vlm.intervene(knockout=a):
        nested = vlm.forward(inp, cont, knockout=b)
    assert torch.equal(nested, both)
    alone = vlm.forward(inp, cont, knockout=[a, union_pos])
    assert torch.equal(alone, both)
    assert not torch.equal(vlm.forward(inp, cont, knockout=a), both)


def test_knockout_spec_validation_and_repr():
    with pytest.raises(TypeError, match="only src"):
        Knockout(dst={0: [1]})
    with pytest.raises(ValueError, match="empty"):
        Knockout(src={})
    with pytest.raises(ValueError, match="non-negative"):
        Knockout([-1, 2])
    with pytest.raises(TypeError, match="per-layer entries"):
        Knockout(src={0: "image"})
    with pytest.raises(TypeError, match="vlmnb.Knockout"):
        vlmnb.engine.knockout.as_knockout_list(["image"])
    ko = Knockout(src={3: [1, 2]}, dst=("query", "generated"), layers=vlmnb.from_layer(2))
    assert ko.layer_indices(6) == (3,)
    assert "1 layers" in repr(ko) and "from_layer" in repr(ko).replace("FromLayer", "from_layer")
    assert Knockout(layers=(i for i in range(2))).layers == (0, 1)


def test_plan_rejects_position_beyond_sequence():
    row = RowLayout(spans=_spans(), pad=0, prompt_length=8)
    with pytest.raises(ValueError, match="beyond the sequence"):
        KnockoutPlan([[Knockout([20], "generated")]], [row], 2, 12)


def test_names_as_list_and_empty_positions():
    assert Knockout(["query", "generated"]).src == ("query", "generated")
    with pytest.raises(ValueError, match="empty"):
        Knockout(src=[], dst="generated")
    with pytest.raises(ValueError, match="empty"):
        Knockout(src="image", dst=np.array([], dtype=int))
    assert Knockout(src={0: []}).layer_indices(3) == (0,)  # per-layer entries may be empty (keep all)
