"""The judge's packaged files: the LLM prompt, its worked examples and the hand-labelled pairs.

They live in ``vlmnb/judge/prompts/`` and ship with the package (``pyproject.toml`` lists them).
"""
from __future__ import annotations

from importlib import resources

__all__ = ["packaged_text"]


def packaged_text(name: str) -> str:
    """The text of ``vlmnb/judge/prompts/<name>`` as installed with the package."""
    return resources.files("vlmnb.judge").joinpath("prompts", name).read_text(encoding="utf-8")
