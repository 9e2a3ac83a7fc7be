"""What every image source gives: :class:`Sample` (one image with what is known about it),
whose image and masks may be :class:`Lazy` values loaded on first use."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Sample", "Lazy"]


class Lazy:
    """A value computed on first use: ``Sample(image=Lazy(lambda: Image.open(p)))``."""

    __slots__ = ("load",)

    def __init__(self, load: Callable[[], Any]):
        """``load``: called without arguments the first time the value is read."""
        self.load = load


class _LazyField:
    # dataclass field whose stored value may be a Lazy, resolved (once) when read
    def __set_name__(self, owner, name):
        self.slot = f"_{name}_value"

    def __get__(self, obj, owner=None):
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get(self.slot)
        if isinstance(value, Lazy):
            value = value.load()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@dataclass(repr=False, eq=False)
class Sample:
    """One image with what is known about it.

    Attributes:
        image_id: identifier, unique within its source (e.g. ``"480122"`` for COCO).
        image: the image as PIL RGB (``image`` and ``masks`` may be given as :class:`Lazy`
            values; they are then loaded on first access and kept).
        masks: object name -> instance masks (bool arrays of the image's height x width), for
            localisation; ``None`` where the source has no masks (a user's folder).
        objects: ground-truth object names, or ``None`` when unknown.
        meta: anything else the source knows (file path, COCO url, toy description, ...).
    """

    image_id: str
    image: Any = _LazyField()
    masks: Any = _LazyField()
    objects: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        n_obj = "?" if self.objects is None else len(self.objects)
        return f"Sample(image_id={self.image_id!r}, objects={n_obj}, meta keys={sorted(self.meta)})"
