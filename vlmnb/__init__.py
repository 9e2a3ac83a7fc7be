"""vlmnb: attention knockout, recording and localisation for vision-language models.

A companion package to the book reproducing Kaduri, Bagon & Dekel, "What's in the Image?
A Deep-Dive into the Vision of Vision Language Models". Typical use::

    import vlmnb
    vlm = vlmnb.load("toy")                      # or "llava-hf/llava-1.5-7b-hf", ...
    inp = vlm.prepare(image, prompt="describe the image")
    with_ko = vlm.generate(inp, knockout=vlmnb.Knockout("image", "generated", vlmnb.from_layer(4)))

Public names are imported lazily so that ``import vlmnb`` stays fast and a notebook that
only needs the store or the judge does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # engine
    "load": "models", "VLM": "models", "Prepared": "spans", "Generation": "models",
    "ModelNotAvailable": "models", "Intervention": "models",
    "Spans": "spans", "Geometry": "spans",
    "Knockout": "knockout", "from_layer": "knockout", "outside": "knockout",
    "Record": "record", "Recording": "record",
    # experiments
    "compare": "judge", "JudgeResult": "judge", "LLMJudge": "judge",
    "OfflineJudge": "judge", "ExactJudge": "judge",
    "ResultStore": "store",
    "bootstrap_ci": "stats",
    "explore": "explorer", "explore_sample": "explorer",
    "CompressedContext": "compress",
}

# Submodules that are part of the public API (imported on first use, like the names above).
_SUBMODULES = {"sweep", "fractions", "plots", "data", "judge", "store", "stats", "paper", "toy", "mme",
               "localize", "segment", "reprompt", "batched", "explorer", "tiny", "spans", "models",
               "knockout", "record", "book", "compress", "reprompt"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"vlmnb.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmnb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vlmnb.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
