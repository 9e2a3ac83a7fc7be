"""Model inputs with explicit token spans and per-image-token pixel geometry.

:func:`prepare` turns one ``(image, prompt)`` pair into the inputs of a vision-language model
(batch of one) together with

* :class:`Spans` -- which absolute token positions belong to the ``system`` part of the prompt,
  to the ``image``, to the user's ``query`` and (after generation) to the ``generated`` text;
* :class:`~vlmnb.engine.geometry.Geometry` -- for every token of the image span, the box of the
  *original* image (in its own pixels) that the token sees, for every supported family: one
  resized / cropped square (LLaVA-1.5, Gemma3, PaliGemma), anyres base image + high-resolution
  grid with newline tokens (LLaVA-NeXT, LLaVA-OneVision), a dynamic grid of merged patches
  (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V), tiles + thumbnail (InternVL, Aya Vision, Command A
  Vision), crops + global image (Idefics3, SmolVLM) and learned queries that each pool a whole
  picture (Idefics2: every one gets its picture's box). Each family's geometry and markers live in its registry entry
  (:mod:`vlmnb.engine.families`).

Span rule (the same for every family)
-------------------------------------
``system``
    every token before the image span: BOS, system prompt, the template's role tokens.
``image``
    every token that stands for the image: the image (placeholder) tokens *and* the image
    structure tokens the processor or the template put around and between them -- begin/end of
    image markers (``<|vision_start|>``, ``<|begin_of_image|>``, ``<img>``, ``<start_of_image>``,
    ``<fake_token_around_image>``), ``<row_i_col_j>`` and ``<global-img>`` tags, the text
    newlines between rows of crops, and LLaVA-NeXT/OneVision's learned newline tokens. The span
    runs from the first to the last such token. Structure tokens carry no patch: their
    :attr:`Geometry.boxes` row is NaN. Keeping the end-of-image marker in the image span matters
    for knockout: it is written after all image tokens and can carry their information.
``query``
    everything after the image span up to the start of generation: the user's text *and* the
    template's tokens that follow it (``ASSISTANT:``, ``<|im_end|>\\n<|im_start|>assistant\\n``).
``generated``
    the positions of generated tokens (empty before generation).

The first three partition the prompt exactly: ``system + image + query == range(len(input_ids))``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from vlmnb.core.images import load_image
from vlmnb.core.vocab import SPAN_NAMES
from vlmnb.engine import families
from vlmnb.engine.geometry import Geometry, View, lay_out

__all__ = ["Spans", "Prepared", "Geometry", "View", "prepare", "compute_spans", "compute_geometry",
           "render_prompt", "detect_family", "image_token_id"]


def _as_positions(values) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=np.int64).reshape(-1)
    return arr


def _as_positions(values) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=np.int64).reshape(-1)
    return arr


@dataclass(frozen=True)
class Spans:
    """Absolute token positions (batch row 0) of the parts of a prompt.

    ``system``: tokens before the image span (BOS, system prompt, role tokens).
    ``image``: image tokens plus the image-structure tokens around and between them
    (begin/end markers, newline / row-col / separator tokens), first to last.
    ``query``: everything after the image span up to the start of generation -- the user's
    text and the template's role tokens such as ``ASSISTANT:``.
    ``generated``: positions of generated tokens (empty before generation).
    """

    system: np.ndarray
    image: np.ndarray
    query: np.ndarray
    generated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    names: ClassVar[tuple[str, ...]] = SPAN_NAMES

    def __post_init__(self):
        for name in self.names:
            object.__setattr__(self, name, _as_positions(getattr(self, name)))

    def positions(self, name: str) -> np.ndarray:
        """Positions of the span called ``name`` (one of :attr:`names`)."""
        if name not in self.names:
            raise ValueError(f"unknown span {name!r}; spans are {', '.join(self.names)}")
        return getattr(self, name)

    def lengths(self) -> dict[str, int]:
        """Number of tokens in each span."""
        return {name: int(len(getattr(self, name))) for name in self.names}

    def with_generated(self, positions) -> "Spans":
        """A copy whose ``generated`` span is ``positions``."""
        return dataclasses.replace(self, generated=_as_positions(positions))

    @property
    def prompt_length(self) -> int:
        """Number of prompt tokens (system + image + query)."""
        return int(len(self.system) + len(self.image) + len(self.query))

    def span_of(self, position: int) -> str:
        """Name of the span that holds absolute ``position``."""
        for name in self.names:
            if np.any(getattr(self, name) == position):
                return name
        raise ValueError(f"position {position} is in no span")



@dataclass
class Prepared:
    """Model inputs (batch of one) with spans and geometry.

    ``inputs`` holds what the processor returned (``input_ids``, ``attention_mask``,
    ``pixel_values``, ...); its entries are also attributes (``prepared.input_ids``).
    ``text`` is the prompt string after the chat template.
    """

    inputs: dict[str, Any]
    spans: Spans
    geometry: Geometry
    image: Any
    prompt: str
    family: str
    text: str = ""

    def __getattr__(self, name: str):
        # only called for names that are not fields; guard against recursion during copy/init
        inputs = self.__dict__.get("inputs")
        if inputs is not None and name in inputs:
            return inputs[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute or input {name!r}")

    def to(self, device=None, dtype=None) -> "Prepared":
        """A copy with tensors moved to ``device``; floating tensors cast to ``dtype``."""
        import torch

        moved = {}
        for key, value in self.inputs.items():
            if isinstance(value, torch.Tensor):
                cast = dtype if (dtype is not None and value.is_floating_point()) else None
                value = value.to(device=device, dtype=cast)
            moved[key] = value
        return dataclasses.replace(self, inputs=moved)



# ----------------------------------------------------------------------------- family


def detect_family(config) -> str:
    """The family name of a model config (``config.model_type``); ValueError if unsupported."""
    return families.detect(config).name


def image_token_id(config) -> int:
    """The id of the image placeholder token, read from the model config (the reliable source:
    Gemma3's processor reports its begin-of-image token instead)."""
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"config of model_type {getattr(config, 'model_type', None)!r} has no image_token_id")


# ----------------------------------------------------------------------------- prompt


def render_prompt(processor, prompt: str, family: str) -> str:
    """The prompt text the processor receives.

    A prompt that already contains the processor's image placeholder (``<image>``,
    ``<|image_pad|>``, ...) is used verbatim. Otherwise, with a chat template: one user turn
    holding the image then the text, ``add_generation_prompt=True``. Without a chat template the
    family's own format (its entry's ``untemplated``; usually ``"<placeholder>\\n<prompt>"``).
    """
    entry = families.get(family)
    placeholder = entry.image_placeholder(processor)
    if placeholder and placeholder in prompt:
        return prompt
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return entry.untemplated(placeholder, prompt)


def prepare(model, processor, image, prompt: str, family: str | None = None) -> Prepared:
    """Inputs for ``model`` from one image and one prompt, with spans and geometry.

    ``model`` is used for its config only (``model.config``; a config is accepted too).
    The prompt goes through the processor's chat template (see :func:`render_prompt`).
    Raises ValueError when the rendered prompt or the processor's output holds no image token.
    """
    config = getattr(model, "config", model)
    family = family or detect_family(config)
    entry = families.get(family)
    pil = load_image(image)
    text = render_prompt(processor, prompt, family)
    placeholder = entry.image_placeholder(processor)
    if not placeholder or placeholder not in text:
        raise ValueError(
            f"the prompt after the chat template holds no image placeholder {placeholder!r}: {text!r}; "
            "use a processor whose chat template renders image content, or put the placeholder in the prompt"
        )
    tokenizer = processor.tokenizer
    call_kwargs: dict[str, Any] = {}
    bos = getattr(tokenizer, "bos_token", None)
    if bos is not None and text.startswith(bos):
        call_kwargs["add_special_tokens"] = False  # the template already wrote BOS
    encoded = processor(images=[pil], text=[text], return_tensors="pt", **call_kwargs)
    # ``labels`` is a training target, not an input (PaliGemma's processor returns one with every prompt)
    inputs = {k: v for k, v in encoded.items() if k != "labels"}
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"expected a batch of one, got input_ids of shape {tuple(ids.shape)}")
    ids_np = ids[0].cpu().numpy()
    img_id = image_token_id(config)
    spans = compute_spans(ids_np, img_id, entry.marker_ids(config, processor))
    geometry = compute_geometry(family, config, processor, pil.size, inputs, ids_np[spans.image], img_id)
    return Prepared(inputs=inputs, spans=spans, geometry=geometry, image=pil, prompt=prompt,
                    family=family, text=text)


def compute_spans(input_ids: Sequence[int], image_token: int, markers: set[int] = frozenset()) -> Spans:
    """Split one prompt's ids into system / image / query (see the module docstring).

    The image span runs from the first to the last token that is the image token or one of the
    family's ``markers`` (begin/end-of-image ids).
    """
    ids = np.asarray(input_ids).reshape(-1)
    is_image = ids == image_token
    if not is_image.any():
        raise ValueError(
            f"the processed prompt holds no image token (id {image_token}); the processor or the prompt "
            "did not insert the image"
        )
    related = is_image | np.isin(ids, list(markers)) if markers else is_image
    where = np.flatnonzero(related)
    start, end = int(where[0]), int(where[-1]) + 1
    n = len(ids)
    return Spans(system=np.arange(0, start), image=np.arange(start, end), query=np.arange(end, n))


# ----------------------------------------------------------------------------- geometry


def compute_geometry(family: str, config, processor, image_size: tuple[int, int], inputs: dict,
                     span_ids: np.ndarray, image_token: int) -> Geometry:
    """Per-token boxes of the image span for one processed image (see :class:`Geometry`).

    ``span_ids`` are the ids of the image span; the model fills the positions holding
    ``image_token`` with its image features in order, so the family's feature order is laid
    onto those positions and every other span position gets a NaN box.
    """
    entries = families.get(family).geometry(config, processor, tuple(image_size), inputs)
    return lay_out(family, entries, image_size, span_ids, image_token)
