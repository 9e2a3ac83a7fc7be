"""The chapters' shared setup: images and a result store keyed like the chapters always keyed it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

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
