"""The MME benchmark (``lmms-lab/MME`` on the Hugging Face hub, parquet shards), as a DataFrame
(:func:`load_mme`) or as samples, one per image (:func:`mme_samples`)::

    questions = vlmnb.data.load_mme("path/to/MME")

Check a local copy with ``python -m vlmnb data mme --dir DIR``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from vlmnb.core.images import load_image
from vlmnb.core.paths import cache_dir as cache_root
from vlmnb.data.sample import Lazy, Sample

__all__ = ["MME_HUB_ID", "MME_PERCEPTION", "MME_COGNITION", "MME_COLUMNS", "EncodedImage",
           "load_mme", "mme_samples"]

MME_HUB_ID = "lmms-lab/MME"
#: the perception subsets, spelled as in the dataset's ``category`` column (as lmms-eval uses them)
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity",
                  "scene", "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_COLUMNS = ("question_id", "image", "question", "answer", "category")


class EncodedImage:
    """An image kept encoded (bytes or a file path) until :meth:`open` decodes it."""

    __slots__ = ("data", "path")

    def __init__(self, data: bytes | None = None, path: str | None = None):
        """``data``: the encoded bytes; ``path``: the file (used when there are no bytes)."""
        if data is None and not path:
            raise ValueError("an EncodedImage needs bytes or a path")
        self.data = data
        self.path = path

    def open(self) -> Image.Image:
        """Decode as PIL RGB."""
        if self.data is not None:
            with Image.open(io.BytesIO(self.data)) as im:
                return im.convert("RGB")
        return load_image(Path(self.path))

    def __repr__(self) -> str:
        size = f"{len(self.data) / 1e3:.1f} kB" if self.data is not None else "file"
        return f"<EncodedImage {size} {self.path or ''}>".replace(" >", ">")


def _mme_help(where: str) -> str:
    return (f"download the benchmark from the Hugging Face hub ({MME_HUB_ID}) with\n"
            f"  hf download {MME_HUB_ID} --repo-type dataset --local-dir {where}\n"
            f"(log in first with `hf auth login` if the hub asks), then load_mme({where!r}) "
            f"or check it with: python -m vlmnb data mme --dir {where}")


def _mme_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no MME data at {path}: " + _mme_help(str(path)))
    files = sorted(p for p in path.rglob("*.parquet")
                   if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FileNotFoundError(f"no MME parquet files under {path}: " + _mme_help(str(path)))
    return files


def _mme_categories(categories: str | Iterable[str] | None) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        if categories.lower() == "perception":
            return list(MME_PERCEPTION)
        if categories.lower() == "cognition":
            return list(MME_COGNITION)
        categories = [categories]
    cats = list(categories)
    known = MME_PERCEPTION + MME_COGNITION
    bad = [c for c in cats if c not in known]
    if bad:
        raise ValueError(f"unknown MME categories {bad}; valid: {', '.join(known)} "
                         "(or 'perception' / 'cognition')")
    return cats


def _encoded(value: Any) -> EncodedImage | None:
    if value is None:
        return None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        return EncodedImage(data, path) if (data is not None or path) else None
    if isinstance(value, (bytes, bytearray)):
        return EncodedImage(bytes(value))
    return EncodedImage(path=str(value))


def load_mme(path_or_dir: str | os.PathLike | None = None,
             categories: str | Iterable[str] | None = None) -> "pandas.DataFrame":  # noqa: F821
    """The MME benchmark as published on the hub (``lmms-lab/MME``, parquet shards).

    Args:
        path_or_dir: a parquet file or a folder searched recursively for ``*.parquet`` (the
            hub snapshot keeps them in ``data/``); default ``<cache>/mme`` (see
            :func:`vlmnb.core.paths.cache_dir`).
        categories: keep only these ``category`` values (``"perception"`` selects the ten
            perception subsets, :data:`MME_PERCEPTION`).

    Returns:
        One row per question with columns ``question_id``, ``image_id`` (= ``question_id``,
        shared by the two questions about one image), ``question``, ``answer``, ``category``
        and ``image`` (an :class:`EncodedImage`; call ``.open()`` for PIL RGB).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path_or_dir).expanduser() if path_or_dir is not None else cache_root() / "mme"
    files = _mme_files(root)
    cats = _mme_categories(categories)
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in MME_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{f} lacks MME column(s) {missing}; expected {list(MME_COLUMNS)} "
                             f"as in {MME_HUB_ID}")
        filters = [("category", "in", cats)] if cats else None
        tables.append(pq.read_table(f, columns=list(MME_COLUMNS), filters=filters))
    table = pa.concat_tables(tables, promote_options="permissive")
    df = pd.DataFrame({
        "question_id": table.column("question_id").to_pylist(),
        "question": table.column("question").to_pylist(),
        "answer": table.column("answer").to_pylist(),
        "category": table.column("category").to_pylist(),
        "image": [_encoded(v) for v in table.column("image").to_pylist()],
    })
    df.insert(1, "image_id", df["question_id"])
    if cats:
        absent = [c for c in cats if c not in set(df["category"])]
        if absent and len(absent) == len(cats):
            raise ValueError(f"none of the categories {cats} is in {root}; it has "
                             f"{sorted(set(table.column('category').to_pylist()))}")
    return df


def mme_samples(df: "pandas.DataFrame", n: int | None = None) -> list[Sample]:  # noqa: F821
    """One sample per MME image (first ``n``), its questions and answers in ``meta``."""
    out = []
    for image_id, group in df.groupby("image_id", sort=False):
        if n is not None and len(out) >= n:
            break
        enc = group["image"].iloc[0]
        out.append(Sample(
            image_id=str(image_id), image=Lazy(enc.open) if enc is not None else None,
            masks=None, objects=None,
            meta={"source": "mme", "category": group["category"].iloc[0],
                  "questions": group["question"].tolist(), "answers": group["answer"].tolist()}))
    return out
