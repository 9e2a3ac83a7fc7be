"""What every chapter sets up after loading its model: its images and its result store.

The store is keyed by the model as named, the revision its weights resolved to
(:attr:`vlmnb.engine.vlm.VLM.revision`), the image source and the chapter's settings, so a rerun
with the same parameters resumes and any change of model, weights or settings gets a store of
its own. :func:`run_on` runs a chapter's experiment on more models (the book sets each chapter
beside the second embedded model, ``toy-smollm``) with stores keyed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from vlmnb.data.sources import images as load_images
from vlmnb.data.store import ResultStore
from vlmnb.engine.vlm import load as load_model


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


@dataclass
class ModelRun:
    """One chapter's experiment on one more model: the model, its images, its store and what
    ``run`` returned."""

    vlm: Any
    samples: list
    store: ResultStore
    result: Any

    @property
    def name(self) -> str:
        return self.vlm.name


def run_on(models: Sequence[str], chapter: str, results_dir: str, images: Any, n_images: int, seed: int,
           run: Callable[[Any, list, ResultStore], Any], *, load: Callable[..., Any] | None = None,
           store_name: str = "run", mme_path: str | None = None, **settings) -> dict[str, ModelRun]:
    """The chapter's experiment on each of ``models`` (names as :func:`vlmnb.load` takes them),
    one after another: load the model, take its images and result store (:func:`chapter_inputs`,
    keyed like the chapter's own), call ``run(vlm, samples, store)``. Returns name -> :class:`ModelRun`,
    in the order given. ``settings`` key the stores and must be the ones ``run`` uses."""
    if len(set(models)) != len(models):
        raise ValueError(f"compare each model once: {list(models)}")
    load = load or load_model
    out: dict[str, ModelRun] = {}
    for name in models:
        vlm = load(name)
        samples, store = chapter_inputs(vlm, chapter, results_dir, images, n_images, seed, mme_path=mme_path,
                                        store_name=store_name, **settings)
        out[vlm.name] = ModelRun(vlm, samples, store, run(vlm, samples, store))
    return out
