"""A chapter's downloads: its result store as Parquet (every row, its parameters) and each
drawn figure's numbers as CSV, linked from the chapter; an earlier run's files do not linger."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from vlmnb.core.usage import UsageError  # noqa: E402
from vlmnb.data.store import ResultStore  # noqa: E402
from vlmnb.views import downloads, figure_data, plots  # noqa: E402


@pytest.fixture
def store(tmp_path):
    params = {"model": "toy", "n_images": 2, "ks": [0.05, 0.02]}
    with ResultStore.in_dir(tmp_path / "runs" / "04_pruning", params) as s:
        for image in ("a", "b"):
            with s.unit(model="toy", image_id=image, config="baseline") as u:
                u.add(metric="f1", value=0.5, text="a red circle")
                u.add(metric="tokens", layer=3, value=81, detail=["red circle"])
    return ResultStore.open(s.path)


@pytest.fixture(autouse=True)
def _no_figures():
    figure_data.clear()
    yield
    figure_data.clear()


def test_publish_writes_the_store_and_each_figure(tmp_path, store):
    summary = pd.DataFrame({"k": [0.02, 0.05], "mean": [0.6, 0.9], "ci_low": [0.5, 0.8], "ci_high": [0.7, 1.0]})
    plots.f1_by_k(summary, 81)
    plots.f1_by_k(summary, 576)
    out = downloads.publish("04_pruning", [store], folder=tmp_path / "site" / "_downloads", url="../../_downloads")
    folder = tmp_path / "site" / "_downloads" / "04_pruning"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{store.path.name}.parquet", "f1_by_k.csv", "f1_by_k-2.csv"])

    table = pq.read_table(folder / f"{store.path.name}.parquet")
    frame = table.to_pandas()
    stored = store.frame()
    assert len(frame) == len(stored) == 4 and list(frame.columns) == list(stored.columns)
    assert frame["detail"].dropna().map(list).tolist() == [["red circle"], ["red circle"]]
    assert json.loads(table.schema.metadata[downloads.PARAMS_KEY]) == store.params

    numbers = pd.read_csv(folder / "f1_by_k-2.csv")
    assert tuple(numbers.columns) == figure_data.COLUMNS["f1_by_k"]
    assert numbers["tokens_kept"].tolist() == [12, 29]  # 2% and 5% of 576

    html = out._repr_html_()
    assert html.count(f'class="{downloads.LINK_CLASS}"') == 3
    assert f'href="../../_downloads/04_pruning/{store.path.name}.parquet"' in html and "4 rows" in html


def test_a_rerun_replaces_the_earlier_files(tmp_path, store):
    plots.f1_by_k(pd.DataFrame({"k": [0.1], "mean": [0.5], "ci_low": [0.4], "ci_high": [0.6]}), 81)
    downloads.publish("04_pruning", [store], folder=tmp_path)
    figure_data.clear()
    out = downloads.publish("04_pruning", [store], folder=tmp_path)
    assert [p.name for p in (tmp_path / "04_pruning").iterdir()] == [f"{store.path.name}.parquet"]
    assert [f.name for f in out.files] == [f"{store.path.name}.parquet"]


def test_the_runner_sets_where_files_go(tmp_path, store, monkeypatch):
    monkeypatch.setenv(downloads.DIR_ENV, str(tmp_path / "extra"))
    monkeypatch.setenv(downloads.URL_ENV, "../../_downloads/")
    out = downloads.publish("05_reprompting", [store])
    assert (tmp_path / "extra" / "05_reprompting" / f"{store.path.name}.parquet").is_file()
    assert 'href="../../_downloads/05_reprompting/' in out._repr_html_()


@pytest.mark.parametrize("chapter", ["", "../up", ".hidden"])
def test_a_bad_chapter_name_is_refused_before_writing(tmp_path, chapter):
    with pytest.raises(UsageError, match="plain name"):
        downloads.publish(chapter, folder=tmp_path)
    assert not any(tmp_path.iterdir())
