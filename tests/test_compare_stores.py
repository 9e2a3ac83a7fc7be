"""scripts/compare_stores.py, the before/after check of a refactoring, finds what differs."""
from __future__ import annotations

import subprocess
import sys

from support import ROOT
from vlmnb.data.store import ResultStore

SCRIPT = ROOT / "scripts" / "compare_stores.py"


def build(root, texts, seconds=0.5, params=None):
    store = ResultStore.in_dir(root / "01_chapter", params or {"model": "toy", "n": 2})
    for image_id, text in texts.items():
        with store.unit(model="toy", image_id=image_id, config="baseline") as unit:
            unit.add(layer=0, metric="f1", value=0.25, text=text)
            unit.add(metric="answer", value=seconds, seconds=seconds, text=text)
    store.close()


def compare(before, after):
    return subprocess.run([sys.executable, str(SCRIPT), str(before), str(after)], capture_output=True, text=True)


def test_identical_builds_report_no_difference_and_ignore_wall_clock_times(tmp_path):
    build(tmp_path / "a", {"i0": "a red circle.", "i1": "a blue square."}, seconds=0.5)
    build(tmp_path / "b", {"i0": "a red circle.", "i1": "a blue square."}, seconds=0.9,
          params={"model": "toy", "n": 2, "dtype": "auto"})  # a new parameter: another hash, same store
    done = compare(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0, done.stdout
    assert "total: 1 stores, 2 units, 0 differences" in done.stdout


def test_a_changed_text_is_named_with_its_unit(tmp_path):
    build(tmp_path / "a", {"i0": "a red circle.", "i1": "a blue square."})
    build(tmp_path / "b", {"i0": "a red circle.", "i1": "a blue circle."})
    done = compare(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 1
    assert "('toy', 'i1', 'baseline'): column 'text' differs" in done.stdout
    assert "1 differences" in done.stdout


def test_a_missing_unit_is_a_difference(tmp_path):
    build(tmp_path / "a", {"i0": "a red circle.", "i1": "a blue square."})
    build(tmp_path / "b", {"i0": "a red circle."})
    done = compare(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 1
    assert "only before" in done.stdout
