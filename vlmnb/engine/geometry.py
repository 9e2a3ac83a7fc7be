"""Pixel geometry of image tokens: which box of the original image each image token sees.

:class:`Geometry` and :class:`View` are what :func:`vlmnb.engine.spans.prepare` returns. The rest
is the shared toolkit the family modules (:mod:`vlmnb.engine.families`) build their geometry
from: a :class:`Frame` follows a picture through the processor's resizes, pads and crops back to
original pixels; a :class:`Grid` lays a token grid over a frame; the ``*_by_*`` / ``center_crop``
/ ``pad_to_square`` helpers mirror the torchvision backend of transformers' image processors.
A family's geometry function returns one entry per image feature, in the model's feature order:
``(grid, row, col)`` or None for a feature that sees no patch (CLS, learned newline);
:func:`lay_out` places those entries on the image span. A grid marked ``whole_view`` holds
features that each pool the whole view (the learned queries of a perceiver resampler): every one
of them gets the view's box, so a painted detail is seen by all of them and by no other view's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class View:
    """One picture the vision encoder saw, as a grid of image tokens.

    ``name``: ``"image"`` (single view), ``"base"`` / ``"highres"`` (LLaVA-NeXT/OneVision),
    ``"tile_r_c"`` / ``"thumbnail"`` (InternVL, Aya Vision, Command A Vision), ``"crop_r_c"`` /
    ``"global"`` (Idefics3/SmolVLM, Idefics2). ``tokens[r, c]`` is the index into the image span (and into
    :attr:`Geometry.boxes`) of the token at grid cell ``(r, c)``, or -1 where the cell has no
    token. ``region`` is the box of the original image that the view covers
    ``(x0, y0, x1, y1)``. ``whole_view``: every token of the view pools the whole view (learned
    queries of a resampler, e.g. Idefics2's perceiver): each one's box is ``region`` and the
    ``rows x cols`` arrangement is the tokens' order, not a layout in the picture.
    """

    name: str
    rows: int
    cols: int
    tokens: np.ndarray
    region: tuple[float, float, float, float]
    whole_view: bool = False

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
        paints at a reduced resolution. A ``whole_view`` view paints the mean of its tokens' values
        over its region (its tokens share that box)."""
        values = np.asarray(values, dtype=float).reshape(-1)
        if len(values) != len(self.boxes):
            raise ValueError(f"expected {len(self.boxes)} values (one per image-span token), got {len(values)}")
        W, H = self.image_size
        w, h = size or (W, H)
        sx, sy = w / W, h / H
        out = np.full((h, w), np.nan)
        v = self.view(view)
        indices = v.token_indices
        if v.whole_view and len(indices):
            values = values.copy()
            values[indices] = np.mean(values[indices])
        for i in indices:
            x0, y0, x1, y1 = self.boxes[i]
            if np.isnan(x0):
                continue
            c0, c1 = int(round(x0 * sx)), max(int(round(x1 * sx)), int(round(x0 * sx)) + 1)
            r0, r1 = int(round(y0 * sy)), max(int(round(y1 * sy)), int(round(y0 * sy)) + 1)
            out[r0:r1, c0:c1] = values[i]
        return out



@dataclass(frozen=True)
class Frame:
    """A processed picture of size ``(w, h)`` and the map back to original pixels:
    ``x = ox + sx * u``, ``y = oy + sy * v`` for a point ``(u, v)`` of the picture."""

    w: float
    h: float
    sx: float = 1.0
    sy: float = 1.0
    ox: float = 0.0
    oy: float = 0.0

    def resize(self, w: float, h: float) -> "Frame":
        """This picture resized to ``(w, h)``."""
        return Frame(w, h, self.sx * self.w / w, self.sy * self.h / h, self.ox, self.oy)

    def pad(self, left: float, top: float, right: float, bottom: float) -> "Frame":
        """This picture with a border added."""
        return Frame(self.w + left + right, self.h + top + bottom, self.sx, self.sy,
                     self.ox - self.sx * left, self.oy - self.sy * top)

    def crop(self, left: float, top: float, w: float, h: float) -> "Frame":
        """The ``w x h`` part of this picture whose top-left corner is ``(left, top)``."""
        return Frame(w, h, self.sx, self.sy, self.ox + self.sx * left, self.oy + self.sy * top)

    def box(self, u0, v0, u1, v1):
        """A box of this picture in original-image pixels."""
        return (self.ox + self.sx * u0, self.oy + self.sy * v0, self.ox + self.sx * u1, self.oy + self.sy * v1)


@dataclass
class Grid:
    """A view under construction: ``rows x cols`` cells of ``cell_w x cell_h`` picture pixels
    starting at ``(u0, v0)`` in ``frame``. With ``whole_view`` every cell's box is the whole
    grid's (features that each pool the whole view; the cells only order them)."""

    name: str
    frame: Frame
    rows: int
    cols: int
    cell_w: float
    cell_h: float
    u0: float = 0.0
    v0: float = 0.0
    whole_view: bool = False

    def extent(self):
        """The original-image box of the whole grid."""
        return self.frame.box(self.u0, self.v0, self.u0 + self.cols * self.cell_w, self.v0 + self.rows * self.cell_h)

    def cell_box(self, r: int, c: int):
        """The original-image box of cell ``(r, c)`` (the whole grid's for a ``whole_view`` grid)."""
        if self.whole_view:
            return self.extent()
        u = self.u0 + c * self.cell_w
        v = self.v0 + r * self.cell_h
        return self.frame.box(u, v, u + self.cell_w, v + self.cell_h)

    def cells(self):
        """Feature entries of the grid in row-major order."""
        return [(self, r, c) for r in range(self.rows) for c in range(self.cols)]


def size_get(size, key):
    """``size[key]`` of an image processor's size (a dict or a SizeDict), or None."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def clip_box(box, W, H):
    """``box`` clipped to a ``W x H`` image; NaNs when nothing of it is left."""
    x0, y0, x1, y1 = box
    x0, x1 = max(0.0, min(W, x0)), max(0.0, min(W, x1))
    y0, y1 = max(0.0, min(H, y0)), max(0.0, min(H, y1))
    if x1 - x0 <= 1e-9 or y1 - y0 <= 1e-9:
        return (np.nan,) * 4
    return (x0, y0, x1, y1)


def lay_out(family: str, entries: list, image_size: tuple[int, int], span_ids: np.ndarray,
            image_token: int) -> Geometry:
    """The :class:`Geometry` of an image span from a family's feature ``entries``.

    ``entries`` (one per image feature, in the model's order: ``(grid, row, col)`` or None) are
    laid onto the positions of ``span_ids`` (the ids of the image span) that hold
    ``image_token``, which the model fills with its features in order; every other span
    position gets a NaN box. ``family`` names the family in error messages.
    """
    W, H = image_size
    slots = np.flatnonzero(np.asarray(span_ids) == image_token)
    if len(entries) != len(slots):
        raise RuntimeError(
            f"{family}: geometry gives {len(entries)} image features but the prompt holds {len(slots)} image "
            "tokens; the processor settings are not supported by vlmnb's geometry"
        )
    boxes = np.full((len(span_ids), 4), np.nan)
    grid_tokens: dict[int, np.ndarray] = {}
    grids: dict[int, Grid] = {}
    for slot, entry in zip(slots, entries):
        if entry is None:
            continue
        grid, r, c = entry
        boxes[slot] = clip_box(grid.cell_box(r, c), W, H)
        key = id(grid)
        if key not in grids:
            grids[key] = grid
            grid_tokens[key] = np.full((grid.rows, grid.cols), -1, dtype=np.int64)
        grid_tokens[key][r, c] = slot
    views = []
    for key, grid in grids.items():
        region = clip_box(grid.extent(), W, H)
        views.append(View(grid.name, grid.rows, grid.cols, grid_tokens[key], tuple(float(v) for v in region),
                          whole_view=grid.whole_view))
    return Geometry(image_size=(int(W), int(H)), boxes=boxes, views=views)


def vision_patch(config) -> int:
    """The vision encoder's patch side in pixels."""
    patch = config.vision_config.patch_size
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def center_crop(frame: Frame, crop_w: int, crop_h: int) -> Frame:
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


def resize_by_size(frame: Frame, size) -> Frame:
    """Mirror of the torchvision backend's resize for the common ``size`` forms."""
    from transformers.image_transforms import get_size_with_aspect_ratio

    w, h = int(round(frame.w)), int(round(frame.h))
    shortest, longest = size_get(size, "shortest_edge"), size_get(size, "longest_edge")
    height, width = size_get(size, "height"), size_get(size, "width")
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


def pad_to_square(frame: Frame) -> Frame:
    """Mirror of LLaVA's pad-to-square (centred, the short side padded)."""
    w, h = int(round(frame.w)), int(round(frame.h))
    if w == h:
        return frame
    m = max(w, h)
    left, top = (m - w) // 2, (m - h) // 2
    return frame.pad(left, top, m - w - left, m - h - top)


def check_shape(family: str, frame: Frame, pixel_shape) -> None:
    """RuntimeError unless the processor made a picture of ``frame``'s size."""
    h, w = int(pixel_shape[-2]), int(pixel_shape[-1])
    if (int(round(frame.w)), int(round(frame.h))) != (w, h):
        raise RuntimeError(
            f"{family}: geometry expects a {int(round(frame.w))}x{int(round(frame.h))} picture but the processor "
            f"produced {w}x{h}; the processor settings are not supported by vlmnb's geometry"
        )

