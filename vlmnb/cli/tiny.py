"""``python -m vlmnb.tiny FAMILY DIR``: write a tiny random model of a supported family to a folder."""
from __future__ import annotations

import argparse

from vlmnb.engine import families, tiny


def main(argv=None) -> int:
    """``python -m vlmnb.tiny FAMILY FOLDER [--seed N] [--image-size PX]``, or ``--list``."""
    parser = argparse.ArgumentParser(prog="python -m vlmnb.tiny",
                                     description="Write a tiny random model of a supported family to FOLDER.")
    parser.add_argument("family", nargs="?", choices=families.NAMES, metavar="FAMILY",
                        help="one of: " + ", ".join(families.NAMES))
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--list", action="store_true",
                        help="print the families of the registry (vlmnb.engine.families), one a line, and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(families.NAMES))
        return 0
    if args.family is None or args.folder is None:
        parser.error("FAMILY and FOLDER are required (or --list)")
    print(tiny.save(args.family, args.folder, seed=args.seed, image_size=args.image_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
