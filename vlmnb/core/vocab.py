"""Words every layer shares.

``SPAN_NAMES``: the four token spans of a prepared input, in prompt order. ``system`` holds the
template tokens before the image, ``image`` the image tokens (with their begin/end markers),
``query`` the text after the image up to the start of generation (template role tokens
included), ``generated`` the model's answer.
"""
from __future__ import annotations

SPAN_NAMES: tuple[str, ...] = ("system", "image", "query", "generated")
