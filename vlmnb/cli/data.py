"""``python -m vlmnb data coco ...`` / ``python -m vlmnb data mme ...``: fetch or check the
datasets the chapters use (see :mod:`vlmnb.data`). Bad input is one line and exit status 2,
checked before anything is downloaded or written."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from vlmnb.core.usage import ArgumentParser, UsageError, add_version, at_least, check_output_folder, one_line, run_main
from vlmnb.data.coco import coco_cache_dir, coco_ids, coco_resolver, download_coco
from vlmnb.data.mme import MME_HUB_ID, MME_PERCEPTION, load_mme

__all__ = ["cli_data", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vlmnb data coco ...`` / ``python -m vlmnb data mme ...``; returns the exit status."""
    return run_main(_cli_data, argv)


cli_data = main


def _cli_data(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m vlmnb data", description="Fetch or check the datasets the chapters use.")
    add_version(parser)
    sub = parser.add_subparsers(dest="dataset", required=True)
    coco = sub.add_parser("coco", help="download the paper's 81 COCO images into the cache")
    coco.add_argument("--annotations", metavar="DIR",
                      help="folder with the official instances_*.json files (unzipped annotations)")
    coco.add_argument("--cache", metavar="DIR", help="COCO cache folder (default: <work tree>/.cache/vlmnb/coco)")
    coco.add_argument("--base-url", help="mirror serving the paths of http://images.cocodataset.org")
    coco.add_argument("--n", type=at_least(1), help="only the first N ids")
    mme = sub.add_parser("mme", help="check a local copy of the MME benchmark")
    mme.add_argument("--dir", metavar="DIR", help=f"folder with the {MME_HUB_ID} parquet files "
                     "(default: <work tree>/.cache/vlmnb/mme)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.dataset == "coco":
        check_output_folder(coco_cache_dir(args.cache), "--cache")
        if args.annotations and not Path(args.annotations).expanduser().is_dir():
            raise UsageError(f"--annotations {args.annotations}: no such folder; unzip the official "
                             "annotations_trainval2017.zip there (from images.cocodataset.org/annotations/)")
    try:
        if args.dataset == "coco":
            ids = coco_ids()[: args.n]
            cache = coco_cache_dir(args.cache)
            paths = download_coco(ids, cache, args.annotations, args.base_url)
            resolver = coco_resolver(ids, cache, args.annotations)
            n_inst = sum(len(resolver.annotations(i)) for i in ids)
            total = sum(p.stat().st_size for p in paths.values())
            print(f"{len(paths)} COCO images ({total / 1e6:.1f} MB, {n_inst} instance annotations) "
                  f"cached and verified in {cache}")
        else:
            df = load_mme(args.dir)
            per_image = df.groupby("image_id").size()
            print(f"MME: {len(df)} questions on {df['image_id'].nunique()} images")
            counts = df.groupby("category").agg(questions=("question", "size"), images=("image_id", "nunique"))
            print(counts.to_string())
            odd = per_image[per_image != 2]
            if len(odd):
                print(f"warning: {len(odd)} image(s) do not have exactly two questions, "
                      f"e.g. {list(odd.index[:3])}", file=sys.stderr)
                return 1
            absent = [c for c in MME_PERCEPTION if c not in set(df["category"])]
            if absent:
                print(f"warning: perception categories missing: {absent}", file=sys.stderr)
                return 1
    except (FileNotFoundError, ConnectionError, ValueError, LookupError) as err:
        raise UsageError(one_line(err)) from None
    return 0
