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

# public name -> module that defines it (the layers: core, toy, engine, data, judge, experiments, views, cli)
_EXPORTS = {
    # engine
    "load": "engine.vlm", "VLM": "engine.vlm", "Prepared": "engine.spans", "Generation": "engine.vlm",
    "ModelNotAvailable": "engine.loading", "Intervention": "engine.intervention",
    "Spans": "engine.spans", "Geometry": "engine.geometry",
    "Knockout": "engine.knockout", "from_layer": "engine.knockout", "outside": "engine.knockout",
    "Record": "engine.record", "Recording": "engine.record",
    "CompressedContext": "engine.compress",
    # judges, data, experiments, views
    "compare": "judge.resolve", "JudgeResult": "judge.result", "LLMJudge": "judge.llm",
    "OfflineJudge": "judge.offline", "ExactJudge": "judge.exact",
    "ResultStore": "data.store",
    "bootstrap_ci": "experiments.stats",
    "explore": "views.explorer", "explore_sample": "views.explorer",
}

# Modules reachable as attributes of ``vlmnb`` (imported on first use, like the names above):
# the layers, and the experiment and view modules the chapters use (``from vlmnb import sweep``).
_SUBMODULES = {
    "core": "core", "toy": "toy", "engine": "engine", "data": "data", "judge": "judge",
    "experiments": "experiments", "views": "views", "cli": "cli",
    "fractions": "experiments.fractions", "sweep": "experiments.sweep", "localize": "experiments.localize",
    "reprompt": "experiments.reprompt", "paper": "experiments.paper", "stats": "experiments.stats",
    "plots": "views.plots", "explorer": "views.explorer", "store": "data.store",
    "tables": "views.tables", "downloads": "views.downloads", "side_by_side": "views.side_by_side",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"vlmnb.{_SUBMODULES[name]}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmnb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vlmnb.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
