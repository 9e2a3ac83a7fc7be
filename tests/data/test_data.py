"""Image sources: toy scenes, a folder, a list of paths; the cache location."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmnb import data
from vlmnb.data import Lazy, Sample, images


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        mode = "L" if name.endswith(".png") else "RGB"  # a grey PNG must come back as RGB
        Image.new(mode, (20 + k, 10), 100 + k).save(folder / name)


def test_toy_source():
    samples = images("toy", n=3, seed=1)
    assert len(samples) == 3
    assert len({s.image_id for s in samples}) == 3
    again = images("toy", n=3, seed=1)
    assert [s.image_id for s in again] == [s.image_id for s in samples]
    assert np.array_equal(np.asarray(again[0].image), np.asarray(samples[0].image))
    other_seed = images("toy", n=3, seed=2)
    assert {s.image_id for s in other_seed}.isdisjoint(s.image_id for s in samples)
    for s in samples:
        scene = s.meta["scene"]
        assert s.image.mode == "RGB"
        assert s.objects == [o.name for o in scene.objects]
        assert sum(len(v) for v in s.masks.values()) == len(scene.objects)
        for name, masks in s.masks.items():
            assert name in s.objects
            for m in masks:
                assert m.dtype == bool and m.shape == (s.image.height, s.image.width) and m.any()
        assert s.meta["description"] == scene.description
    assert len(images("toy")) == data.DEFAULT_TOY_N


def test_folder_source_sorted_and_filtered(tmp_path):
    write_images(tmp_path / "imgs", ["b.png", "a.jpg", "c.jpeg"])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "sub").mkdir()
    samples = images(tmp_path / "imgs")
    assert [s.image_id for s in samples] == ["a", "b", "c"]
    assert all(s.image.mode == "RGB" for s in samples)
    assert samples[1].image.size == (20, 10) and samples[1].meta["width"] == 20
    assert samples[0].masks is None and samples[0].objects is None
    assert [s.image_id for s in images(str(tmp_path / "imgs"), n=2)] == ["a", "b"]


def test_folder_same_stem_uses_full_names(tmp_path):
    write_images(tmp_path / "imgs", ["x.png", "x.jpg"])
    assert [s.image_id for s in images(tmp_path / "imgs")] == ["x.jpg", "x.png"]


def test_unreadable_image_is_named(tmp_path):
    write_images(tmp_path / "imgs", ["a.jpg"])
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        images(tmp_path / "imgs")


def test_list_of_paths_and_single_file(tmp_path):
    write_images(tmp_path, ["one.png", "two.jpg"])
    samples = images([tmp_path / "two.jpg", str(tmp_path / "one.png")])
    assert [s.image_id for s in samples] == ["two", "one"]  # the given order
    assert images(tmp_path / "one.png")[0].image.size == (20, 10)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        images([tmp_path / "one.png", tmp_path / "missing.png"])


def test_bad_source_lists_valid_ones(tmp_path):
    for bad in ("imagenet", tmp_path / "nowhere", 42):
        with pytest.raises(ValueError, match="'toy'.*'coco'.*folder"):
            images(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        images(tmp_path / "empty")
    with pytest.raises(ValueError, match="n must be"):
        images("toy", n=-1)


def test_lazy_fields_load_once():
    calls = []

    def load():
        calls.append(1)
        return Image.new("RGB", (4, 4))

    s = Sample("x", image=Lazy(load), masks=Lazy(lambda: {"a": [np.ones((4, 4), bool)]}))
    assert calls == [] and "x" in repr(s)  # repr does not load
    assert s.image.size == (4, 4) and s.image is s.image
    assert calls == [1]
    assert s.masks["a"][0].all()
    plain = Sample("y")
    assert plain.image is None and plain.masks is None and plain.meta == {}


def test_default_cache_dir_is_in_the_work_tree(tmp_path, monkeypatch):
    monkeypatch.delenv("VLMNB_CACHE_DIR", raising=False)
    (tmp_path / "proj" / "notebooks").mkdir(parents=True)
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path / "proj" / "notebooks")
    assert data.default_cache_dir() == (tmp_path / "proj" / ".cache" / "vlmnb").resolve()
    monkeypatch.setenv("VLMNB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert data.default_cache_dir() == tmp_path / "elsewhere"
    assert not str(data.default_cache_dir()).startswith(str(Path.home()) + "/.cache")
