"""Training curves of the embedded models: per-task answer losses read from a training log
(the toy's ``log.jsonl``, toy-smollm's ``log.csv``)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CURVE_COLUMNS = {
    "loss_description": "description",
    "loss_position_lookup": "position look-up",
    "first_existence": "yes/no: existence",
    "first_color": "yes/no: colour",
    "first_position": "yes/no: position",
    "first_count": "yes/no: count",
}


def training_curves(log_jsonl: str | Path, window: int = 50) -> pd.DataFrame:
    """Per-task answer losses of a training log (the toy's ``log.jsonl`` or toy-smollm's
    ``log.csv``), averaged over windows of
    ``window`` steps: one row per window (``step`` = its last step). Description and look-up
    columns are the mean loss per answer token; yes/no columns are the loss of the first answer
    token ("yes"/"no") alone, whose chance level is ln 2."""
    if Path(log_jsonl).suffix == ".csv":  # toy-smollm's log (vlmnb.toy.train_smollm)
        frame = pd.read_csv(log_jsonl)
    else:
        frame = pd.DataFrame([json.loads(line) for line in Path(log_jsonl).read_text().splitlines() if line.strip()])
    if frame.empty:
        raise ValueError(f"{log_jsonl} has no training steps")
    frame["window"] = (frame["step"] - 1) // window
    columns = [c for c in CURVE_COLUMNS if c in frame]
    out = frame.groupby("window").agg({"step": "max", "lr": "last", **{c: "mean" for c in columns}})
    return out.reset_index(drop=True).round(5)


def stage_curves(logs: list[str | Path], window: int = 50, before: pd.DataFrame | None = None) -> pd.DataFrame:
    """The curves of training stages run one after the other (each fine-tuning the last), as one
    frame: column ``stage`` numbers the stages from 1 and ``step`` counts on across them.

    ``before``: curves of earlier stages (a frame with ``stage`` and ``step``) that ``logs`` continue.
    """
    frames = [] if before is None else [before]
    stage = 0 if before is None else int(before["stage"].max())
    offset = 0 if before is None else int(before["step"].max())
    for log in logs:
        stage += 1
        curves = training_curves(log, window=window)
        curves.insert(0, "stage", stage)
        curves["step"] += offset
        offset = int(curves["step"].max())
        frames.append(curves)
    return pd.concat(frames, ignore_index=True)
