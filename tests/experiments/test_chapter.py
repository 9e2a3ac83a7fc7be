"""The chapters' shared setup: images and a result store keyed like the chapters always keyed it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from vlmnb.data.store import ResultStore
from vlmnb.experiments.chapter import chapter_inputs, store_for

VLM = SimpleNamespace(name="toy", revision="abc123")  # what the key reads of a loaded model


def test_store_key_is_the_one_the_chapters_wrote_by_hand(tmp_path):
    """Same folder as the explicit dict the notebooks built before: existing stores are reused."""
    samples, store = chapter_inputs(VLM, "02_knockout", str(tmp_path), "toy", 3, 7, prompt="describe the image",
                                    max_new_tokens=8)
    by_hand = ResultStore.in_dir(f"{tmp_path}/02_knockout", dict(
        model="toy", revision="abc123", images="toy", n_images=3, prompt="describe the image",
        max_new_tokens=8, seed=7))
    assert store.path == by_hand.path and store.params == by_hand.params
    assert len(samples) == 3


def test_every_setting_and_the_revision_change_the_store(tmp_path):
    base = store_for(VLM, "05_reprompting", str(tmp_path), "toy", n_images=2, seed=0, ks=[0.05])
    assert base.path.parent.name == "05_reprompting" and base.path.name.startswith("run-")
    others = [store_for(VLM, "05_reprompting", str(tmp_path), "toy", n_images=2, seed=0, ks=[0.02]),
              store_for(SimpleNamespace(name="toy", revision="def456"), "05_reprompting", str(tmp_path), "toy",
                        n_images=2, seed=0, ks=[0.05]),
              store_for(VLM, "05_reprompting", str(tmp_path), "toy", name="details", n_images=2, seed=0, ks=[0.05])]
    assert len({base.path, *(o.path for o in others)}) == 4


def test_seed_draws_other_toy_scenes(tmp_path):
    a, _ = chapter_inputs(VLM, "01", str(tmp_path), "toy", 2, 0)
    b, _ = chapter_inputs(VLM, "01", str(tmp_path), "toy", 2, 1)
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))


def test_run_on_runs_each_model_with_its_own_store(tmp_path):
    from vlmnb.engine.tiny import save as save_tiny
    from vlmnb.experiments import fractions
    from vlmnb.experiments.chapter import run_on

    tiny = save_tiny("qwen2_vl", tmp_path / "tiny-qwen2-vl")
    calls = []

    def run(vlm, samples, store):
        calls.append((vlm.name, len(samples)))
        return fractions.run(vlm, samples, store, prompt="describe the image", max_new_tokens=3)

    runs = run_on(["toy", str(tiny)], "01_attention_fractions", str(tmp_path / "runs"), "toy", 2, 0, run,
                  prompt="describe the image", max_new_tokens=3)
    assert list(runs) == ["toy", str(tiny)] and [c[1] for c in calls] == [2, 2]
    toy, other = runs.values()
    assert toy.vlm.num_layers != other.vlm.num_layers
    assert toy.store.path != other.store.path and toy.store.path.parent == other.store.path.parent
    assert toy.store.params["model"] == "toy" and toy.store.params["max_new_tokens"] == 3
    # the result is each model's own: fractions over its own layers
    assert set(toy.result.layer.dropna()) == set(range(toy.vlm.num_layers))
    assert set(other.result.layer.dropna()) == set(range(other.vlm.num_layers))
    # a second call reads the stores instead of generating again
    again = run_on(["toy"], "01_attention_fractions", str(tmp_path / "runs"), "toy", 2, 0,
                   lambda vlm, s, store: store.frame(), prompt="describe the image", max_new_tokens=3)
    assert len(again["toy"].result) == len(toy.result)
    with pytest.raises(ValueError, match="once"):
        run_on(["toy", "toy"], "01", str(tmp_path), "toy", 1, 0, run)
