"""vlmnb's processor for InternVL2's hub checkpoints (``OpenGVLab/InternVL2-*``, remote code).

The checkpoints ship no transformers processor: their model cards carry the image preprocessing
as user code, and their ``chat()`` writes the prompt. :class:`InternVL2Processor` does both the
same way, as a transformers-style processor object (``tokenizer``, ``apply_chat_template``,
``__call__`` returning ``input_ids`` / ``attention_mask`` / ``pixel_values``):

* dynamic tiling: the picture is resized (bicubic) onto the ``cols x rows`` grid of
  ``image_size``-pixel tiles whose aspect ratio is closest to its own, among the grids of
  ``min_tiles .. max_tiles`` tiles (on a tie the larger grid wins when the picture has more than
  half its pixels); the tiles follow in row-major order, then -- when there is more than one tile
  and the model uses a thumbnail -- the whole picture resized to one tile. Each is normalised
  with ImageNet's mean and standard deviation;
* the prompt: the checkpoint's conversation template (``config.template``, an MPT-style
  template: system turn, ``<|im_start|>user\\n...<|im_end|>``-like turns), the picture written as
  ``<image>\\n`` before the user's text, ``<image>`` replaced by ``<img>``, ``<IMG_CONTEXT>`` x
  (tokens per tile x tiles), ``</img>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLACEHOLDER = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


@dataclass(frozen=True)
class ChatFormat:
    """An MPT-style conversation template (InternVL2's ``Hermes-2``, ``internlm2-chat``, ...):
    ``system_template`` filled with ``system_message``, then ``sep``, then per turn
    ``role + message + sep``, and the assistant role alone to ask for an answer."""

    name: str
    system_template: str
    system_message: str
    user: str
    assistant: str
    sep: str

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The prompt for chat ``messages`` (``{"role", "content"}``; content a string or a list of
        ``{"type": "image"}`` / ``{"type": "text", "text"}`` parts, an image written as
        ``<image>\\n`` before the text). A leading system message replaces the template's."""
        system = self.system_message
        roles = {"user": self.user, "assistant": self.assistant}
        turns = []
        for i, message in enumerate(messages):
            role, text = message["role"], _content_text(message["content"])
            if role == "system":
                if i:
                    raise ValueError("a system message may only come first")
                system = text
                continue
            if role not in roles:
                raise ValueError(f"unknown chat role {role!r}; InternVL2's template has user and assistant turns")
            turns.append(roles[role] + text + self.sep)
        prompt = self.system_template.format(system_message=system) + self.sep + "".join(turns)
        if add_generation_prompt:
            prompt += self.assistant
        return prompt


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    images = sum(1 for part in content if part.get("type") == "image")
    texts = "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return (PLACEHOLDER + "\n") * images + texts


def closest_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """``(cols, rows)``: the grid of tiles InternVL2 resizes a ``width x height`` picture onto."""
    aspect = width / height
    grids = sorted({(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                    if min_tiles <= i * j <= max_tiles}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


class InternVL2Processor:
    """Pictures and prompts -> InternVL2 model inputs (see the module docstring).

    Attributes: ``tokenizer``; ``image_size`` (tile side in pixels), ``tokens_per_tile``,
    ``min_tiles`` / ``max_tiles``, ``use_thumbnail``, ``dynamic`` (tiling on; off: one tile);
    ``chat`` (:class:`ChatFormat`); ``image_token`` (the prompt's placeholder ``<image>``).
    """

    image_token = PLACEHOLDER

    def __init__(self, tokenizer, *, image_size: int, tokens_per_tile: int, chat: ChatFormat, min_tiles: int = 1,
                 max_tiles: int = 6, use_thumbnail: bool = True, dynamic: bool = True):
        if not 1 <= min_tiles <= max_tiles:
            raise ValueError(f"InternVL2 tiling needs 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
        self.tokenizer = tokenizer
        self.image_size, self.tokens_per_tile = int(image_size), int(tokens_per_tile)
        self.min_tiles, self.max_tiles = int(min_tiles), int(max_tiles)
        self.use_thumbnail, self.dynamic = bool(use_thumbnail), bool(dynamic)
        self.chat = chat
        for token in (IMG_START, IMG_END, IMG_CONTEXT):
            if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
                raise ValueError(f"the tokenizer has no {token} token; is this an InternVL2 checkpoint?")

    def __repr__(self) -> str:
        return (f"InternVL2Processor(template={self.chat.name!r}, tile={self.image_size}px, "
                f"tiles={self.min_tiles}..{self.max_tiles}, thumbnail={self.use_thumbnail}, "
                f"tokens_per_tile={self.tokens_per_tile})")

    # ------------------------------------------------------------------ prompt
    @property
    def chat_template(self) -> str:
        """The name of the conversation template (``config.template``)."""
        return self.chat.name

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
        """The prompt for ``messages`` in the checkpoint's conversation format (token ids with
        ``tokenize=True``)."""
        text = self.chat.render(messages, add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text

    @property
    def context_token_id(self) -> int:
        """The id of ``<IMG_CONTEXT>``, the token the image features replace."""
        return int(self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT))

    @property
    def start_image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(IMG_START))

    @property
    def end_image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(IMG_END))

    def image_tokens(self, tiles: int) -> str:
        """The text that stands for a picture cut into ``tiles`` pictures (thumbnail included)."""
        return IMG_START + IMG_CONTEXT * (self.tokens_per_tile * tiles) + IMG_END

    # ------------------------------------------------------------------ pictures
    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(cols, rows)`` of the tiles a ``width x height`` picture is cut into."""
        if not self.dynamic:
            return 1, 1
        return closest_grid(width, height, self.image_size, self.min_tiles, self.max_tiles)

    def has_thumbnail(self, cols: int, rows: int) -> bool:
        """Whether a picture cut into ``cols x rows`` tiles gets a thumbnail after them."""
        return self.dynamic and self.use_thumbnail and cols * rows > 1

    def tiles(self, image) -> list:
        """The pictures the vision encoder sees for ``image`` (PIL): tiles row by row, then the
        thumbnail."""
        from PIL import Image

        image = image.convert("RGB")
        size = self.image_size
        cols, rows = self.grid(*image.size)
        canvas = image.resize((size * cols, size * rows), Image.Resampling.BICUBIC)
        out = [canvas.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
               for r in range(rows) for c in range(cols)]
        if self.has_thumbnail(cols, rows):
            out.append(image.resize((size, size), Image.Resampling.BICUBIC))
        return out

    def pixel_values(self, image):
        """``(tiles, 3, size, size)`` float32 tensor of ``image``'s tiles, normalised."""
        import torch

        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        std = np.asarray(IMAGENET_STD, dtype=np.float32)
        arrays = [(np.asarray(tile, dtype=np.float32) / 255.0 - mean) / std for tile in self.tiles(image)]
        return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())

    # ------------------------------------------------------------------ both
    def __call__(self, images=None, text=None, return_tensors: str = "pt", add_special_tokens: bool = True,
                 padding: bool | str = True, **kwargs) -> Any:
        """Model inputs: ``input_ids`` and ``attention_mask`` of ``text`` (a string or a list, each
        ``<image>`` expanded into the image tokens of the next picture of ``images``) and
        ``pixel_values`` (every picture's tiles, in order)."""
        import torch
        from transformers import BatchFeature

        if return_tensors != "pt":
            raise ValueError("InternVL2Processor returns torch tensors only (return_tensors='pt')")
        texts = [text] if isinstance(text, str) else list(text or [])
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if sum(t.count(PLACEHOLDER) for t in texts) != len(images):
            raise ValueError(f"the text holds {sum(t.count(PLACEHOLDER) for t in texts)} {PLACEHOLDER} placeholders "
                             f"for {len(images)} images")
        pictures, expanded, next_image = [], [], 0
        for t in texts:
            parts = t.split(PLACEHOLDER)
            out = parts[0]
            for part in parts[1:]:
                values = self.pixel_values(images[next_image])
                next_image += 1
                pictures.append(values)
                out += self.image_tokens(int(values.shape[0])) + part
            expanded.append(out)
        # (one prompt needs no padding, and a tokenizer without a pad token, as Llama 3's, refuses to pad)
        encoded = self.tokenizer(expanded, return_tensors="pt", padding=padding if len(expanded) > 1 else False,
                                 add_special_tokens=add_special_tokens)
        data = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if pictures:
            data["pixel_values"] = torch.cat(pictures)
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, path, **kwargs) -> list[str]:
        """Write the tokenizer (the image settings and the template are the model config's)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        return list(self.tokenizer.save_pretrained(path, **kwargs))
