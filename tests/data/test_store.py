import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from vlmnb.core.errors import OneLineError
from vlmnb.data.store import (CorruptPart, ParamsMismatch, ResultStore, is_store, list_parts, merge, params_differ,
                              part_units, read_parts, stored_params, unit_id)

PARAMS = {"model": "toy", "n_images": 6, "configs": ["a", "b"], "seed": 0}
IMAGES = [f"img{i}" for i in range(6)]
CONFIGS = ["a", "b"]


class Interrupt(Exception):
    pass


def experiment(store, calls, stop_after=None, stop_inside_unit=False):
    """A small experiment loop in the shape the chapters use; `calls` counts computed units."""
    for image_id in IMAGES:
        for config in CONFIGS:
            if store.has(model="toy", image_id=image_id, config=config):
                continue
            if stop_after is not None and len(calls) == stop_after and not stop_inside_unit:
                raise Interrupt
            with store.unit(model="toy", image_id=image_id, config=config) as u:
                calls.append((image_id, config))
                for layer in range(3):
                    u.add(layer=layer, metric="f1", value=IMAGES.index(image_id) + 0.1 * layer,
                          text=f"{image_id}/{config}/{layer}", n_tokens=layer * 2)
                    if stop_inside_unit and len(calls) == stop_after + 1 and layer == 1:
                        raise Interrupt  # half a unit: must leave no trace


def run_full(path, **kw):
    calls = []
    with ResultStore(path, PARAMS, **kw) as store:
        experiment(store, calls)
        return store.frame(), calls


@pytest.mark.parametrize("inside_unit", [False, True])
def test_interrupted_run_resumes_identically(tmp_path, inside_unit):
    reference, ref_calls = run_full(tmp_path / "ref")
    assert len(reference) == len(IMAGES) * len(CONFIGS) * 3
    assert len(ref_calls) == 12

    path = tmp_path / "resumed"
    first_calls = []
    with pytest.raises(Interrupt):
        with ResultStore(path, PARAMS, flush_every=3) as store:
            experiment(store, first_calls, stop_after=7, stop_inside_unit=inside_unit)
    # completed units survive the exception (the buffered ones are flushed on exit)
    assert len(ResultStore.open(path).done_keys()) == 7
    parts = sorted((path / "parts").glob("part-*.parquet"))
    assert len(parts) == 3  # flushed at 3 and 6 units, the 7th on exit

    second_calls = []
    with ResultStore(path, PARAMS, flush_every=3) as store:
        experiment(store, second_calls)
        resumed = store.frame()
    # the rerun computes exactly the missing units (a half-done unit is redone)
    assert len(second_calls) == 12 - 7
    assert set(first_calls[:7]).isdisjoint(second_calls)
    pd.testing.assert_frame_equal(resumed, reference)
    assert not resumed.duplicated(["image_id", "config", "layer", "metric"]).any()

    # a third run with everything done computes nothing and adds nothing
    third_calls = []
    with ResultStore(path, PARAMS) as store:
        experiment(store, third_calls)
        pd.testing.assert_frame_equal(store.frame(), reference)
    assert third_calls == []


def test_hard_kill_loses_only_unflushed_units(tmp_path):
    path = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from test_store import experiment, PARAMS
        from vlmnb.data.store import ResultStore

        class Kill(list):
            def append(self, item):
                if len(self) == 5:
                    os._exit(3)  # no cleanup, no flush: like SIGKILL
                super().append(item)

        store = ResultStore({str(path)!r}, PARAMS, flush_every=2, versions=False)
        experiment(store, Kill())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    store = ResultStore(path, PARAMS, versions=False)
    assert len(store.done_keys()) == 4  # two flushes of two units; the 5th was in flight
    calls = []
    experiment(store, calls)
    store.close()
    assert len(calls) == 8
    reference, _ = run_full(tmp_path / "ref", versions=False)
    pd.testing.assert_frame_equal(store.frame(), reference)


def test_params_and_versions_stored(tmp_path):
    with ResultStore(tmp_path / "s", {"seed": 1, "layers": (1, 2), "eps": float("nan")}) as store:
        store.put({"image_id": "x"}, [{"metric": "m", "value": 1}])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["params"]["layers"] == [1, 2] and meta["params"]["seed"] == 1
    for lib in ("torch", "transformers", "vlmnb", "python"):
        assert meta["versions"][lib]
    # the same parameters written another way (tuple vs list, 1 vs 1.0, NaN) are the same run
    with ResultStore(tmp_path / "s", {"eps": float("nan"), "layers": [1, 2], "seed": 1.0}) as store:
        assert store.has(image_id="x")
        assert not store.has(image_id="y")


def test_other_params_into_same_path_is_an_error(tmp_path):
    ResultStore(tmp_path / "s", {"seed": 1, "k": 0.05}).close()
    with pytest.raises(ValueError, match=r"seed: 1 \(stored\) != 2 \(now\)"):
        ResultStore(tmp_path / "s", {"seed": 2, "k": 0.05})
    # in_dir gives each parameter set its own folder
    a = ResultStore.in_dir(tmp_path / "runs", {"seed": 1})
    b = ResultStore.in_dir(tmp_path / "runs", {"seed": 2})
    a2 = ResultStore.in_dir(tmp_path / "runs", {"seed": 1})
    assert a.path != b.path and a.path == a2.path
    with pytest.raises(FileNotFoundError, match="pass params"):
        ResultStore(tmp_path / "nothing")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a result store"):
        ResultStore(tmp_path / "occupied", {"seed": 1})


def test_unit_rules(tmp_path):
    store = ResultStore(tmp_path / "s", {"p": 1}, flush_every=100)
    with store.unit(image_id=7, config="c") as u:
        u.add(metric="f1", value=0.5)
    assert store.has(image_id=7, config="c")  # buffered counts as done
    with pytest.raises(ValueError, match="already"):
        with store.unit(image_id=7, config="c"):
            pass
    with pytest.raises(ValueError, match="layer"):
        store.put({"image_id": "z"}, [{"layer": "4-20"}])
    store.put({"image_id": "empty"}, [])  # a unit that yields no rows is still done
    store.close()
    reopened = ResultStore.open(tmp_path / "s")
    assert reopened.has(image_id="empty") and reopened.has(image_id=7, config="c")
    df = reopened.frame()
    assert df["image_id"].tolist() == ["7"]  # key fields fill the row, core ids are strings
    assert str(df["layer"].dtype) == "Int64"
    with pytest.raises(RuntimeError, match="closed"):
        store.put({"image_id": "late"}, [])


def test_run_helper_skips_done(tmp_path):
    seen = []

    def compute(image_id):
        seen.append(image_id)
        return [{"metric": "len", "value": len(image_id)}]

    keys = [{"image_id": s} for s in ("a", "bb", "ccc")]
    with ResultStore(tmp_path / "s", {"p": 1}) as store:
        assert store.run(keys[:2], compute, progress=False) == 2
        assert store.run(keys, compute, progress=False) == 1
        assert store.frame()["value"].tolist() == [1.0, 2.0, 3.0]
    assert seen == ["a", "bb", "ccc"]


def test_the_part_files_name_their_units(tmp_path):
    assert unit_id({"image_id": "a", "config": "c"}) == unit_id({"config": "c", "image_id": "a"})
    with pytest.raises(TypeError, match="scalar"):
        unit_id({"image_id": ["a"]})
    assert not is_store(tmp_path / "s") and list_parts(tmp_path / "s") == []
    with ResultStore(tmp_path / "s", {"p": 1}) as store:
        store.put({"image_id": "a"}, [{"metric": "m", "value": 1.0}])
        store.put({"image_id": "b"}, [])
    assert is_store(tmp_path / "s")
    parts = list_parts(tmp_path / "s")
    assert len(parts) == 1
    assert part_units(parts[0]) == [unit_id({"image_id": "a"}), unit_id({"image_id": "b"})]
    assert sorted(map(unit_id, ResultStore.open(tmp_path / "s").done_keys())) == sorted(part_units(parts[0]))


def test_merge_per_rank_stores(tmp_path):
    ranks = []
    for rank in range(2):
        path = tmp_path / f"rank{rank}"
        with ResultStore(path, {**PARAMS, "rank": rank}, flush_every=2) as store:
            for i, image_id in enumerate(IMAGES):
                if i % 2 != rank:
                    continue
                for config in CONFIGS:
                    store.put({"model": "toy", "image_id": image_id, "config": config},
                              [{"metric": "f1", "value": i}])
        ranks.append(path)
    merged = merge(ranks, tmp_path / "all")
    df = merged.frame()
    assert len(df) == 12 and not df.duplicated(["image_id", "config"]).any()
    assert sorted(df["image_id"].unique()) == IMAGES
    assert merged.params == PARAMS  # rank is dropped
    n_parts = len(list((tmp_path / "all" / "parts").glob("part-*.parquet")))
    # merging again adds nothing
    again = merge(ranks, tmp_path / "all")
    assert len(again.frame()) == 12
    assert len(list((tmp_path / "all" / "parts").glob("part-*.parquet"))) == n_parts
    # overlapping shards and different parameters are refused
    with pytest.raises(ValueError, match="overlap"):
        merge([ranks[0], _copy_store(ranks[0], tmp_path / "copy0")], tmp_path / "x")
    other = tmp_path / "other"
    ResultStore(other, {**PARAMS, "seed": 9}).close()
    with pytest.raises(ValueError, match="seed"):
        merge([ranks[0], other], tmp_path / "y")


def _copy_store(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _truncate(part, keep=0.5):
    data = part.read_bytes()
    part.write_bytes(data[: int(len(data) * keep)])
    return part.read_bytes()


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_part_is_named_set_aside_and_its_units_recomputed(tmp_path, keep):
    reference, _ = run_full(tmp_path / "ref", versions=False)
    path = tmp_path / "s"
    with ResultStore(path, PARAMS, flush_every=5) as store:
        experiment(store, [])
    parts = list_parts(path)
    assert len(parts) == 3  # 5 + 5 + 2 units
    bad = parts[1]
    units = part_units(bad)
    left = _truncate(bad, keep)
    for read in (lambda: part_units(bad), lambda: read_parts(parts)):
        with pytest.raises(CorruptPart, match=bad.name) as info:
            read()
        assert isinstance(info.value, OneLineError) and str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CorruptPart, match=bad.name):
        merge([path], tmp_path / "merged")

    # opening the store as a writer sets the part aside (bytes kept) and its units are not done
    with pytest.warns(UserWarning, match=bad.name):
        store = ResultStore(path, PARAMS)
    kept = path / "parts" / "corrupt" / bad.name
    assert kept.read_bytes() == left and not bad.exists() and store.set_aside == [kept]
    assert len(store) == 7 and not any(store.done(json.loads(u)) for u in units)
    calls = []
    experiment(store, calls)  # the next run recomputes exactly those units
    store.close()
    assert sorted(calls) == sorted((json.loads(u)["image_id"], json.loads(u)["config"]) for u in units)
    key = ["image_id", "config", "layer"]
    got = ResultStore.open(path).frame().sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, reference.sort_values(key).reset_index(drop=True))


def test_merge_with_repair_sets_a_corrupt_source_part_aside(tmp_path):
    with ResultStore(tmp_path / "a", PARAMS, flush_every=6) as store:
        experiment(store, [])
    bad = list_parts(tmp_path / "a")[0]
    _truncate(bad)
    with pytest.warns(UserWarning, match=bad.name):
        merged = merge([tmp_path / "a"], tmp_path / "m", repair=True)
    assert len(merged) == 6 and (tmp_path / "a" / "parts" / "corrupt" / bad.name).exists()


def test_params_mismatch_is_one_line_and_comparable_beforehand(tmp_path):
    ResultStore(tmp_path / "s", {"seed": 1, "rank": 0}).close()
    with pytest.raises(ParamsMismatch, match="seed") as info:
        ResultStore(tmp_path / "s", {"seed": 2, "rank": 0})
    assert isinstance(info.value, (ValueError, OneLineError)) and info.value.differences
    assert "delete" not in str(info.value)
    assert stored_params(tmp_path / "s") == {"seed": 1, "rank": 0} and stored_params(tmp_path / "x") is None
    assert params_differ({"seed": 1, "rank": 0}, {"seed": 1.0, "rank": 3}, ignore=["rank"]) == []
    assert params_differ({"seed": 1}, {"seed": 2}) == ["seed: 1 (stored) != 2 (now)"]
