"""Where generated tokens look: attention fractions per layer (the paper's Sec. 4, Fig. 1, 4, 8).

:func:`run` describes each image once with attention recording switched on and writes tidy
rows to a :class:`~vlmnb.data.store.ResultStore` (so an interrupted run resumes):

- ``metric="fraction"``: per layer and span, the head-averaged share of attention that the
  generated tokens give to that span, averaged over the generation steps (column ``span``);
- ``metric="image_attention"``: per layer and image token (column ``token``), the
  head-averaged attention from the generated tokens, averaged over steps (maps, histograms);
- ``metric="tokens"``: the number of tokens in each span (``span``);
- ``metric="description"``: the generated text (``text``).

Which rows count as "the generated tokens": every generation step, i.e. the attention row of
the forward pass that produced generated token ``i`` (see :mod:`vlmnb.engine.record`). Step 0's
query is the last prompt position, so its "generated" share is zero by construction.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from vlmnb.data.store import ResultStore
from vlmnb.engine.record import Record
from vlmnb.experiments.paper import DEPTH, FRACTIONS
from vlmnb.experiments.units import by_image, key, run_units

SPANS = ("system", "image", "query", "generated")


def _unit(vlm, sample, prompt: str, max_new_tokens: int) -> list[dict]:
    inp = vlm.prepare(sample.image, prompt=prompt)
    out = vlm.generate(inp, max_new_tokens=max_new_tokens, record=Record(fractions=True, image_rows=True))
    rec = out.recording
    rows = [{"metric": "description", "text": out.text}]
    mean_fr = rec.fractions.mean(axis=1)  # (layers, spans)
    for li, layer in enumerate(rec.layers):
        for si, span in enumerate(rec.span_names):
            rows.append({"metric": "fraction", "layer": int(layer), "span": span, "value": float(mean_fr[li, si])})
    image_att = rec.image_rows.mean(axis=1)  # (layers, n_image)
    for li, layer in enumerate(rec.layers):
        for j, value in enumerate(image_att[li]):
            rows.append({"metric": "image_attention", "layer": int(layer), "token": j, "value": float(value)})
    for span, n in out.spans.lengths().items():
        rows.append({"metric": "tokens", "span": span, "value": float(n)})
    return rows


def run(vlm, samples: Sequence, store: ResultStore, *, prompt: str = "describe the image",
        max_new_tokens: int = 64, progress: bool = True) -> pd.DataFrame:
    """Describe every sample with recording on, one unit per image (config ``"baseline"``);
    units already in ``store`` are skipped. Returns the store's rows."""
    by_id = by_image(samples)

    def compute(model, image_id, config):
        return _unit(vlm, by_id[image_id], prompt, max_new_tokens)

    run_units(store, [key(vlm.name, image_id, "baseline") for image_id in by_id], compute,
              progress=progress, desc="describing with attention recorded")
    return store.frame()


def fraction_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (image, layer, span) with the attention ``fraction``."""
    df = frame[frame.metric == "fraction"][["image_id", "layer", "span", "value"]]
    return df.rename(columns={"value": "fraction"}).astype({"layer": int}).reset_index(drop=True)


def layer_bands(n_layers: int) -> dict[str, tuple[int, int]]:
    """The paper's layer bands (of 80 layers, Sec. 4 / Fig. 1) scaled to ``n_layers``: early 0-5,
    then 6-19, middle 20-40, late 41-79, each at least one layer wide (inclusive bounds)."""
    def at(fraction: float) -> int:
        return int(round(fraction * n_layers))

    early_last = FRACTIONS["image_share_high_layers"][1]
    mid_first, mid_last = FRACTIONS["image_share_mid_rise_layers"]
    early_end = max(0, at((early_last + 1) / DEPTH) - 1)
    mid_start = max(early_end + 1, at(mid_first / DEPTH))
    mid_end = max(mid_start, at((mid_last + 1) / DEPTH) - 1)
    return {
        "early": (0, early_end),
        "pre-middle": (early_end + 1, mid_start - 1),
        "middle": (mid_start, mid_end),
        "late": (mid_end + 1, n_layers - 1),
    }


def band_summary(frame: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Mean attention share per layer band and span (bands from :func:`layer_bands`)."""
    fr = fraction_table(frame)
    out = []
    for band, (lo, hi) in layer_bands(n_layers).items():
        if hi < lo:
            continue
        sel = fr[(fr.layer >= lo) & (fr.layer <= hi)]
        per_image = sel.groupby(["span", "image_id"]).fraction.mean().groupby("span").mean()
        out.append({"band": band, "layers": f"{lo}-{hi}", **{s: float(per_image.get(s, np.nan)) for s in SPANS}})
    return pd.DataFrame(out)


def token_share(frame: pd.DataFrame, skip_early: bool = True, n_layers: int | None = None) -> pd.DataFrame:
    """Per span: its share of all tokens vs its share of attention.

    Tokens are counted at the end of generation. Attention is averaged over images and over
    layers after the early band when ``skip_early`` (the paper's claim is about the layers
    "after the very first few").
    """
    tokens = frame[frame.metric == "tokens"].pivot_table(index="image_id", columns="span", values="value")
    token_frac = tokens.div(tokens.sum(axis=1), axis=0).mean()
    fr = fraction_table(frame)
    if skip_early:
        n_layers = n_layers or int(fr.layer.max()) + 1
        first = layer_bands(n_layers)["early"][1] + 1
        fr = fr[fr.layer >= first]
    att = fr.groupby(["span", "image_id"]).fraction.mean().groupby("span").mean()
    return pd.DataFrame({"tokens (mean count)": tokens.mean(), "token share": token_frac,
                         "attention share": att}).reindex(list(SPANS))


def image_attention(frame: pd.DataFrame, image_id) -> np.ndarray:
    """(n_layers, n_image_tokens) head- and step-averaged attention to each image token."""
    df = frame[(frame.metric == "image_attention") & (frame.image_id == str(image_id))]
    if df.empty:
        raise ValueError(f"no image attention stored for image {image_id!r}")
    return df.pivot_table(index="layer", columns="token", values="value").to_numpy()


def claims(frame: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """The paper's Sec. 4 observations, checked on this run: claim, paper, ours, held."""
    bands = band_summary(frame, n_layers).set_index("band")
    shares = token_share(frame, n_layers=n_layers)
    img = bands["image"]
    rest = [b for b in ("pre-middle", "middle", "late") if b in img.index]
    early_high = bool(img["early"] > max(img[b] for b in rest)) if rest else False
    mid_rise = bool("middle" in img and "pre-middle" in img and img["middle"] > img["pre-middle"])
    q_tok, q_att = shares.loc["query", "token share"], shares.loc["query", "attention share"]
    fmt = "{:.2f}".format
    (early_a, early_b), (mid_a, mid_b) = FRACTIONS["image_share_high_layers"], FRACTIONS["image_share_mid_rise_layers"]
    tok_max, att_min = FRACTIONS["query_token_share_max"], FRACTIONS["query_attention_share_min"]
    return pd.DataFrame([
        {"claim": "image share is highest in the first layers",
         "paper": f"layers {early_a}-{early_b} of {DEPTH} (InternVL2-76B)",
         "ours": f"early {fmt(img['early'])} vs max later band {fmt(max(img[b] for b in rest)) if rest else 'n/a'}",
         "held": early_high},
        {"claim": "image share rises again in the middle layers",
         "paper": f"layers {mid_a}-{mid_b} of {DEPTH}",
         "ours": f"middle {fmt(img.get('middle', np.nan))} vs before {fmt(img.get('pre-middle', np.nan))}",
         "held": mid_rise},
        {"claim": f"query tokens: < {tok_max:.0%} of the tokens",
         "paper": f"< {fmt(tok_max)}", "ours": fmt(q_tok), "held": bool(q_tok < tok_max)},
        {"claim": f"query tokens take > {att_min:.0%} of the attention (after the first layers)",
         "paper": f"> {fmt(att_min)}", "ours": fmt(q_att), "held": bool(q_att > att_min)},
    ])
