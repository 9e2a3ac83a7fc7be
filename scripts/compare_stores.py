"""Compare the result stores of two book builds unit by unit: ``python scripts/compare_stores.py
BEFORE/runs AFTER/runs``. A unit is one (store, model, image, configuration); its rows must hold
the same texts and the same numbers (exactly, or within ``--atol``); wall-clock times
(the ``seconds`` column) are left out. Prints one line per store
and every differing unit; exits 1 when anything differs or a store is missing on one side.

Used to show that a refactoring changed no result: run ``make book`` on the old and the new tree
and compare their ``runs`` folders.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

UNIT = ["model", "image_id", "config"]
TIMING = "seconds"  # wall-clock time: differs between any two runs, so never compared


def drop_timing(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without its wall-clock column; a ``value`` that holds the same time is blanked."""
    if TIMING not in frame:
        return frame
    timed = frame[TIMING].notna() & (frame["value"] == frame[TIMING])
    frame = frame.drop(columns=[TIMING])
    frame.loc[timed, "value"] = np.nan
    return frame


def read_store(folder: Path) -> pd.DataFrame:
    """Every row of one store folder (``meta.json`` + ``parts/*.parquet``), in a canonical order."""
    tables = [pq.read_table(p) for p in sorted((folder / "parts").glob("*.parquet"))]
    if not tables:
        return pd.DataFrame()
    frame = pa.concat_tables(tables, promote_options="permissive").replace_schema_metadata(None).to_pandas()
    frame = drop_timing(frame)
    columns = sorted(frame.columns)
    frame = frame[columns]
    # rows of one unit keep their written order; units are sorted
    frame["_row"] = frame.groupby(UNIT, dropna=False).cumcount()
    return frame.sort_values(UNIT + ["_row"], kind="stable").reset_index(drop=True)


def _same(p, q) -> bool:
    """Equal values: scalars, missing values, or arrays/lists (stored as Arrow lists)."""
    if isinstance(p, (list, tuple, np.ndarray)) or isinstance(q, (list, tuple, np.ndarray)):
        try:
            return np.array_equal(np.asarray(p), np.asarray(q), equal_nan=True)
        except TypeError:  # non-numeric arrays
            return np.array_equal(np.asarray(p), np.asarray(q))
    if p is None or q is None or (isinstance(p, float) and np.isnan(p)) or (isinstance(q, float) and np.isnan(q)):
        return pd.isna(p) and pd.isna(q)
    return bool(p == q)


def differing_units(before: pd.DataFrame, after: pd.DataFrame, atol: float = 0.0) -> list[str]:
    """The units whose rows differ (count, texts, or numbers beyond ``atol``)."""
    if list(before.columns) != list(after.columns):
        return [f"columns differ: {sorted(set(before.columns) ^ set(after.columns))}"]
    out = []
    keys_b = {k: g for k, g in before.groupby(UNIT, dropna=False)}
    keys_a = {k: g for k, g in after.groupby(UNIT, dropna=False)}
    for key in sorted(set(keys_b) | set(keys_a), key=str):
        b, a = keys_b.get(key), keys_a.get(key)
        if b is None or a is None:
            out.append(f"{key}: only {'after' if b is None else 'before'}")
            continue
        if len(a) != len(b):
            out.append(f"{key}: {len(b)} rows before, {len(a)} after")
            continue
        for column in before.columns:
            x, y = b[column].to_numpy(), a[column].to_numpy()
            if pd.api.types.is_float_dtype(b[column]) and pd.api.types.is_float_dtype(a[column]):
                same = np.allclose(x.astype(float), y.astype(float), rtol=0, atol=atol, equal_nan=True)
            else:
                same = all(_same(p, q) for p, q in zip(x, y))
            if not same:
                out.append(f"{key}: column {column!r} differs")
                break
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--atol", type=float, default=0.0, help="tolerance on numbers (default: exact)")
    args = parser.parse_args(argv)
    # a store is named by its chapter folder and its name, without the hash of its parameters
    # (a parameter added with its old default changes the hash, not the results)
    def stores_of(root: Path) -> dict[str, Path]:
        found = {}
        for meta in sorted(root.rglob("meta.json")):
            rel = meta.parent.relative_to(root)
            key = str(rel.parent / rel.name.rsplit("-", 1)[0])
            if key in found:
                raise SystemExit(f"{root}: two stores named {key}; compare those folders one by one")
            found[key] = meta.parent
        return found

    before_stores, after_stores = stores_of(args.before), stores_of(args.after)
    stores = sorted(set(before_stores) | set(after_stores))
    if not stores:
        print(f"no result stores under {args.before} or {args.after}", file=sys.stderr)
        return 2
    total_units = total_diff = 0
    for store in stores:
        b, a = before_stores.get(store), after_stores.get(store)
        if b is None or a is None:
            print(f"{store}: missing {'before' if b is None else 'after'}")
            total_diff += 1
            continue
        before, after = read_store(b), read_store(a)
        diffs = differing_units(before, after, args.atol)
        units = before.groupby(UNIT, dropna=False).ngroups if len(before) else 0
        total_units += units
        total_diff += len(diffs)
        print(f"{store}: {units} units, {len(before)} rows, {len(diffs)} differences")
        for line in diffs[:20]:
            print(f"  {line}")
    print(f"total: {len(stores)} stores, {total_units} units, {total_diff} differences")
    return 1 if total_diff else 0


if __name__ == "__main__":
    raise SystemExit(main())
