"""The model families vlmnb supports: one module each, one :class:`Family` entry per module.

Everything family-specific lives in the family's module: its ``config.model_type``, image
placeholder and begin/end-of-image markers (the span rule), its token geometry, whether it may
share a cached image prefix, whether its text positions are 3-D (M-RoPE), and its tiny
random model. Every other part of the engine asks this registry.

Adding a family: write ``families/<name>.py`` defining ``FAMILY = Family(...)`` (the geometry
toolkit is :mod:`vlmnb.engine.geometry`, the tiny-model parts :mod:`vlmnb.engine.tinykit`), then
import it below and add it to ``_MODULES``.
"""
from __future__ import annotations

from vlmnb.engine.families import (aya_vision, cohere2_vision, deepseek_vl, fast_vlm, gemma3, glm4v, got_ocr2,
                                   idefics2, idefics3, internvl, internvl2, janus, llava, llava_next, llava_next_video,
                                   llava_onevision, mistral3, ovis2, paligemma, perception_lm, qwen2_5_vl, qwen2_vl,
                                   qwen3_vl, smolvlm, video_llava, vipllava)
from vlmnb.engine.families.base import Family

# the registry, in the book's order: one line per family
_MODULES = (
    llava,
    llava_next,
    llava_onevision,
    qwen2_vl,
    qwen2_5_vl,
    qwen3_vl,
    glm4v,
    internvl,
    internvl2,
    idefics3,
    smolvlm,
    gemma3,
    mistral3,
    vipllava,
    llava_next_video,
    video_llava,
    deepseek_vl,
    janus,
    ovis2,
    idefics2,
    aya_vision,
    cohere2_vision,
    paligemma,
    got_ocr2,
    perception_lm,
    fast_vlm,
)

#: family name -> its entry
REGISTRY: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}
#: the supported family names, in registry order
NAMES: tuple[str, ...] = tuple(REGISTRY)
_BY_MODEL_TYPE = {model_type: f for f in REGISTRY.values() for model_type in f.model_types}

__all__ = ["Family", "REGISTRY", "NAMES", "get", "detect"]


def get(name: str) -> Family:
    """The entry of family ``name``; ValueError naming the supported families if there is none."""
    family = REGISTRY.get(name)
    if family is None:
        raise ValueError(f"unknown family {name!r}; supported families: {', '.join(NAMES)}")
    return family


def detect(config) -> Family:
    """The family of a model config (by ``config.model_type``); ValueError if unsupported."""
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise ValueError(f"unsupported model_type {model_type!r}; supported families: {', '.join(NAMES)}")
    return family
