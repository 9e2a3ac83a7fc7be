"""Qwen2.5-VL (``qwen2_5_vl``): Qwen2-VL's spans, geometry and positions (windowed attention in
the vision encoder only).
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.qwen2_vl import build_qwen, geometry, markers
from vlmnb.engine.families.qwen2_vl import reference_sizes as qwen2_vl_reference_sizes


def build_tiny(seed: int, view: int):
    """A tiny random Qwen2.5-VL."""
    return build_qwen(seed, view, v25=True)


def reference_sizes(config, processor):
    """Qwen2.5-VL: Qwen2-VL's sizes, 112 px attention windows in the vision encoder."""
    config, processor = qwen2_vl_reference_sizes(config, processor)
    config.vision_config.window_size = 112
    return config, processor


FAMILY = Family(name="qwen2_5_vl", geometry=geometry, build_tiny=build_tiny, markers=markers, mrope=True,
                hub_ids=("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
                reference_sizes=reference_sizes)
