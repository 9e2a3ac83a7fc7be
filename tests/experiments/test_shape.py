"""Every experiment has one shape (run / score / claims, former names kept), runs on the store's one
resumable loop, and takes the paper's numbers from paper.py."""
from __future__ import annotations

import os

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmnb.data import toy_samples  # noqa: E402
from vlmnb.data.store import ResultStore, list_parts  # noqa: E402
from vlmnb.engine import batched, tiny  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402
from vlmnb.experiments import fractions, localize, paper, reprompt, sweep, units  # noqa: E402


# ----------------------------------------------------------------------------- one shape
@pytest.mark.parametrize("module, names", [
    (fractions, ["run", "claims"]),
    (sweep, ["run", "score", "claims"]),
    (localize, ["run", "claims"]),
    (reprompt, ["run", "score", "claims"]),
])
def test_every_experiment_has_run_score_and_claims(module, names):
    for name in names:
        assert callable(getattr(module, name)), f"{module.__name__}.{name}"


def test_former_names_are_the_new_functions():
    assert localize.measure is localize.run
    assert localize.localization_claims is localize.claims
    assert reprompt.reprompt_claims is reprompt.claims
    # the analysis moved to localization_stats but stays reachable from localize (chapter 3)
    for name in ("select", "accuracy_by_layer", "accuracy_by_window", "chance", "paper_table", "closing_note",
                 "rows_comparison", "map_window", "window_size", "layer_windows", "ROW_CHOICES",
                 "mask_source", "ToyMasks", "RejectList", "gallery_items", "fine_details", "find_mentions"):
        assert hasattr(localize, name), name


def _summary(rows):
    return pd.DataFrame([{**r, "ci_low": r["mean"] - 0.05, "ci_high": r["mean"] + 0.05, "n": 8} for r in rows])


def test_sweep_claims_picks_knockout_or_pruning_by_the_summary():
    all_summary = _summary([{"kind": "img->gen", "scope": "all", "mean": 0.4},
                            {"kind": "img->query", "scope": "all", "mean": 0.0},
                            {"kind": "img->gen", "scope": "outside", "mean": 0.8}])
    from_summary = _summary([{"kind": "img->gen", "start": s, "mean": m} for s, m in [(2, 0.1), (4, 0.6), (6, 0.8)]])
    ko = sweep.claims(all_summary, from_summary, 16, (4, 8))
    assert ko.equals(sweep.knockout_claims(all_summary, from_summary, 16, (4, 8)))
    assert "F1 ~0.40 (InternVL2-76B)" in ko.paper.tolist() and "F1 ~0" in ko.paper.tolist()
    assert "F1 0.75-0.81 (window 20-40 of 80)" in ko.paper.tolist()
    assert "sharp rise between layers 20 and 40 of 80" in ko.paper.tolist()
    # what depends on the model (its window, the paper's layers at its depth) is in its value, so
    # that the claims of models of any depth line up row by row (views.side_by_side.claims)
    assert "F1 >= 0.5 from layer 4 (the paper's layers at this depth: 4-8 of 16)" in ko.ours.tolist()
    assert "0.80 [0.75, 0.85] (window 4-8 of 16)" in ko.ours.tolist()
    other = sweep.knockout_claims(all_summary, from_summary, 30, (7, 14))
    assert other.claim.tolist() == ko.claim.tolist() and other.paper.tolist() == ko.paper.tolist()
    k_summary = _summary([{"k": k, "mean": m} for k, m in [(0.01, 0.5), (0.05, 0.85), (0.5, 0.9)]])
    pr = sweep.claims(k_summary, 256)
    assert pr.equals(sweep.pruning_claims(k_summary, 256))
    assert pr.paper.iloc[0] == "F1 > 0.8 with a few % (LLaVA-1.5: 5% = 13 of 256 tokens, Fig. A7)"


# ----------------------------------------------------------------------------- the paper's numbers
def test_the_papers_layer_numbers_scale_as_before():
    for n in range(1, 130):
        assert paper.rise_layers(n) == (round(n * 20 / 80), round(n * 40 / 80))
    assert paper.scale_layers((20, 40), 32) == (8, 16)
    assert sweep.PAPER_WINDOWS == {"OpenGVLab/InternVL2-Llama3-76B": (20, 40), "llava-hf/llava-1.5-7b-hf": (4, 20),
                                   "liuhaotian/llava-v1.5-7b": (4, 20)}
    assert paper.model_for("liuhaotian/llava-v1.5-7b") == "LLaVA-1.5-7B" and paper.model_for("toy") is None
    assert fractions.layer_bands(80) == {"early": (0, 5), "pre-middle": (6, 19), "middle": (20, 40), "late": (41, 79)}
    assert localize.window_size(80) == 10 and localize.window_size(32) == 4
    assert localize.map_window("LLaVA-1.5-7B", None, 32)[0] == (16, 24)


def test_reprompt_claims_quote_table1():
    scores = pd.DataFrame([{"method": m, "category": "c", "acc": 50.0, "tokens": 10.0}
                           for m in ["Naive", "Query + K=5%", "Query + K=2%", "Query only", "K=2% only", "Describe-to-LLM"]])
    assert reprompt.claims(scores).paper.tolist() == [
        "ACC 81.5 vs 84.8 (96%)", "201 vs 1695 (8.4x fewer)", "ACC 61.0 and 62.4 vs 77.2", "ACC 73.2 vs 81.5"]


def test_mentions_use_the_shared_noun_forms():
    text = "two calves, a man and three oxen"
    assert localize.find_mentions(text, "calf") == [(4, 10)]
    assert localize.find_mentions(text, "men") == [(14, 17)]
    assert localize.find_mentions(text, "ox") == [(28, 32)]


# ----------------------------------------------------------------------------- the loop
def test_run_units_skips_done_units_keeps_the_order_and_writes_a_part_per_image(tmp_path):
    keys = [units.key("m", image, config) for image in ("a", "b") for config in ("x", "y")]
    computed = []

    def compute(model, image_id, config):
        computed.append((image_id, config))
        return [{"metric": "n", "value": float(len(computed))}]

    with ResultStore(tmp_path / "s", {"t": 1}) as store:
        store.put(keys[1], [{"metric": "n", "value": 0.0}])
        store.flush()
        units.run_units(store, keys, compute, progress=False, part_per="image_id")
        assert computed == [("a", "x"), ("b", "x"), ("b", "y")]
        assert len(list_parts(store.path)) == 3  # the unit put first, then one part per image
        units.run_units(store, keys, compute, progress=False, part_per="image_id")
        assert len(computed) == 3
        frame = store.frame()
    assert list(frame.columns[:3]) == ["model", "image_id", "config"]
    assert list(zip(frame.image_id, frame.config)) == [("a", "y"), ("a", "x"), ("b", "x"), ("b", "y")]


@pytest.fixture(scope="module")
def vlm():
    model, processor = tiny.build("llava")
    return VLM(model, processor, name="tiny-llava")


def test_fractions_and_sweep_resume_from_the_store(vlm, tmp_path):
    samples = toy_samples(2, seed=0)
    with ResultStore(tmp_path / "f", {"t": 1}) as store:
        first = fractions.run(vlm, samples[:1], store, max_new_tokens=3, progress=False)
        both = fractions.run(vlm, samples, store, max_new_tokens=3, progress=False)
        assert len(store) == 2 and both.iloc[:len(first)].equals(first)
    configs = [sweep.Config("baseline"), sweep.Config("img->gen"), sweep.Config("top-k", k=0.5)]
    frames = {}
    for batch in (False, True):
        with ResultStore(tmp_path / f"s{batch}", {"t": 1}) as store:
            sweep.run(vlm, samples[:1], configs, store, max_new_tokens=3, progress=False, batch=batch)
            frames[batch] = sweep.run(vlm, samples, configs, store, max_new_tokens=3, progress=False, batch=batch)
            assert len(store) == 2 * len(configs)
            assert len(list_parts(store.path)) >= 2  # a part per image (top-k reads the store in between)
    texts = {b: sweep.descriptions(f).text.tolist() for b, f in frames.items()}
    assert texts[True] == texts[False] and len(texts[True]) == 2 * len(configs)


class _Interrupt(Exception):
    pass


def test_an_interrupted_batched_sweep_resumes_without_loss_or_duplicates(vlm, tmp_path, monkeypatch):
    samples = toy_samples(2, seed=1)
    configs = [sweep.Config("baseline"), sweep.Config("img->gen"), sweep.Config("img->query"),
               sweep.Config("top-k", k=0.5)]
    run = dict(max_new_tokens=3, progress=False, max_batch_rows=2)
    with ResultStore(tmp_path / "whole", {"t": 1}) as store:
        whole = sweep.run(vlm, samples, configs, store, **run)
    original, calls = batched.generate_rows, []

    def failing(*args, **kwargs):  # a crash in the second batch of the second image (3 batches each)
        calls.append(1)
        if len(calls) == 5:
            raise _Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(batched, "generate_rows", failing)
    with pytest.raises(_Interrupt), ResultStore(tmp_path / "cut", {"t": 1}) as store:
        sweep.run(vlm, samples, configs, store, **run)
    monkeypatch.undo()
    partial = ResultStore.open(tmp_path / "cut")
    assert len(partial) == len(configs) + 2  # the first image, and the second's first batch
    partial.close()
    with ResultStore(tmp_path / "cut", {"t": 1}) as store:
        resumed = sweep.run(vlm, samples, configs, store, **run)
    cols = ["image_id", "config", "metric", "layer", "token", "text", "value"]
    order = ["image_id", "config", "metric", "layer", "token"]
    assert not resumed.duplicated(order).any()
    assert (resumed[cols].sort_values(order).reset_index(drop=True)
            .equals(whole[cols].sort_values(order).reset_index(drop=True)))


def test_knockout_study_is_chapter_twos_steps(tmp_path):
    from vlmnb.engine.vlm import load

    vlm = load("toy")
    samples = toy_samples(2, seed=3)
    store = ResultStore.in_dir(str(tmp_path), {"t": 1})
    study = sweep.knockout_study(vlm, samples, store, stride=4, judge="exact", max_new_tokens=12)
    a, b = study.window
    assert 1 <= a <= b < vlm.num_layers and study.judge_name == "exact"
    assert set(study.summary.scope) == {"all", "outside"} and set(study.summary.kind) == set(sweep.KINDS)
    assert sorted(set(study.from_summary.start)) == [0, 4]          # all layers = from layer 0, then stride 4
    by_hand = sweep.score(study.frame, sweep.knockout_configs(vlm.num_layers, stride=4, window=study.window),
                          judge="exact")
    assert by_hand.f1.tolist() == study.scores.f1.tolist()
    assert study.claims(vlm.num_layers).equals(
        sweep.knockout_claims(study.summary, study.from_summary, vlm.num_layers, study.window))
