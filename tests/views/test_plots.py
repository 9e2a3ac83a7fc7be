"""Figures of the style module (vlmnb.views.plots)."""
from __future__ import annotations

from vlmnb.engine import invariants


def test_heatmap_of_whole_view_tokens_shows_their_mean():
    """Idefics2's learned-query tokens all cover their picture: the map shows their mean, not
    whichever token was drawn last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from vlmnb.engine import tiny
    from vlmnb.engine.spans import prepare
    from vlmnb.views import plots

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
