"""Qwen2.5-VL (``qwen2_5_vl``): Qwen2-VL's spans, geometry and positions (windowed attention in
the vision encoder only).
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.qwen2_vl import build_qwen, geometry, markers


def build_tiny(seed: int, view: int):
    """A tiny random Qwen2.5-VL."""
    return build_qwen(seed, view, v25=True)


FAMILY = Family(name="qwen2_5_vl", geometry=geometry, build_tiny=build_tiny, markers=markers, mrope=True)
