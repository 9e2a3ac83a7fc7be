"""How every experiment walks its units of work: through the result store's one resumable loop.

An experiment names each unit by :func:`key` (model, image, configuration) and hands the keys,
in the order the rows should be written, with a function computing one unit's rows to
:func:`run_units`, which runs the store's loop (:meth:`vlmnb.data.store.UnitLoop.run`): units
already in the store are skipped, each computed unit is recorded whole, and an interrupted run
resumes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

__all__ = ["key", "by_image", "run_units"]


def key(model: str, image_id: Any, config: str) -> dict:
    """The key of one unit: ``{"model", "image_id", "config"}`` (this order: the key fields
    become the first columns of the unit's rows)."""
    return {"model": model, "image_id": str(image_id), "config": config}


def by_image(samples: Iterable) -> dict[str, Any]:
    """Samples by ``str(image_id)``, in order; a repeated id keeps its first sample (the loop
    computes an image's units once)."""
    out: dict[str, Any] = {}
    for sample in samples:
        out.setdefault(str(sample.image_id), sample)
    return out


def run_units(store, keys: Iterable[Mapping[str, Any]], compute: Callable[..., list[dict]], *,
              progress: bool = True, desc: str | None = None, part_per: str | None = None) -> None:
    """Store ``compute(**key)``'s rows for every key not yet in ``store``, in the order of ``keys``.

    ``part_per``: a key field (e.g. ``"image_id"``); a part file is written whenever its value
    changes, so a killed process loses at most the units of the value in progress. The
    buffered units are always written at the end.

    ``store`` is a :class:`~vlmnb.data.store.ResultStore` or another
    :class:`~vlmnb.data.store.UnitLoop` with ``flush`` (the sweep command line's shard store).
    """
    if part_per is not None:
        compute = _flushing(store, compute, part_per)
    store.run(keys, compute, progress=progress, desc=desc)
    store.flush()


def _flushing(store, compute: Callable[..., list[dict]], field: str) -> Callable[..., list[dict]]:
    """``compute`` that first writes the buffered units when ``field`` takes a new value."""
    current: list = []

    def wrapped(**unit_key: Any) -> list[dict]:
        value = unit_key[field]
        if current and current[0] != value:
            store.flush()
        current[:] = [value]
        return compute(**unit_key)

    return wrapped
