"""SmolVLM (``smolvlm``): Idefics3's spans and geometry.
"""
from __future__ import annotations

from vlmnb.engine.families.base import Family
from vlmnb.engine.families.idefics3 import build_idefics3, geometry, markers


def build_tiny(seed: int, view: int):
    """A tiny random SmolVLM."""
    return build_idefics3(seed, view, smol=True)


FAMILY = Family(name="smolvlm", geometry=geometry, build_tiny=build_tiny, markers=markers)
