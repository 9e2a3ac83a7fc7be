"""The "Supported models" page's tables, generated from the registry and the invariant checks."""
from __future__ import annotations

import pytest

from vlmnb.engine import families, invariants
from vlmnb.experiments import paper
from vlmnb.views import supported


def test_image_tokens_at_the_reference_settings():
    # LLaVA-1.5: one 336 px view of 14 px patches, whatever the picture's shape
    assert supported.image_tokens("llava") == paper.MODELS["LLaVA-1.5-7B"]["image_tokens"] == 576
    assert supported.image_tokens("llava", (300, 1000)) == 576
    # Gemma3: pooled to mm_tokens_per_image
    assert supported.image_tokens("gemma3") == 256
    # Qwen2-VL: a dynamic grid, so the count follows the picture's size
    assert supported.image_tokens("qwen2_vl", (1280, 960)) > supported.image_tokens("qwen2_vl") > 0


def test_paper_families_come_first_then_registry_order():
    order = supported.ordered()
    assert sorted(order) == sorted(families.NAMES)
    paper_families = [n for n in families.NAMES
                      if any(set(ids) & set(families.get(n).hub_ids) for ids in paper.HUB_IDS.values())]
    assert "llava" in paper_families and order[:len(paper_families)] == sorted(
        paper_families, key=lambda n: supported.paper_rank(families.get(n)))
    rest = order[len(paper_families):]
    assert rest == [n for n in families.NAMES if n in rest]
    with pytest.raises(ValueError, match="unknown families.*blip"):
        supported.ordered(["llava", "blip"])


def test_overview_and_checks_for_two_families():
    overview, checks = supported.supported_models(["gemma3", "llava"], progress=False)
    assert list(overview.index) == ["llava", "gemma3"]
    assert list(checks.columns) == list(invariants.NAMES)
    assert (checks == supported.MARKS["pass"]).all().all()
    assert (overview["invariants passed"] == f"{len(invariants.NAMES)}/{len(invariants.NAMES)}").all()
    assert overview.loc["llava", "non-causal image attention"] == "none (causal)"
    assert "both directions" in overview.loc["gemma3", "non-causal image attention"]
    assert overview.loc["llava", "example checkpoints"].startswith(paper.MODELS["LLaVA-1.5-7B"]["hub_id"])
    quick, none = supported.supported_models(["llava"], run_checks=False, progress=False)
    assert "invariants passed" not in quick.columns and none.empty


def test_outcomes_table_shows_status_and_measurement():
    table = supported.outcomes_table([invariants.Outcome("own_generate", "pass", "8 tokens identical"),
                                      invariants.Outcome("geometry", "fail", "tokens away from the paint changed")])
    assert table.loc["geometry", "status"] == supported.MARKS["fail"]
    assert table.loc["own_generate", "measured"] == "8 tokens identical"
    assert list(supported.statements().index) == list(invariants.NAMES)



def test_invariant_matrix_draws_and_records_each_status():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from vlmnb.views import figure_data

    checks = pd.DataFrame({"own_generate": ["\u2713", "\u2717"], "geometry": ["n/a", "\u2713"]},
                          index=pd.Index(["llava", "gemma3"], name="family"))
    figure_data.clear()
    fig = supported.invariant_matrix(checks)
    (name, table), = figure_data.drawn()
    assert name == "invariant_matrix"
    assert table.set_index(["family", "invariant"])["status"].to_dict() == {
        ("llava", "own_generate"): "pass", ("llava", "geometry"): "n/a",
        ("gemma3", "own_generate"): "fail", ("gemma3", "geometry"): "pass"}
    drawn = fig.axes[0].images[0].get_array()
    assert drawn.tolist() == [[0, 2], [1, 0]]  # pass, n/a / fail, pass
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["llava", "gemma3"]
