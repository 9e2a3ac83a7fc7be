"""Run many knockout configurations over many images, resumably, and score them.

A :class:`Config` names one way of generating: the unmodified ``baseline``, one of the
paper's three knockouts (``img->gen``, ``img->query``, ``img->query+gen``) in all layers,
from a layer on, or outside a window of layers, or ``top-k`` (generated tokens see only the
k% most attended image tokens of each layer, chapter 4). :func:`run` generates every
configuration for every image into a :class:`~vlmnb.data.store.ResultStore` (one unit per image
and configuration, so reruns skip finished work); :func:`score` compares each configuration's
description with the baseline's using a judge; :func:`claims` checks the paper's findings
(:func:`knockout_claims` for chapter 2, :func:`pruning_claims` for chapter 4).

The baseline unit also stores, per layer and image token, the attention the generated tokens
gave to that token (``metric="image_attention"``): top-k configurations are built from it,
so they can be computed (or resumed) without re-running the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from vlmnb.data.store import ResultStore
from vlmnb.engine import batched
from vlmnb.engine.knockout import FromLayer, Knockout, Outside, from_layer, outside
from vlmnb.engine.record import Record
from vlmnb.engine.topk import topk_dropped
from vlmnb.experiments import paper
from vlmnb.experiments.stats import summarize
from vlmnb.experiments.units import by_image, key, run_units
from vlmnb.judge import compare_many, get_judge

#: the paper's three knockout configurations: which queries lose sight of the image
KINDS = {
    "img->gen": "generated",
    "img->query": "query",
    "img->query+gen": ("query", "generated"),
}


@dataclass(frozen=True)
class Config:
    """One generation setting of a sweep.

    Args:
        kind: "baseline", one of :data:`KINDS`, or "top-k".
        layers: for knockouts: "all", ``from_layer(l)`` or ``outside(a, b)``.
        k: for "top-k": the fraction of image tokens each layer keeps (0-1].
    """

    kind: str
    layers: Any = "all"
    k: float | None = None

    def __post_init__(self):
        if self.kind not in ("baseline", "top-k", *KINDS):
            raise ValueError(f"unknown configuration kind {self.kind!r}; use baseline, top-k or one of {list(KINDS)}")
        if self.kind == "top-k" and not (self.k is not None and 0 < self.k <= 1):
            raise ValueError(f"top-k needs 0 < k <= 1, got {self.k!r}")
        if not (self.layers == "all" or isinstance(self.layers, (FromLayer, Outside))):
            raise ValueError(f"Config layers must be 'all', from_layer(l) or outside(a, b), got {self.layers!r}")

    @property
    def scope(self) -> str:
        """"all", "from" (layer l and deeper) or "outside" (all but a window)."""
        if isinstance(self.layers, FromLayer):
            return "from"
        if isinstance(self.layers, Outside):
            return "outside"
        return "all"

    @property
    def start(self) -> int | None:
        """For "from" knockouts: the first knocked-out layer, else None."""
        return self.layers.start if isinstance(self.layers, FromLayer) else None

    @property
    def window(self) -> tuple[int, int] | None:
        """For "outside" knockouts: the open window ``(first, last)``, else None."""
        return (self.layers.first, self.layers.last) if isinstance(self.layers, Outside) else None

    @property
    def name(self) -> str:
        """The configuration's name in the store's ``config`` column, e.g. "img->gen from 12"."""
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "top-k":
            return f"top-k {self.k:.3g}"
        if self.scope == "from":
            return f"{self.kind} from {self.start}"
        if self.scope == "outside":
            return f"{self.kind} outside {self.window[0]}-{self.window[1]}"
        return f"{self.kind} all"

    def knockouts(self, image_attention: np.ndarray | None = None,
                  image_positions: np.ndarray | None = None) -> list[Knockout]:
        """The engine knockouts for this configuration (top-k needs the baseline's attention)."""
        if self.kind == "baseline":
            return []
        if self.kind == "top-k":
            if image_attention is None or image_positions is None:
                raise ValueError("a top-k configuration needs the baseline's image attention")
            dropped = topk_dropped(image_attention, image_positions, self.k)
            return [Knockout(src=dropped, dst="generated", layers="all")] if dropped else []
        return [Knockout(src="image", dst=KINDS[self.kind], layers=self.layers)]


def knockout_configs(n_layers: int, stride: int | None = None, window: tuple[int, int] | None = None,
                     kinds: Iterable[str] = tuple(KINDS)) -> list[Config]:
    """The paper's Fig. 2 grid: baseline; each kind in all layers; from every ``stride``-th
    layer; and outside ``window`` (every layer not in [a, b]) when given."""
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if window is not None:
        a, b = window
        if not (0 <= a <= b < n_layers):
            raise ValueError(f"window {window} must satisfy 0 <= a <= b < {n_layers} (the model's layers)")
    configs = [Config("baseline")]
    for kind in kinds:
        configs.append(Config(kind))
        if stride:
            configs += [Config(kind, from_layer(layer)) for layer in range(stride, n_layers, stride)]
        if window is not None:
            configs.append(Config(kind, outside(*window)))
    return configs


def topk_configs(ks: Sequence[float]) -> list[Config]:
    """Baseline plus one top-k configuration per fraction in ``ks``."""
    return [Config("baseline")] + [Config("top-k", k=float(k)) for k in ks]


def _unit_rows(config: Config, out) -> list[dict]:
    """The store rows of one configuration's generation (the baseline adds its image attention)."""
    rows = [{"metric": "description", "text": out.text, "value": float(len(out.token_ids))}]
    if config.kind == "baseline":
        att = out.recording.image_rows.mean(axis=1)  # (layers, n_image)
        for layer, values in zip(out.recording.layers, att):
            rows += [{"metric": "image_attention", "layer": int(layer), "token": j, "value": float(v)}
                     for j, v in enumerate(values)]
    return rows


def baseline_record() -> Record:
    """What the baseline records: per layer, the attention of the generated tokens to each
    image token (top-k configurations are built from it)."""
    return Record(fractions=False, image_rows=True)


def _generate_unit(vlm, inp, config: Config, max_new_tokens: int, baseline_attention=None) -> list[dict]:
    if config.kind == "baseline":
        out = vlm.generate(inp, max_new_tokens=max_new_tokens, record=baseline_record())
        return _unit_rows(config, out)
    knockouts = config.knockouts(baseline_attention, inp.spans.image)
    out = vlm.generate(inp, max_new_tokens=max_new_tokens, knockout=knockouts or None)
    return _unit_rows(config, out)


def _baseline_attention(store: ResultStore, model: str, image_id: str) -> np.ndarray:
    df = store.frame()
    df = df[(df.model == model) & (df.image_id == image_id) & (df.config == "baseline")
            & (df.metric == "image_attention")]
    return df.pivot_table(index="layer", columns="token", values="value").to_numpy()


def sorted_configs(configs: Sequence[Config]) -> list[Config]:
    """The configurations in the order :func:`run` generates them: the baseline first (added
    when missing), the others as given. Two configurations with one name are an error."""
    configs = list(configs)
    if not any(c.kind == "baseline" for c in configs):
        configs = [Config("baseline")] + configs
    configs.sort(key=lambda c: c.kind != "baseline")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError("two configurations of the sweep have the same name")
    return configs


def run(vlm, samples: Sequence, configs: Sequence[Config], store: ResultStore, *,
        prompt: str = "describe the image", max_new_tokens: int = 64, progress: bool = True,
        batch: bool = True, max_batch_rows: int = 32) -> pd.DataFrame:
    """Generate every configuration for every sample into ``store``; returns the store's rows.

    One unit per (image, configuration), through the store's resumable loop
    (:func:`vlmnb.experiments.units.run_units`): units already in the store are skipped, so an
    interrupted sweep resumes without loss or duplicates; a part file is written per image.
    The baseline is always run first for each image (configurations are judged against it,
    and top-k ones are built from its attention).

    ``batch=True`` (default) generates the configurations of one image together: the
    system and image tokens run once, and up to ``max_batch_rows`` configurations decode
    as the rows of one batch (see :mod:`vlmnb.engine.batched`); the texts are those of
    ``batch=False``, which runs one :meth:`~vlmnb.engine.vlm.VLM.generate` per configuration.
    """
    if max_batch_rows < 1:
        raise ValueError(f"max_batch_rows must be at least 1, got {max_batch_rows}")
    configs = sorted_configs(configs)
    if batch:
        _run_batched(vlm, by_image(samples), configs, store, prompt, max_new_tokens, progress, max_batch_rows)
    else:
        _run_sequential(vlm, by_image(samples), configs, store, prompt, max_new_tokens, progress)
    return store.frame()


def _run_sequential(vlm, by_id: dict, configs: list[Config], store, prompt, max_new_tokens, progress) -> None:
    by_name = {c.name: c for c in configs}
    image: dict = {}  # the current image's input and baseline attention, made when first needed

    def compute(model, image_id, config):
        if image.get("id") != image_id:
            image.clear()
            image["id"] = image_id
        config = by_name[config]
        if "inp" not in image:
            image["inp"] = vlm.prepare(by_id[image_id].image, prompt=prompt)
        if config.kind == "top-k" and "attention" not in image:
            image["attention"] = _baseline_attention(store, vlm.name, image_id)
        return _generate_unit(vlm, image["inp"], config, max_new_tokens, image.get("attention"))

    keys = [key(vlm.name, image_id, c.name) for image_id in by_id for c in configs]
    run_units(store, keys, compute, progress=progress, desc="generating", part_per="image_id")


def image_batches(configs: Sequence[Config], max_batch_rows: int) -> list[list[Config]]:
    """How :func:`run` groups one image's configurations into batches.

    The baseline (when listed) is the first row of the first batch, which it shares with the
    configurations that do not need its attention; top-k configurations, built from the
    baseline's attention, come in later batches. Every batch has at most ``max_batch_rows``.
    """
    head = [c for c in configs if c.kind == "baseline"]
    plain = [c for c in configs if c.kind not in ("baseline", "top-k")]
    topk = [c for c in configs if c.kind == "top-k"]
    first = head + plain
    batches = [first[i:i + max_batch_rows] for i in range(0, len(first), max_batch_rows)]
    batches += [topk[i:i + max_batch_rows] for i in range(0, len(topk), max_batch_rows)]
    return batches


def _run_batched(vlm, by_id: dict, configs: list[Config], store, prompt, max_new_tokens, progress,
                 max_batch_rows) -> None:
    # the units in batch order: the batches are made of each image's units not yet stored
    keys, batch_of = [], {}
    for image_id in by_id:
        todo = [c for c in configs if not store.done(key(vlm.name, image_id, c.name))]
        for group in image_batches(todo, max_batch_rows):
            for c in group:
                keys.append(key(vlm.name, image_id, c.name))
                batch_of[(image_id, c.name)] = group
    image: dict = {}  # the current image's input, shared prefix and baseline attention
    ready: dict = {}  # rows of the batch's other configurations, computed with the first

    def compute(model, image_id, config):
        if (image_id, config) in ready:
            return ready.pop((image_id, config))
        if image.get("id") != image_id:
            inp = vlm.prepare(by_id[image_id].image, prompt=prompt)
            # the system and image tokens run once per image, for every batch of it
            prefix = batched.compute_prefix(vlm, inp) if batched.supports_prefix(vlm) else False
            image.clear()
            image.update(id=image_id, inp=inp, prefix=prefix)
        group, inp = batch_of[(image_id, config)], image["inp"]
        if any(c.kind == "top-k" for c in group) and "attention" not in image:
            image["attention"] = _baseline_attention(store, vlm.name, image_id)
        row_knockouts = [c.knockouts(image.get("attention"), inp.spans.image) for c in group]
        record = baseline_record() if group[0].kind == "baseline" else None
        outs = batched.generate_rows(vlm, inp, row_knockouts, max_new_tokens, record=record,
                                     prefix=image["prefix"], record_rows=[0] if record is not None else None)
        for c, out in zip(group, outs):
            ready[(image_id, c.name)] = _unit_rows(c, out)
        return ready.pop((image_id, config))

    run_units(store, keys, compute, progress=progress, desc="generating", part_per="image_id")


def config_table(configs: Sequence[Config]) -> pd.DataFrame:
    """Columns describing each configuration (kind, scope, start, window, k) by name."""
    return pd.DataFrame([{"config": c.name, "kind": c.kind, "scope": c.scope, "start": c.start,
                          "window": None if c.window is None else f"{c.window[0]}-{c.window[1]}", "k": c.k}
                         for c in configs])


def descriptions(frame: pd.DataFrame) -> pd.DataFrame:
    """(image_id, config) -> generated text, one row each."""
    df = frame[frame.metric == "description"][["model", "image_id", "config", "text"]]
    return df.reset_index(drop=True)


def score(frame: pd.DataFrame, configs: Sequence[Config], judge: Any = None, progress: bool = True) -> pd.DataFrame:
    """Judge every configuration's description against the same image's baseline.

    Returns one row per (image, configuration) with precision, recall, f1, tp, fp, fn, the
    judge's name and whether the judgement succeeded (failures are NaN, never 0).
    """
    judge = get_judge(judge)
    text = descriptions(frame).set_index(["image_id", "config"]).text
    table = config_table(configs).set_index("config")
    pairs, keys = [], []
    for (image_id, config), modified in text.items():
        if config == "baseline" or config not in table.index:
            continue
        pairs.append((text[(image_id, "baseline")], modified))
        keys.append((image_id, config))
    results = compare_many(pairs, judge=judge, progress=progress)
    rows = []
    for (image_id, config), res in zip(keys, results):
        rows.append({"image_id": image_id, "config": config, **table.loc[config].to_dict(),
                     "precision": res.precision, "recall": res.recall, "f1": res.f1,
                     "tp": res.tp, "fp": res.fp, "fn": res.fn, "ok": res.ok, "judge": res.judge,
                     "original_objects": list(res.original_objects), "modified_objects": list(res.modified_objects)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- windows
#: the paper's windows of middle layers, by model (hub ids as published; defined in paper.py)
PAPER_WINDOWS = paper.PAPER_WINDOWS


def image_share_by_layer(frame: pd.DataFrame) -> pd.Series:
    """Per layer, the baseline's total attention to image tokens, averaged over images."""
    df = frame[(frame.config == "baseline") & (frame.metric == "image_attention")]
    if df.empty:
        raise ValueError("the store has no baseline image attention yet: run the baseline first")
    per_image = df.groupby(["image_id", "layer"]).value.sum()
    return per_image.groupby("layer").mean()


def choose_window(model_name: str, frame: pd.DataFrame, n_layers: int) -> tuple[tuple[int, int], str]:
    """The middle-layer window to keep open in the "outside" knockouts, and why.

    The paper's own window for its models; otherwise, from this model's baseline: the
    contiguous window of about a quarter of the layers (the paper's 20-40 of 80), not
    touching the first layer, with the largest mean image-attention share.
    """
    if model_name in PAPER_WINDOWS:
        return PAPER_WINDOWS[model_name], "the paper's window for this model"
    share = image_share_by_layer(frame).reindex(range(n_layers)).fillna(0).to_numpy()
    first, last = paper.KNOCKOUT_WINDOW["InternVL2-76B"]["window"]
    width = max(1, int(round(n_layers * (last - first) / paper.DEPTH)))
    best, best_mean = (1, min(width, n_layers - 1)), -1.0
    for a in range(1, n_layers - width + 1):
        mean = share[a:a + width].mean()
        if mean > best_mean:
            best, best_mean = (a, a + width - 1), mean
    return best, f"the {width}-layer window with the most image attention in this model's baseline"


def summarize_scores(scores: pd.DataFrame, by=("kind", "scope", "start"), seed: int = 0) -> pd.DataFrame:
    """Mean F1 with a 95% bootstrap interval per group (failed judgements dropped)."""
    ok = scores[scores.ok.astype(bool)].copy()
    by = [b for b in by if b in ok.columns]
    ok[by] = ok[by].astype(object).where(ok[by].notna(), "-")
    return summarize(ok, by=by, value="f1")


def judge_for(images: Any, judge: Any = "auto") -> Any:
    """``"auto"``: the exact judge for the toy scenes (closed vocabulary), else the default judge."""
    if judge != "auto":
        return judge
    return "exact" if images == "toy" else None


def rise_layer(from_summary: pd.DataFrame, kind: str, level: float = 0.5) -> int | None:
    """The first starting layer l at which the mean F1 of ``kind`` reaches ``level``."""
    sub = from_summary[from_summary.kind == kind].sort_values("start")
    hit = sub[sub["mean"] >= level]
    return None if hit.empty else int(hit["start"].iloc[0])


def knockout_claims(all_summary: pd.DataFrame, from_summary: pd.DataFrame, n_layers: int,
                    window: tuple[int, int] | None) -> pd.DataFrame:
    """The paper's Sec. 4.3-4.4 findings, checked on this run (claim, paper, ours, held).

    Thresholds (stated, not tuned): "keeps part of the description" = F1 95% interval above
    0.1; "destroys it" = mean F1 below 0.1; "close to the original" = mean F1 of at least
    0.75 (the paper's 0.75-0.81 sits near its judge's ceiling of about 0.8); the "rise" is
    the first starting layer where mean F1 reaches 0.5, compared with the paper's 20-40 of 80.
    """
    def get(kind, scope):
        row = all_summary[(all_summary.kind == kind) & (all_summary.scope == scope)]
        return None if row.empty else row.iloc[0]

    f1_all = paper.KNOCKOUT_F1_ALL_LAYERS["InternVL2-76B"]
    open_window = paper.KNOCKOUT_WINDOW["InternVL2-76B"]
    (a, b), (f1_low, f1_high) = open_window["window"], open_window["f1_range"]
    rise = paper.KNOCKOUT_FROM_LAYER["InternVL2-76B"]["sharp_rise_between"]
    rows = []
    r = get("img->gen", "all")
    if r is not None:
        rows.append({"claim": "KO img->gen in all layers keeps part of the description",
                     "paper": f"F1 ~{f1_all['img->gen']:.2f} (InternVL2-76B)",
                     "ours": f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]", "held": bool(r["ci_low"] > 0.1)})
    for kind in ("img->query", "img->query+gen"):
        r = get(kind, "all")
        if r is not None:
            rows.append({"claim": f"KO {kind} in all layers destroys the description",
                         "paper": f"F1 ~{f1_all[kind]:g}", "ours": f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
                         "held": bool(r["mean"] < 0.1)})
    if window is not None:
        for kind in KINDS:
            r = get(kind, "outside")
            if r is not None:
                # the window is each model's own: it goes with the value, the claim reads the same for all
                rows.append({"claim": f"KO {kind} outside a middle window keeps the description",
                             "paper": f"F1 {f1_low}-{f1_high} (window {a}-{b} of {paper.DEPTH})",
                             "ours": f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                                     f"(window {window[0]}-{window[1]} of {n_layers})",
                             "held": bool(r["mean"] >= f1_low)})
    lo, hi = paper.rise_layers(n_layers)
    for kind in KINDS:
        layer = rise_layer(from_summary, kind)
        if kind in set(from_summary.kind):
            rows.append({"claim": f"KO {kind} from layer l: F1 rises in the middle layers",
                         "paper": f"sharp rise between layers {rise[0]} and {rise[1]} of {paper.DEPTH}",
                         "ours": ("never reaches 0.5" if layer is None else f"F1 >= 0.5 from layer {layer}")
                                 + f" (the paper's layers at this depth: {lo}-{hi} of {n_layers})",
                         "held": layer is not None and lo <= layer <= hi})
    return pd.DataFrame(rows)


@dataclass
class KnockoutStudy:
    """Chapter 2's experiment on one model: the rows generated, their scores, mean F1 for all
    layers / outside the window (``summary``) and by starting layer (``from_summary``), the
    window kept open and why, and the judge's name."""

    frame: pd.DataFrame
    scores: pd.DataFrame
    summary: pd.DataFrame
    from_summary: pd.DataFrame
    window: tuple[int, int]
    why: str
    judge_name: str

    def claims(self, n_layers: int) -> pd.DataFrame:
        """:func:`knockout_claims` of this study."""
        return knockout_claims(self.summary, self.from_summary, n_layers, self.window)


def knockout_study(vlm, samples: Sequence, store: ResultStore, *, stride: int = 1,
                   window: tuple[int, int] | str = "auto", judge: Any = None, prompt: str = "describe the image",
                   max_new_tokens: int = 64) -> KnockoutStudy:
    """The baseline, the window (``"auto"``: :func:`choose_window`), every knockout configuration
    (:func:`knockout_configs` with ``stride``), their scores and summaries: chapter 2 on ``vlm``."""
    kw = dict(prompt=prompt, max_new_tokens=max_new_tokens)
    frame = run(vlm, samples, [Config("baseline")], store, **kw)
    if window == "auto":
        window, why = choose_window(vlm.name, frame, vlm.num_layers)
    else:
        why = "given as a parameter"
    window = tuple(window)
    configs = knockout_configs(vlm.num_layers, stride=stride, window=window)
    frame = run(vlm, samples, configs, store, **kw)
    scores = score(frame, configs, judge=judge)
    summary = summarize_scores(scores[scores.scope.isin(["all", "outside"])], by=("kind", "scope"))
    from_scores = scores[scores.scope.isin(["all", "from"])].assign(start=lambda d: d.start.fillna(0).astype(int))
    from_summary = summarize_scores(from_scores, by=("kind", "start"))
    return KnockoutStudy(frame, scores, summary, from_summary, window, why, str(scores.judge.iloc[0]))


# ----------------------------------------------------------------------------- top-k (chapter 4)
def topk_tokens(k: float, n_image: int) -> int:
    """How many image tokens a top-``k`` configuration keeps per layer (as :func:`topk_dropped`)."""
    return max(1, int(round(float(k) * int(n_image))))


def pruning_claims(k_summary: pd.DataFrame, n_image: int,
                   k_main: float = paper.PRUNING["InternVL2-76B"]["plateau_k"]) -> pd.DataFrame:
    """The paper's Sec. 5 / Fig. 9 / A7 findings, checked on this run (claim, paper, ours, held).

    ``k_summary``: mean F1 with its interval per ``k`` (``summarize_scores(scores, by=("k",))``).
    Thresholds, fixed in advance: "most objects kept" = mean F1 at k=5% of at least 0.8 (the
    paper's LLaVA-1.5 level, Fig. A7); "plateau" = F1 at 5% within 0.1 of the best F1 at any
    larger k below 100%; "more tokens help" = F1 at the largest k at least F1 at the smallest.
    """
    s = k_summary.assign(k=k_summary["k"].astype(float)).sort_values("k").set_index("k")
    llava, plateau_k = paper.PRUNING["LLaVA-1.5-7B"], paper.PRUNING["InternVL2-76B"]["plateau_k"]
    rows = []
    if k_main in s.index:
        main = s.loc[k_main]
        n = topk_tokens(k_main, n_image)
        rows.append({"claim": f"top {k_main * 100:g}% of image tokens ({n} of {n_image}) keep most objects",
                     "paper": f"F1 > {llava['f1_above']:g} with a few % (LLaVA-1.5: {plateau_k * 100:g}% = "
                              f"{llava['tokens_at_5pct']} of {llava['image_tokens']} tokens, Fig. A7)",
                     "ours": f"F1 {main['mean']:.2f} [{main['ci_low']:.2f}, {main['ci_high']:.2f}]",
                     "held": bool(main["mean"] >= llava["f1_above"])})
        larger = s[(s.index > k_main) & (s.index < 1)]
        if len(larger):
            best = float(larger["mean"].max())
            rows.append({"claim": f"F1 plateaus by k = {k_main * 100:g}%",
                         "paper": f"plateau from ~{plateau_k * 100:g}% (InternVL2-76B, Fig. 9)",
                         "ours": f"F1 {main['mean']:.2f} at {k_main * 100:g}% vs best {best:.2f} above it",
                         "held": bool(main["mean"] >= best - 0.1)})
    if len(s) >= 2:
        lo, hi = s.iloc[0], s.iloc[-1]
        rows.append({"claim": "more image tokens do not lower F1",
                     "paper": "F1 rises with k, then flat (Fig. 9, A7)",
                     "ours": f"F1 {lo['mean']:.2f} at {s.index[0] * 100:g}% -> {hi['mean']:.2f} at {s.index[-1] * 100:g}%",
                     "held": bool(hi["mean"] >= lo["mean"])})
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "held"])


def claims(summary: pd.DataFrame, *args, **kwargs) -> pd.DataFrame:
    """The sweep's claims, checked on this run (claim, paper, ours, held).

    A summary by ``k`` (:func:`summarize_scores` of top-k scores, chapter 4) gives the pruning
    claims, ``claims(k_summary, n_image, k_main=0.05)`` = :func:`pruning_claims`; any other
    summary the knockout claims, ``claims(all_summary, from_summary, n_layers, window)`` =
    :func:`knockout_claims`.
    """
    if "k" in summary.columns and "kind" not in summary.columns:
        return pruning_claims(summary, *args, **kwargs)
    return knockout_claims(summary, *args, **kwargs)
