"""What every chapter sets up after loading its model: its images and its result store.

The store is keyed by the model as named, the revision its weights resolved to
(:attr:`vlmnb.engine.vlm.VLM.revision`), the image source and the chapter's settings, so a rerun
with the same parameters resumes and any change of model, weights or settings gets a store of
its own.
"""
from __future__ import annotations

from typing import Any

from vlmnb.data.sources import images as load_images
from vlmnb.data.store import ResultStore


def store_for(vlm, chapter: str, results_dir: str, images: Any, name: str = "run", **settings) -> ResultStore:
    """The result store of ``chapter`` under ``results_dir`` for ``vlm`` on ``images`` with
    ``settings`` (the parameters that change its results)."""
    params = dict(model=vlm.name, revision=vlm.revision, images=str(images), **settings)
    return ResultStore.in_dir(f"{results_dir}/{chapter}", params, name=name)


def chapter_inputs(vlm, chapter: str, results_dir: str, images: Any, n_images: int, seed: int, *,
                   mme_path: str | None = None, store_name: str = "run", **settings):
    """``(samples, store)``: the first ``n_images`` of ``images`` (toy scenes drawn with ``seed``;
    MME read from ``mme_path`` when given) and the chapter's result store (:func:`store_for`, its
    key holding ``n_images``, ``seed`` and ``settings``)."""
    source = {"path": mme_path or None} if images == "mme" else {}
    samples = load_images(images, n=n_images, seed=seed, **source)
    store = store_for(vlm, chapter, results_dir, images, name=store_name, n_images=n_images, seed=seed, **settings)
    return samples, store
