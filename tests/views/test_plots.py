"""The book's figures: legends never cover the data, and every figure records the numbers it
drew (the CSV a chapter offers for download) with its documented columns.

Each figure is drawn from inputs that fill the corners of its axes (F1 near 1, shares near 0
and 1), where a legend inside the axes would sit on bars or lines."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import Collection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402

from vlmnb.engine.spans import Geometry, View  # noqa: E402
from vlmnb.experiments import reprompt  # noqa: E402
from vlmnb.toy.scenes import make_scenes  # noqa: E402
from vlmnb.views import figure_data, plots, side_by_side, supported  # noqa: E402
from vlmnb.views import toy as toy_views  # noqa: E402

KINDS = ["img->gen", "img->query", "img->query+gen"]


def _ci(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(ci_low=frame["mean"] - 0.04, ci_high=(frame["mean"] + 0.04).clip(upper=1.0), n=24)


def _fractions() -> pd.DataFrame:
    rows = []
    shares = {"system": [0.02] * 8, "image": [0.95, 0.9, 0.3, 0.2, 0.4, 0.3, 0.1, 0.05],
              "query": [0.02, 0.05, 0.6, 0.7, 0.5, 0.6, 0.85, 0.9], "generated": [0.01, 0.03, 0.08, 0.08, 0.08, 0.08, 0.03, 0.03]}
    for image in range(3):
        for span, values in shares.items():
            rows += [{"image_id": f"i{image}", "layer": layer, "span": span, "fraction": v + 0.01 * image}
                     for layer, v in enumerate(values)]
    return pd.DataFrame(rows)


def _geometry(cols: int = 4, rows: int = 4, size: float = 10.0) -> Geometry:
    boxes = [[c * size, r * size, (c + 1) * size, (r + 1) * size] for r in range(rows) for c in range(cols)]
    view = View("image", rows, cols, np.arange(rows * cols).reshape(rows, cols), (0, 0, cols * size, rows * size))
    return Geometry((int(cols * size), int(rows * size)), np.array(boxes, dtype=float), [view])


def _image() -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(40, 40, 3) * 255).astype(np.uint8))


def _localization():
    by_layer = _ci(pd.DataFrame({"layer": range(8), "mean": [0.1, 0.3, 0.9, 1.0, 1.0, 0.95, 0.4, 0.2]}))
    by_window = _ci(pd.DataFrame({"first": [0, 2, 4, 6], "last": [1, 3, 5, 7], "mean": [0.2, 0.98, 0.97, 0.3]}))
    return plots.localization_by_layer(by_layer, by_window, {"mean": 0.2, "ci_low": 0.18, "ci_high": 0.22}, 8,
                                       paper={"peak_accuracy": 0.73, "mid_layers": (20, 40), "layers": 80})


def _table1():
    ours = reprompt.paper_table1()
    ours[("Average", "ACC")] = np.linspace(99.0, 94.0, len(ours))
    return plots.table1_bars(ours, paper=reprompt.paper_table1())


def _gallery():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 20:30] = True
    item = {"image": _image(), "geometry": _geometry(), "mask": mask, "map": np.linspace(0, 1, 16),
            "phrase": "red circle", "image_id": "i1"}
    return plots.detail_gallery([item, {**item, "image_id": "i2"}])


# figure name (as in figure_data.COLUMNS) -> a function drawing it from inputs that fill its axes
FIGURES = {
    "fractions_by_layer": lambda: plots.fractions_by_layer(_fractions(), title="t", paper_bands={"early": (0, 1), "middle": (2, 4)}),
    "token_vs_attention": lambda: plots.token_vs_attention(pd.DataFrame(
        {"tokens (mean count)": [3, 81, 5, 20], "token share": [0.03, 0.74, 0.05, 0.18],
         "attention share": [0.06, 0.98, 0.9, 0.1]}, index=["system", "image", "query", "generated"])),
    "layer_maps": lambda: plots.layer_maps(_image(), _geometry(), np.random.RandomState(0).rand(3, 16), range(3)),
    "attention_histograms": lambda: plots.attention_histograms({layer: np.random.RandomState(layer).exponential(size=200)
                                                                for layer in range(4)}),
    "f1_bars": lambda: plots.f1_bars(_ci(pd.DataFrame(
        [{"kind": k, "scope": s, "mean": m} for k, m in zip(KINDS, [0.97, 0.9, 0.95]) for s in ("all", "outside")])),
        paper={"img->gen": 0.4, "img->query": 0.0, "img->query+gen": 0.0}, title="t"),
    "f1_by_start_layer": lambda: plots.f1_by_start_layer(_ci(pd.DataFrame(
        [{"kind": k, "start": s, "mean": min(1.0, 0.3 + 0.12 * s)} for k in KINDS for s in range(8)])), 8, paper_rise=(2, 4)),
    "localization_by_layer": _localization,
    "detail_gallery": _gallery,
    "f1_by_k": lambda: plots.f1_by_k(_ci(pd.DataFrame({"k": [0.01, 0.05, 0.2, 0.5], "mean": [0.1, 0.97, 0.99, 1.0]})), 81),
    "table1_bars": _table1,
    "reprompt_cost": lambda: plots.reprompt_cost(pd.DataFrame({"fewer_kv_bytes_x": [1.0, 40.0, 90.0], "faster_x": [1.0, 30.0, 60.0]},
                                                              index=["Naive", "Query + K=5%", "Query + K=2%"])),
    "scenes": lambda: toy_views.show_scenes(make_scenes(2, split="test", seed=0)),
    "training_curves": lambda: toy_views.plot_training_curves(pd.DataFrame(
        {"step": [50, 100, 150, 200], "stage": [1, 1, 2, 2], "loss_description": [2.0, 0.5, 0.1, 0.01],
         "loss_position_lookup": [2.0, 1.0, 0.3, 0.1], "first_existence": [0.9, 0.7, 0.1, 0.0],
         "first_color": [0.95, 0.69, 0.3, 0.01]})),
    "by_depth": lambda: side_by_side.by_depth(
        {"toy": (pd.DataFrame({"layer": np.arange(8), "v": np.linspace(0.2, 0.9, 8), "span": "image"}), 8),
         "toy-smollm": (pd.DataFrame({"layer": np.arange(30), "v": np.linspace(0.9, 0.1, 30), "span": "image"}), 30)},
        y="v", panel="span", ylabel="share (0-1)", paper_bands={"early": (0, 5)}, paper_values={"image": (0.6, "x")}),
    "f1_bars_by_model": lambda: side_by_side.f1_bars({m: _ci(pd.DataFrame(
        [{"kind": k, "scope": s, "mean": v} for k, v in zip(KINDS, means) for s in ("all", "outside")]))
        for m, means in (("toy", [0.97, 0.9, 0.95]), ("toy-smollm", [0.5, 0.1, 0.05]))},
        paper={"img->gen": 0.4, "img->query": 0.0, "img->query+gen": 0.0}),
    "invariant_matrix": lambda: supported.invariant_matrix(pd.DataFrame(
        {"own_generate": ["\u2713", "\u2717"], "geometry": ["n/a", "\u2713"]}, index=["llava", "gemma3"])),
}
WITH_LEGEND = ["by_depth", "f1_bars_by_model", "invariant_matrix", "fractions_by_layer", "token_vs_attention", "f1_bars", "f1_by_start_layer", "localization_by_layer",
               "f1_by_k", "table1_bars", "reprompt_cost", "training_curves"]


def _legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def covered_data(fig) -> list[str]:
    """The data artists (bars, lines, bands, error bars, texts) that a legend of ``fig`` overlaps,
    in display coordinates. Artists are clipped to their axes, so only the part of the legend
    inside an axes can cover them; texts (which may sit outside) are checked against all of it."""
    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)  # a closed figure
    canvas.draw()
    renderer = canvas.get_renderer()
    hits = []
    for legend in _legends(fig):
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            inside = Bbox.intersection(box, ax.get_window_extent(renderer))
            for artist in [*ax.patches, *ax.lines, *ax.collections, *ax.texts]:
                if not artist.get_visible():
                    continue
                if isinstance(artist, plt.Text):
                    hit = bool(artist.get_text()) and artist.get_window_extent(renderer).overlaps(box)
                elif inside is None:
                    hit = False
                elif isinstance(artist, Line2D):
                    hit = artist.get_transform().transform_path(artist.get_path()).intersects_bbox(inside, filled=False)
                elif isinstance(artist, Collection):
                    hit = any(artist.get_transform().transform_path(p).intersects_bbox(inside, filled=True)
                              for p in artist.get_paths())
                else:  # bars and spans
                    hit = artist.get_window_extent(renderer).overlaps(inside)
                if hit:
                    hits.append(f"{type(artist).__name__} {artist.get_label()!r}")
    return hits


@pytest.fixture(autouse=True)
def _fresh():
    figure_data.clear()
    yield
    plt.close("all")
    figure_data.clear()


def test_every_recorded_figure_has_a_drawing_here():
    assert set(FIGURES) == set(figure_data.COLUMNS)


@pytest.mark.parametrize("name", WITH_LEGEND)
def test_legend_does_not_cover_the_data(name):
    fig = FIGURES[name]()
    assert _legends(fig), f"{name} has no legend"
    assert not covered_data(fig), f"{name}: the legend covers {covered_data(fig)}"


def test_the_overlap_check_sees_a_legend_on_a_bar():
    fig, ax = plt.subplots()
    ax.bar([0, 1], [1.0, 0.95], label="bars")
    ax.plot([0, 1], [0.2, 0.3], label="line")
    ax.legend(loc="upper right")
    assert covered_data(fig) and any("Rectangle" in hit for hit in covered_data(fig))
    fig2, ax2 = plt.subplots(layout="constrained")
    ax2.bar([0, 1], [1.0, 0.95], label="bars")
    plots.legend_below(fig2)
    assert not covered_data(fig2)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_records_its_numbers(name):
    FIGURES[name]()
    drawn = figure_data.drawn()
    assert [stem for stem, _ in drawn] == [name]
    table = drawn[0][1]
    assert tuple(table.columns) == figure_data.COLUMNS[name] and len(table) > 0


def test_recorded_numbers_are_the_drawn_ones():
    fig = FIGURES["f1_bars"]()
    table = figure_data.drawn()[0][1]
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx(list(table["mean"]))
    assert table.set_index(["kind", "scope"]).loc[("img->gen", "all"), "paper"] == 0.4
    fig = FIGURES["attention_histograms"]()
    table = figure_data.drawn()[1][1]
    assert table.groupby("layer")["count"].sum().tolist() == [200] * 4


def test_second_figure_of_a_kind_gets_its_own_name():
    FIGURES["f1_by_k"]()
    FIGURES["f1_by_k"]()
    assert [stem for stem, _ in figure_data.drawn()] == ["f1_by_k", "f1_by_k-2"]
    with pytest.raises(ValueError, match="expected"):
        figure_data.record("f1_by_k", pd.DataFrame({"k": [1]}))
    with pytest.raises(KeyError):
        figure_data.record("no_such_figure", pd.DataFrame())


def test_heatmap_of_whole_view_tokens_shows_their_mean():
    """Idefics2's learned-query tokens all cover their picture: the map shows their mean, not
    whichever token was drawn last."""
    from vlmnb.engine import invariants, tiny
    from vlmnb.engine.spans import prepare

    model, processor = tiny.build("idefics2")
    prep = prepare(model, processor, invariants.noise_image(0, (40, 30)), "describe the image")
    g = prep.geometry
    view = next(v for v in g.views if v.whole_view)
    values = np.zeros(len(g.boxes))
    values[view.token_indices] = np.arange(len(view.token_indices), dtype=float)
    fig, ax = plt.subplots()
    plots.image_heatmap(ax, invariants.noise_image(0, (40, 30)), g, values, view=g.views.index(view),
                        mark_peak=False)
    heat = ax.images[1].get_array()
    x0, y0, x1, y1 = view.region
    inside = heat[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]
    assert np.allclose(inside.compressed(), values[view.token_indices].mean())
    plt.close(fig)


def test_f1_by_k_draws_one_line_per_model():
    figure_data.clear()
    a = _ci(pd.DataFrame({"k": [0.02, 0.1, 0.5], "mean": [0.2, 0.8, 1.0]}))
    b = _ci(pd.DataFrame({"k": [0.02, 0.1, 0.5], "mean": [0.1, 0.5, 0.9]}))
    fig = plots.f1_by_k({"toy": a, "toy-smollm": b}, 81)
    (stem, numbers), = figure_data.drawn()
    assert stem == "f1_by_k" and numbers.groupby("model")["mean"].apply(list).to_dict() == {
        "toy": [0.2, 0.8, 1.0], "toy-smollm": [0.1, 0.5, 0.9]}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["toy", "toy-smollm"]
    (single, ) = [plots.f1_by_k(a, 81)]
    assert [t.get_text() for t in single.legends[0].get_texts()][0] == "ours"
