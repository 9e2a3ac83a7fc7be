"""Model inputs with explicit token spans and per-image-token pixel geometry.

:func:`prepare` turns one ``(image, prompt)`` pair into the inputs of a vision-language model
(batch of one) together with

* :class:`Spans` -- which absolute token positions belong to the ``system`` part of the prompt,
  to the ``image``, to the user's ``query`` and (after generation) to the ``generated`` text;
* :class:`Geometry` -- for every token of the image span, the box of the *original* image
  (in its own pixels) that the token sees, for every supported family: one resized / cropped
  square (LLaVA-1.5, Gemma3), anyres base image + high-resolution grid with newline tokens
  (LLaVA-NeXT, LLaVA-OneVision), a dynamic grid of merged patches (Qwen2-VL, Qwen2.5-VL),
  tiles + thumbnail (InternVL) and crops + global image (Idefics3, SmolVLM).

Span rule (the same for every family)
-------------------------------------
``system``
    every token before the image span: BOS, system prompt, the template's role tokens.
``image``
    every token that stands for the image: the image (placeholder) tokens *and* the image
    structure tokens the processor or the template put around and between them -- begin/end of
    image markers (``<|vision_start|>``, ``<img>``, ``<start_of_image>``,
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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

SUPPORTED_FAMILIES = (
    "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl",
    "internvl", "idefics3", "smolvlm", "gemma3",
)

# model_type (top-level config) -> family
_MODEL_TYPES = {name: name for name in SUPPORTED_FAMILIES}


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

    names: ClassVar[tuple[str, ...]] = ("system", "image", "query", "generated")

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


@dataclass(frozen=True)
class View:
    """One picture the vision encoder saw, as a grid of image tokens.

    ``name``: ``"image"`` (single view), ``"base"`` / ``"highres"`` (LLaVA-NeXT/OneVision),
    ``"tile_r_c"`` / ``"thumbnail"`` (InternVL), ``"crop_r_c"`` / ``"global"``
    (Idefics3/SmolVLM). ``tokens[r, c]`` is the index into the image span (and into
    :attr:`Geometry.boxes`) of the token at grid cell ``(r, c)``, or -1 where the cell has no
    token. ``region`` is the box of the original image that the view covers
    ``(x0, y0, x1, y1)``.
    """

    name: str
    rows: int
    cols: int
    tokens: np.ndarray
    region: tuple[float, float, float, float]

    @property
    def token_indices(self) -> np.ndarray:
        """Indices (into the image span) of this view's tokens, row-major."""
        flat = self.tokens.reshape(-1)
        return flat[flat >= 0]


@dataclass(frozen=True)
class Geometry:
    """Pixel geometry of the image tokens.

    ``image_size`` is ``(W, H)`` of the original image. ``boxes[i]`` is ``(x0, y0, x1, y1)``,
    in original-image pixels (continuous coordinates: pixel column ``x`` spans ``[x, x+1)``), of
    the region token ``i`` of the image span sees, in the order of ``Spans.image``; structure
    tokens (markers, newlines, row/col tags, CLS) have a NaN row. Boxes are clipped to the image;
    where a processor changes the aspect ratio they are rectangles. ``views`` lists the tiles /
    thumbnail / global image with their token grids.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    views: list[View]

    @property
    def has_box(self) -> np.ndarray:
        """Boolean mask over the image span: tokens that see pixels."""
        return ~np.isnan(self.boxes[:, 0])

    def centers(self) -> np.ndarray:
        """``(n, 2)`` box centres ``(x, y)``; NaN for structure tokens."""
        return np.stack([(self.boxes[:, 0] + self.boxes[:, 2]) / 2,
                         (self.boxes[:, 1] + self.boxes[:, 3]) / 2], axis=1)

    def token_at(self, x: float, y: float) -> list[int]:
        """Indices (into the image span) of the tokens whose box contains pixel ``(x, y)``.

        ``x`` is the column and ``y`` the row of a pixel of the original image; a token contains
        it when the pixel's centre ``(x + 0.5, y + 0.5)`` lies in its box. Tiled families return
        one token per view that covers the pixel (e.g. a tile token and a thumbnail token).
        """
        W, H = self.image_size
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"pixel ({x}, {y}) is outside the {W}x{H} image")
        cx, cy = x + 0.5, y + 0.5
        b = self.boxes
        with np.errstate(invalid="ignore"):
            inside = (b[:, 0] <= cx) & (cx < b[:, 2]) & (b[:, 1] <= cy) & (cy < b[:, 3])
        return [int(i) for i in np.flatnonzero(inside)]

    def view(self, name: str | None = None) -> View:
        """The view called ``name``; ``None`` gives the overview (the view covering the whole
        image: the only view, ``base``, ``thumbnail`` or ``global``)."""
        if name is None:
            if len(self.views) == 1:
                return self.views[0]
            for candidate in ("base", "thumbnail", "global"):
                for v in self.views:
                    if v.name == candidate:
                        return v
            return self.views[0]
        for v in self.views:
            if v.name == name:
                return v
        raise ValueError(f"no view {name!r}; views are {', '.join(v.name for v in self.views)}")

    def to_grid(self, values, view: str | None = None) -> np.ndarray:
        """Arrange a per-token value (one per image-span token) on one view's grid.

        Returns a ``(rows, cols)`` float array, NaN where a cell has no token. ``view`` as in
        :meth:`view`.
        """
        values = np.asarray(values, dtype=float).reshape(-1)
        if len(values) != len(self.boxes):
            raise ValueError(f"expected {len(self.boxes)} values (one per image-span token), got {len(values)}")
        v = self.view(view)
        out = np.full(v.tokens.shape, np.nan)
        ok = v.tokens >= 0
        out[ok] = values[v.tokens[ok]]
        return out

    def paint(self, values, view: str | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
        """Paint a per-token value onto the original image plane (``(H, W)`` array, NaN where no
        token of the view looks), e.g. to overlay an attention map on the image. ``size=(w, h)``
        paints at a reduced resolution."""
        values = np.asarray(values, dtype=float).reshape(-1)
        if len(values) != len(self.boxes):
            raise ValueError(f"expected {len(self.boxes)} values (one per image-span token), got {len(values)}")
        W, H = self.image_size
        w, h = size or (W, H)
        sx, sy = w / W, h / H
        out = np.full((h, w), np.nan)
        for i in self.view(view).token_indices:
            x0, y0, x1, y1 = self.boxes[i]
            if np.isnan(x0):
                continue
            c0, c1 = int(round(x0 * sx)), max(int(round(x1 * sx)), int(round(x0 * sx)) + 1)
            r0, r1 = int(round(y0 * sy)), max(int(round(y1 * sy)), int(round(y0 * sy)) + 1)
            out[r0:r1, c0:c1] = values[i]
        return out


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
                value = value.to(device=device, dtype=dtype if (dtype is not None and value.is_floating_point()) else None)
            moved[key] = value
        return dataclasses.replace(self, inputs=moved)


# ----------------------------------------------------------------------------- family


def detect_family(config) -> str:
    """The family name of a model config (``config.model_type``); ValueError if unsupported."""
    model_type = getattr(config, "model_type", None)
    family = _MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family


def image_token_id(config) -> int:
    """The id of the image placeholder token, read from the model config (the reliable source:
    Gemma3's processor reports its begin-of-image token instead)."""
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"config of model_type {getattr(config, 'model_type', None)!r} has no image_token_id")


def _marker_ids(family: str, config, processor) -> set[int]:
    """Ids of the image-structure tokens that delimit the image span, per family."""
    tok = processor.tokenizer
    ids: set[int] = set()
    if family in ("qwen2_vl", "qwen2_5_vl"):
        ids |= {getattr(config, "vision_start_token_id", None), getattr(config, "vision_end_token_id", None)}
    elif family == "internvl":
        ids |= {getattr(processor, "start_image_token_id", None), getattr(processor, "end_image_token_id", None)}
    elif family in ("idefics3", "smolvlm"):
        ids |= {getattr(processor, "fake_image_token_id", None),
                tok.convert_tokens_to_ids(getattr(processor, "fake_image_token", "<fake_token_around_image>"))}
    elif family == "gemma3":
        ids |= {getattr(config, "boi_token_index", None), getattr(config, "eoi_token_index", None),
                getattr(config, "boi_token_id", None), getattr(config, "eoi_token_id", None)}
    unk = getattr(tok, "unk_token_id", None)
    return {int(i) for i in ids if i is not None and i != unk}


def _image_placeholder(family: str, processor) -> str:
    """The string a prompt must contain for the processor to insert the image."""
    if family == "gemma3":
        return processor.boi_token
    return processor.image_token


# ----------------------------------------------------------------------------- prompt


def render_prompt(processor, prompt: str, family: str) -> str:
    """The prompt text the processor receives.

    A prompt that already contains the processor's image placeholder (``<image>``,
    ``<|image_pad|>``, ...) is used verbatim. Otherwise, with a chat template: one user turn
    holding the image then the text, ``add_generation_prompt=True``. Without a chat template the
    fallback is ``"<placeholder>\\n<prompt>"``.
    """
    placeholder = _image_placeholder(family, processor)
    if placeholder and placeholder in prompt:
        return prompt
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{placeholder}\n{prompt}"


def _load_image(image):
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file {path} does not exist")
        image = Image.open(path)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, a numpy array or a path, got {type(image).__name__}")
    return image.convert("RGB")


def prepare(model, processor, image, prompt: str, family: str | None = None) -> Prepared:
    """Inputs for ``model`` from one image and one prompt, with spans and geometry.

    ``model`` is used for its config only (``model.config``; a config is accepted too).
    The prompt goes through the processor's chat template (see :func:`render_prompt`).
    Raises ValueError when the rendered prompt or the processor's output holds no image token.
    """
    config = getattr(model, "config", model)
    family = family or detect_family(config)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; supported families: {', '.join(SUPPORTED_FAMILIES)}")
    pil = _load_image(image)
    text = render_prompt(processor, prompt, family)
    placeholder = _image_placeholder(family, processor)
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
    inputs = dict(encoded)
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"expected a batch of one, got input_ids of shape {tuple(ids.shape)}")
    ids_np = ids[0].cpu().numpy()
    img_id = image_token_id(config)
    spans = compute_spans(ids_np, img_id, _marker_ids(family, config, processor))
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


@dataclass(frozen=True)
class _Frame:
    """A processed picture of size ``(w, h)`` and the map back to original pixels:
    ``x = ox + sx * u``, ``y = oy + sy * v`` for a point ``(u, v)`` of the picture."""

    w: float
    h: float
    sx: float = 1.0
    sy: float = 1.0
    ox: float = 0.0
    oy: float = 0.0

    def resize(self, w: float, h: float) -> "_Frame":
        return _Frame(w, h, self.sx * self.w / w, self.sy * self.h / h, self.ox, self.oy)

    def pad(self, left: float, top: float, right: float, bottom: float) -> "_Frame":
        return _Frame(self.w + left + right, self.h + top + bottom, self.sx, self.sy,
                      self.ox - self.sx * left, self.oy - self.sy * top)

    def crop(self, left: float, top: float, w: float, h: float) -> "_Frame":
        return _Frame(w, h, self.sx, self.sy, self.ox + self.sx * left, self.oy + self.sy * top)

    def box(self, u0, v0, u1, v1):
        return (self.ox + self.sx * u0, self.oy + self.sy * v0, self.ox + self.sx * u1, self.oy + self.sy * v1)


@dataclass
class _Grid:
    """A view under construction: ``rows x cols`` cells of ``cell_w x cell_h`` picture pixels
    starting at ``(u0, v0)`` in ``frame``."""

    name: str
    frame: _Frame
    rows: int
    cols: int
    cell_w: float
    cell_h: float
    u0: float = 0.0
    v0: float = 0.0

    def cell_box(self, r: int, c: int):
        u = self.u0 + c * self.cell_w
        v = self.v0 + r * self.cell_h
        return self.frame.box(u, v, u + self.cell_w, v + self.cell_h)

    def cells(self):
        """Feature entries of the grid in row-major order."""
        return [(self, r, c) for r in range(self.rows) for c in range(self.cols)]


def _size_get(size, key):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _clip_box(box, W, H):
    x0, y0, x1, y1 = box
    x0, x1 = max(0.0, min(W, x0)), max(0.0, min(W, x1))
    y0, y1 = max(0.0, min(H, y0)), max(0.0, min(H, y1))
    if x1 - x0 <= 1e-9 or y1 - y0 <= 1e-9:
        return (np.nan,) * 4
    return (x0, y0, x1, y1)


def compute_geometry(family: str, config, processor, image_size: tuple[int, int], inputs: dict,
                     span_ids: np.ndarray, image_token: int) -> Geometry:
    """Per-token boxes of the image span for one processed image (see :class:`Geometry`).

    ``span_ids`` are the ids of the image span; the model fills the positions holding
    ``image_token`` with its image features in order, so the family's feature order is laid
    onto those positions and every other span position gets a NaN box.
    """
    builder = _GEOMETRY.get(family)
    if builder is None:
        raise ValueError(f"no geometry for family {family!r}; supported families: {', '.join(SUPPORTED_FAMILIES)}")
    W, H = image_size
    entries = builder(config, processor, (W, H), inputs)  # list of (grid, r, c) or None, in feature order
    slots = np.flatnonzero(np.asarray(span_ids) == image_token)
    if len(entries) != len(slots):
        raise RuntimeError(
            f"{family}: geometry gives {len(entries)} image features but the prompt holds {len(slots)} image "
            "tokens; the processor settings are not supported by vlmnb's geometry"
        )
    boxes = np.full((len(span_ids), 4), np.nan)
    grid_tokens: dict[int, np.ndarray] = {}
    grids: dict[int, _Grid] = {}
    for slot, entry in zip(slots, entries):
        if entry is None:
            continue
        grid, r, c = entry
        boxes[slot] = _clip_box(grid.cell_box(r, c), W, H)
        key = id(grid)
        if key not in grids:
            grids[key] = grid
            grid_tokens[key] = np.full((grid.rows, grid.cols), -1, dtype=np.int64)
        grid_tokens[key][r, c] = slot
    views = []
    for key, grid in grids.items():
        region = _clip_box(grid.frame.box(grid.u0, grid.v0, grid.u0 + grid.cols * grid.cell_w,
                                          grid.v0 + grid.rows * grid.cell_h), W, H)
        views.append(View(grid.name, grid.rows, grid.cols, grid_tokens[key], tuple(float(v) for v in region)))
    return Geometry(image_size=(int(W), int(H)), boxes=boxes, views=views)


def _vision_patch(config) -> int:
    patch = config.vision_config.patch_size
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def _center_crop(frame: _Frame, crop_w: int, crop_h: int) -> _Frame:
    """Mirror of the torchvision backend's center_crop (pads first when the crop is larger)."""
    w, h = int(round(frame.w)), int(round(frame.h))
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        frame = frame.pad(left, top, right, bottom)
        w, h = int(round(frame.w)), int(round(frame.h))
        if crop_w == w and crop_h == h:
            return frame
    top = int((h - crop_h) / 2.0)
    left = int((w - crop_w) / 2.0)
    return frame.crop(left, top, crop_w, crop_h)


def _resize_by_size(frame: _Frame, size) -> _Frame:
    """Mirror of the torchvision backend's resize for the common ``size`` forms."""
    from transformers.image_transforms import get_size_with_aspect_ratio

    w, h = int(round(frame.w)), int(round(frame.h))
    shortest, longest = _size_get(size, "shortest_edge"), _size_get(size, "longest_edge")
    height, width = _size_get(size, "height"), _size_get(size, "width")
    if shortest and longest:
        new_h, new_w = get_size_with_aspect_ratio((h, w), shortest, longest)
    elif shortest:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = shortest, int(shortest * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    elif height and width:
        new_h, new_w = height, width
    else:
        raise ValueError(f"unsupported image processor size {size!r}")
    return frame.resize(new_w, new_h)


def _pad_to_square(frame: _Frame) -> _Frame:
    w, h = int(round(frame.w)), int(round(frame.h))
    if w == h:
        return frame
    m = max(w, h)
    left, top = (m - w) // 2, (m - h) // 2
    return frame.pad(left, top, m - w - left, m - h - top)


def _check_shape(family: str, frame: _Frame, pixel_shape) -> None:
    h, w = int(pixel_shape[-2]), int(pixel_shape[-1])
    if (int(round(frame.w)), int(round(frame.h))) != (w, h):
        raise RuntimeError(
            f"{family}: geometry expects a {int(round(frame.w))}x{int(round(frame.h))} picture but the processor "
            f"produced {w}x{h}; the processor settings are not supported by vlmnb's geometry"
        )


def _geometry_llava(config, processor, image_size, inputs):
    ip = processor.image_processor
    frame = _Frame(*image_size)
    if getattr(ip, "do_pad", False):
        frame = _pad_to_square(frame)
    if getattr(ip, "do_resize", True):
        frame = _resize_by_size(frame, ip.size)
    if getattr(ip, "do_center_crop", False):
        frame = _center_crop(frame, _size_get(ip.crop_size, "width"), _size_get(ip.crop_size, "height"))
    _check_shape("llava", frame, inputs["pixel_values"].shape)
    p = _vision_patch(config)
    grid = _Grid("image", frame, int(round(frame.h)) // p, int(round(frame.w)) // p, p, p)
    entries = grid.cells()
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        entries = [None] + entries  # the CLS token comes first and sees no patch
    return entries


def _geometry_qwen2_vl(config, processor, image_size, inputs):
    ip = processor.image_processor
    t, gh, gw = (int(v) for v in inputs["image_grid_thw"][0].tolist())
    patch = int(getattr(ip, "patch_size", None) or _vision_patch(config))
    merge = int(getattr(ip, "merge_size", None) or config.vision_config.spatial_merge_size)
    frame = _Frame(*image_size).resize(gw * patch, gh * patch)
    grid = _Grid("image", frame, gh // merge, gw // merge, patch * merge, patch * merge)
    return grid.cells() * t


def _post_patch(ip, frame: _Frame) -> _Frame:
    """The per-picture resize + center crop LLaVA-NeXT/OneVision apply to every base/tile picture."""
    if getattr(ip, "do_resize", True):
        frame = _resize_by_size(frame, ip.size)
    if getattr(ip, "do_center_crop", False) and ip.crop_size is not None:
        frame = _center_crop(frame, _size_get(ip.crop_size, "width"), _size_get(ip.crop_size, "height"))
    return frame


def _geometry_anyres(config, processor, image_size, inputs, family):
    """LLaVA-NeXT / OneVision: a base picture of the whole image, then a high-resolution grid
    (the image resized into the best grid resolution, padded, cut into tiles) whose token grid is
    unpadded and, for OneVision, possibly pooled down, with a newline token after every row."""
    from transformers.image_processing_utils import select_best_resolution

    ip = processor.image_processor
    W, H = image_size
    size = ip.size
    if _size_get(size, "height") and _size_get(size, "width"):
        base_h, base_w = _size_get(size, "height"), _size_get(size, "width")
    else:
        base_h = base_w = _size_get(size, "shortest_edge")
    crop = getattr(ip, "crop_size", None)
    tile_px = _size_get(crop, "height") or _size_get(size, "height") or _size_get(size, "shortest_edge")
    pinpoints = [list(p) for p in (config.image_grid_pinpoints or ip.image_grid_pinpoints)]
    vis = config.vision_config.image_size
    vis = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    p = _vision_patch(config)
    g = vis // p

    base = _post_patch(ip, _Frame(W, H).resize(base_w, base_h))
    _check_shape(family, base, inputs["pixel_values"].shape)
    tile_after = _post_patch(ip, _Frame(tile_px, tile_px))
    if (tile_after.w, tile_after.h, tile_after.sx, tile_after.sy) != (vis, vis, 1.0, 1.0) or tile_px != vis:
        raise RuntimeError(f"{family}: tiles of {tile_px}px resized again to {vis}px are not supported by vlmnb's geometry")

    best_h, best_w = select_best_resolution((H, W), pinpoints)
    # mirror of get_patch_output_size + the centred padding of _pad_for_patching
    scale_w, scale_h = best_w / W, best_h / H
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(H * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(W * scale_h), best_w)
    pad_x, pad_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    canvas = _Frame(W, H).resize(new_w, new_h).pad(pad_x, pad_y, best_w - new_w - pad_x, best_h - new_h - pad_y)
    n_tiles = (best_h // tile_px) * (best_w // tile_px)
    if int(inputs["pixel_values"].shape[1]) < 1 + n_tiles:
        raise RuntimeError(f"{family}: expected {1 + n_tiles} pictures, the processor made {inputs['pixel_values'].shape[1]}")

    # the model's token grid over the canvas, then its unpadding (modeling unpad_image)
    cur_h, cur_w = (best_h // vis) * g, (best_w // vis) * g
    top = left = 0
    if W / H > cur_w / cur_h:
        new_rows = int(round(H * (cur_w / W), 7))
        top = (cur_h - new_rows) // 2
    else:
        new_cols = int(round(W * (cur_h / H), 7))
        left = (cur_w - new_cols) // 2
    rows, cols = cur_h - 2 * top, cur_w - 2 * left
    cell = float(p)  # a patch; the encoder ignores a remainder narrower than a patch (384px / 14px)
    out_rows, out_cols = rows, cols
    if family == "llava_onevision":
        max_tiles = int(str(getattr(config, "vision_aspect_ratio", "anyres_max_9")).strip("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_tiles * g ** 2))
        if ratio > 1.1:  # the model pools the grid bilinearly down to this size
            out_rows, out_cols = int(rows // ratio), int(cols // ratio)
    highres = _Grid("highres", canvas, out_rows, out_cols, cell * cols / out_cols, cell * rows / out_rows,
                    u0=left * cell, v0=top * cell)
    base_grid = _Grid("base", base, g, g, p, p)
    entries = base_grid.cells()
    for r in range(out_rows):
        entries += [(highres, r, c) for c in range(out_cols)] + [None]  # learned newline token
    return entries


def _geometry_internvl(config, processor, image_size, inputs):
    """InternVL: the image resized onto a cols x rows grid of tiles (row-major), then a thumbnail
    of the whole image when there is more than one tile; pixel shuffle merges 2x2 patches."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    ip = processor.image_processor
    W, H = image_size
    th, tw = _size_get(ip.size, "height"), _size_get(ip.size, "width")
    n = int(inputs["pixel_values"].shape[0])
    vis = config.vision_config.image_size
    vis_h, vis_w = (vis if isinstance(vis, (list, tuple)) else (vis, vis))
    if (th, tw) != (vis_h, vis_w):
        raise RuntimeError(f"internvl: tiles of {tw}x{th} for a {vis_w}x{vis_h} vision encoder are not supported")
    p = _vision_patch(config)
    per_side = int(round((vis_h // p) * config.downsample_ratio))
    cell_h = cell_w = p / config.downsample_ratio  # pixel shuffle merges 1/ratio x 1/ratio patches
    grids = []
    if n == 1:
        grids.append(_Grid("image", _Frame(W, H).resize(tw, th), per_side, per_side, cell_w, cell_h))
    else:
        cols, rows = get_optimal_tiled_canvas((H, W), (th, tw), ip.min_patches, ip.max_patches)
        if cols * rows + 1 != n:
            raise RuntimeError(f"internvl: expected {cols * rows + 1} pictures for a {cols}x{rows} tiling, got {n}")
        canvas = _Frame(W, H).resize(tw * cols, th * rows)
        for i in range(cols * rows):
            r, c = divmod(i, cols)
            grids.append(_Grid(f"tile_{r}_{c}", canvas.crop(c * tw, r * th, tw, th), per_side, per_side, cell_w, cell_h))
        grids.append(_Grid("thumbnail", _Frame(W, H).resize(tw, th), per_side, per_side, cell_w, cell_h))
    return [cell for grid in grids for cell in grid.cells()]


def _geometry_idefics3(config, processor, image_size, inputs):
    """Idefics3 / SmolVLM: the image resized (longest edge), resized up to multiples of the crop
    size, cut into a rows x cols grid of crops (row-major), then a global picture of the whole
    image; pixel shuffle merges scale x scale patches."""
    from transformers.models.idefics3.image_processing_idefics3 import get_resize_output_image_size

    ip = processor.image_processor
    W, H = image_size
    M = int(_size_get(ip.max_image_size, "longest_edge"))
    frame = _Frame(W, H)
    if getattr(ip, "do_resize", True):
        longest = _size_get(ip.size, "longest_edge")
        if longest:
            h1, w1 = get_resize_output_image_size(_Shape(H, W), resolution_max_side=longest)
        else:
            h1, w1 = _size_get(ip.size, "height"), _size_get(ip.size, "width")
        frame = frame.resize(w1, h1)
    grids_frames = []
    if getattr(ip, "do_image_splitting", True):
        h, w = int(round(frame.h)), int(round(frame.w))
        aspect = w / h
        if w >= h:
            w2 = math.ceil(w / M) * M
            h2 = math.ceil(int(w2 / aspect) / M) * M
        else:
            h2 = math.ceil(h / M) * M
            w2 = math.ceil(int(h2 * aspect) / M) * M
        frame = frame.resize(w2, h2)
        if h2 > M or w2 > M:
            rows, cols = h2 // M, w2 // M
            for r in range(rows):
                for c in range(cols):
                    grids_frames.append((f"crop_{r}_{c}", frame.crop(c * M, r * M, M, M)))
            grids_frames.append(("global", frame.resize(M, M)))
        else:
            grids_frames.append(("image", frame))
    else:
        grids_frames.append(("image", frame.resize(M, M)))
    n = int(inputs["pixel_values"].shape[1])
    if n != len(grids_frames):
        raise RuntimeError(f"idefics3: expected {len(grids_frames)} pictures, the processor made {n}")
    p = _vision_patch(config)
    per_side = (M // p) // int(config.scale_factor)
    cell = float(p * int(config.scale_factor))  # pixel shuffle merges scale x scale patches
    entries = []
    for name, f in grids_frames:
        entries += _Grid(name, f, per_side, per_side, cell, cell).cells()
    return entries


class _Shape:
    """Stands in for an image tensor where a transformers helper only reads ``shape[-2:]``."""

    def __init__(self, h, w):
        self.shape = (3, h, w)


def _geometry_gemma3(config, processor, image_size, inputs):
    """Gemma3 (pan & scan off): one square resize; the patch grid is average-pooled to
    ``mm_tokens_per_image`` tokens."""
    ip = processor.image_processor
    if getattr(ip, "do_pan_and_scan", False):
        raise ValueError("gemma3: pan & scan crops are not supported; load the processor with do_pan_and_scan=False")
    frame = _Frame(*image_size).resize(_size_get(ip.size, "width"), _size_get(ip.size, "height"))
    _check_shape("gemma3", frame, inputs["pixel_values"].shape)
    per_side = int(round(math.sqrt(config.mm_tokens_per_image)))
    vis = config.vision_config.image_size
    vis = int(vis[0] if isinstance(vis, (list, tuple)) else vis)
    if (int(round(frame.w)), int(round(frame.h))) != (vis, vis):
        raise RuntimeError(f"gemma3: pictures of {frame.w}x{frame.h} for a {vis}px vision encoder are not supported")
    p = _vision_patch(config)
    cell = float(p * ((vis // p) // per_side))  # average pooling merges kernel x kernel patches
    return _Grid("image", frame, per_side, per_side, cell, cell).cells()


_GEOMETRY = {
    "llava": _geometry_llava,
    "llava_next": lambda *a: _geometry_anyres(*a, family="llava_next"),
    "llava_onevision": lambda *a: _geometry_anyres(*a, family="llava_onevision"),
    "qwen2_vl": _geometry_qwen2_vl,
    "qwen2_5_vl": _geometry_qwen2_vl,
    "internvl": _geometry_internvl,
    "idefics3": _geometry_idefics3,
    "smolvlm": _geometry_idefics3,
    "gemma3": _geometry_gemma3,
}
