"""The command-line sweep: two CPU processes (torchrun, gloo) merge to the one-process store."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmnb.cli import sweep as sweep_cli  # noqa: E402
from vlmnb.engine import tiny  # noqa: E402
from vlmnb.data.store import ResultStore  # noqa: E402

KEYS = ["image_id", "config", "metric", "layer", "token"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _sorted(frame):
    return frame.sort_values(KEYS).reset_index(drop=True)


@pytest.mark.slow
def test_two_processes_merge_to_the_one_process_store(tmp_path):
    model = tiny.save("llava", tmp_path / "model")
    common = ["-m", "vlmnb.cli.sweep", "--model", str(model), "--images", "toy", "--n-images", "3", "--fig2",
              "--window", "1", "1", "--topk", "0.5", "--max-new-tokens", "5", "--threads", "1", "--no-progress"]
    _run([sys.executable, *common, "--out", str(tmp_path / "one")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(_free_port()), *common, "--out", str(tmp_path / "two")], tmp_path)

    shards = sweep_cli.shard_dirs(tmp_path / "two")
    assert [p.name for p in shards] == ["w002-r000", "w002-r001"]
    per_shard = [{u["image_id"] for u in ResultStore.open(p).done_keys()} for p in shards]
    assert per_shard[0] and per_shard[1] and not per_shard[0] & per_shard[1]  # images split, no overlap

    one, two = ResultStore.open(tmp_path / "one" / "merged"), ResultStore.open(tmp_path / "two" / "merged")
    assert one.params == two.params and "rank" not in one.params
    assert sorted(map(str, one.done_keys())) == sorted(map(str, two.done_keys()))
    assert len(one) == 3 * (1 + 3 * 2 + 1)  # 3 images x (baseline, 3 kinds x (all, outside 1-1), top-k)
    a, b = _sorted(one.frame()), _sorted(two.frame())
    assert a.equals(b)

    # merging again changes nothing; the shards stay readable on their own
    again = sweep_cli.main(["--merge-only", "--out", str(tmp_path / "two")])
    assert again == 0 and _sorted(ResultStore.open(tmp_path / "two" / "merged").frame()).equals(b)


def test_shard_store_sees_other_shards_units_as_done(tmp_path):
    params = {"model": "m", "rank": 0, "world_size": 2}
    with ResultStore(tmp_path / "shards" / "w002-r000", params) as first:
        first.put({"model": "m", "image_id": "a", "config": "baseline"}, [{"metric": "description", "text": "x"}])
    with ResultStore(tmp_path / "shards" / "w001-r000", {**params, "world_size": 1}) as own:
        view = sweep_cli.ShardStore(own, [tmp_path / "shards" / "w002-r000"])
        assert view.done({"model": "m", "image_id": "a", "config": "baseline"})
        assert not view.done({"model": "m", "image_id": "b", "config": "baseline"})
        view.put({"model": "m", "image_id": "b", "config": "baseline"}, [{"metric": "description", "text": "y"}])
        assert sorted(view.frame().text) == ["x", "y"]
    merged = sweep_cli.merge_shards(tmp_path)
    assert len(merged) == 2 and "rank" not in merged.params
    with pytest.raises(FileNotFoundError, match="no shard stores"):
        sweep_cli.merge_shards(tmp_path / "nothing")


def test_shard_store_runs_the_store_loop(tmp_path):
    params = {"model": "m", "rank": 0, "world_size": 2}
    with ResultStore(tmp_path / "shards" / "w002-r000", params) as first:
        first.put({"image_id": "a"}, [{"metric": "m", "value": 1.0}])
    with ResultStore(tmp_path / "shards" / "w002-r001", {**params, "rank": 1}) as own:
        view = sweep_cli.ShardStore(own, [tmp_path / "shards" / "w002-r000"])
        computed = []

        def compute(image_id):
            computed.append(image_id)
            return [{"metric": "m", "value": 2.0}]

        assert view.run([{"image_id": "a"}, {"image_id": "b"}], compute, progress=False) == 1
        assert computed == ["b"] and view.has(image_id="a") and view.has(image_id="b")
        with pytest.raises(ValueError, match="already"):
            with view.unit(image_id="a"):
                pass
        with view.unit(image_id="c") as u:
            u.add(metric="m", value=3.0)
        assert sorted(view.frame().value) == [1.0, 2.0, 3.0]
        assert view.path == own.path and view.params == own.params
    assert sorted(u["image_id"] for u in ResultStore.open(tmp_path / "shards" / "w002-r001").done_keys()) == ["b", "c"]
