"""One way to turn what a user passes as an image into a PIL RGB image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def load_image(image) -> Image.Image:
    """A PIL RGB image from a PIL image, a file path, or an array ``(H, W[, C])`` / ``(C, H, W)``.

    Float arrays in [0, 1] are scaled to [0, 255]. A missing or unreadable file raises a
    one-line ``FileNotFoundError`` / ``ValueError`` naming the file.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read {path} as an image ({exc.__class__.__name__}); "
                             "pass a PNG/JPEG file, a PIL image or an array") from None
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # channels-first
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"cannot use an array of shape {arr.shape} as an image; expected (H, W) or (H, W, 3)")
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255)
        arr = arr.astype(np.uint8)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return Image.fromarray(arr).convert("RGB")
    raise TypeError(f"cannot use {type(image).__name__} as an image; pass a PIL image, a path or an array")
