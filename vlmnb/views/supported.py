"""The "Supported models" page, generated from the family registry: example checkpoints (the
paper's two models first), image tokens per picture at the reference checkpoint's settings, what
a knockout means where image tokens attend non-causally, and which invariants
(:mod:`vlmnb.engine.invariants`) each family's tiny model passes, measured when the page is built.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from vlmnb.core.progress import progress_bar
from vlmnb.engine import families as registry
from vlmnb.engine import invariants, tiny
from vlmnb.engine.remote import RemoteCodeMissing
from vlmnb.engine.spans import image_token_id, prepare
from vlmnb.engine.vlm import VLM
from vlmnb.experiments import paper
from vlmnb.views import figure_data, plots

#: the picture size image-token counts are given for (width, height)
REFERENCE_PICTURE = (640, 480)
MARKS = {"pass": "\u2713", "fail": "\u2717", "n/a": "n/a"}


def image_tokens(family: str, size: tuple[int, int] = REFERENCE_PICTURE, built: tuple | None = None) -> int:
    """How many image tokens a ``size`` picture becomes at the family's reference settings
    (``Family.reference_sizes``; the image placeholder tokens, structure tokens not counted).
    ``built``: the family's tiny ``(model, processor)`` if already built."""
    from PIL import Image

    entry = registry.get(family)
    model, small = built or tiny.build(family)
    config, processor = entry.reference_sizes(model.config, small)
    prepared = prepare(config, processor, Image.new("RGB", size, (128, 128, 128)), "describe the image")
    return int((prepared.input_ids[0] == image_token_id(config)).sum())


def paper_rank(entry) -> int:
    """0 for the family of the paper's main model, 1 for its second model, 2 for the others."""
    for rank, ids in enumerate(paper.HUB_IDS.values()):
        if set(ids) & set(entry.hub_ids):
            return rank
    return len(paper.HUB_IDS)


def ordered(names: Iterable[str] | None = None) -> list[str]:
    """Family names, the paper's models' families first, then in registry order."""
    names = list(names or registry.NAMES)
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"unknown families {unknown}; supported: {', '.join(registry.NAMES)}")
    return sorted(names, key=lambda n: (paper_rank(registry.get(n)), registry.NAMES.index(n)))


def check_family(family: str, built: tuple | None = None) -> list[invariants.Outcome]:
    """Every invariant on the tiny random model of ``family`` (``built``: it, if already built)."""
    model, processor = built or tiny.build(family)
    return invariants.check(VLM(model, processor, name=f"tiny-{family}"))


def supported_models(names: Sequence[str] | None = None, run_checks: bool = True, progress: bool = True):
    """``(overview, checks)`` DataFrames, one row per family.

    ``overview``: family, model types, example checkpoints, image tokens for a 640x480 picture,
    what a knockout means where image attention is not causal, invariants passed. ``checks``:
    one column per invariant (pass / fail / n/a), empty when ``run_checks`` is False.
    """
    import pandas as pd

    rows, marks = [], {}
    for name in progress_bar(ordered(names), desc="families", disable=not progress):
        entry = registry.get(name)
        try:
            built = tiny.build(name)
            tokens = image_tokens(name, built=built)
        except RemoteCodeMissing as exc:  # a tiny model built from a checkpoint's own code, absent here
            tokens, missing = "n/a", str(exc)
        else:
            missing = None
        row = {"family": name, "model types": ", ".join(entry.model_types),
               "example checkpoints": ", ".join(entry.hub_ids),
               "image tokens (640x480)": tokens,
               "non-causal image attention": entry.knockout_note or "none (causal)"}
        if run_checks and missing:
            marks[name] = {n: MARKS["n/a"] for n in invariants.NAMES}
            row["invariants passed"] = f"n/a: {missing}"
        elif run_checks:
            outcomes = check_family(name, built)
            marks[name] = {o.name: MARKS[o.status] for o in outcomes}
            passed = sum(o.passed for o in outcomes)
            failed = [o.name for o in outcomes if o.status == "fail"]
            row["invariants passed"] = f"{passed}/{len(outcomes)}" + (f" (failed: {', '.join(failed)})" if failed else "")
        rows.append(row)
    overview = pd.DataFrame(rows).set_index("family")
    checks = pd.DataFrame.from_dict(marks, orient="index")
    if len(checks):
        checks.index.name = "family"
    return overview, checks


def statements():
    """The invariants checked, as a DataFrame (name, what it asserts)."""
    import pandas as pd

    return pd.DataFrame([{"invariant": i.name, "asserts": i.statement} for i in invariants.INVARIANTS]).set_index(
        "invariant")


def outcomes_table(outcomes: Sequence[invariants.Outcome]):
    """The outcomes of :func:`vlmnb.engine.invariants.check` as a DataFrame (status, measurement)."""
    import pandas as pd

    return pd.DataFrame([{"invariant": o.name, "status": MARKS[o.status], "measured": o.detail}
                         for o in outcomes]).set_index("invariant")


#: colours of the invariant matrix: held, broken, cannot be checked
STATUS_COLORS = {"pass": "#4c9a5a", "fail": "#c0392b", "n/a": "#bbbbbb"}


def invariant_matrix(checks):
    """One square per family (rows) and invariant (columns): green held, red broken, grey n/a on
    the family's tiny model; ``checks`` is the second table of :func:`supported_models`."""
    import matplotlib.colors as mcolors
    import numpy as np
    import pandas as pd

    statuses = {mark: status for status, mark in MARKS.items()}
    codes = {status: i for i, status in enumerate(STATUS_COLORS)}
    grid = np.array([[codes[statuses[v]] for v in row] for row in checks.to_numpy()], dtype=float)
    fig, ax = plots.figure(height=0.28 * len(checks) + 1.6, layout="constrained")
    ax.imshow(grid, cmap=mcolors.ListedColormap(list(STATUS_COLORS.values())), vmin=-0.5,
              vmax=len(STATUS_COLORS) - 0.5, aspect="auto")
    ax.set_xticks(range(checks.shape[1]), [c.replace("_", " ") for c in checks.columns], rotation=35, ha="right")
    ax.set_yticks(range(len(checks)), checks.index)
    ax.set_xlabel("invariant")
    ax.set_ylabel("family (tiny random model)")
    ax.grid(False)
    plots.legend_below(fig, extra=[(status_patch(color), label)
                                   for label, color in zip(("held", "broken", "n/a"), STATUS_COLORS.values())])
    figure_data.record("invariant_matrix", pd.DataFrame(
        [(family, invariant, statuses[mark]) for family, row in checks.iterrows() for invariant, mark in row.items()],
        columns=figure_data.COLUMNS["invariant_matrix"]))
    return fig


def status_patch(color: str):
    """A legend handle: a square of ``color``."""
    from matplotlib.patches import Patch

    return Patch(facecolor=color)
