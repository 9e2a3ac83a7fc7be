"""Command line: ``python -m vlmnb book ...`` and ``python -m vlmnb data ...`` (:mod:`vlmnb.cli.data`)."""
from __future__ import annotations

import argparse
import sys


def _book(argv: list[str]) -> int:
    from vlmnb.cli import book

    parser = argparse.ArgumentParser(prog="python -m vlmnb book",
                                     description="Execute the chapter notebooks with papermill and build the book.")
    parser.add_argument("notebooks", nargs="*", help="chapter names (default: every chapter in _toc.yml)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter in every selected chapter (YAML value)")
    parser.add_argument("--profile", default="default", help="parameter profile from notebooks/profiles.yml")
    parser.add_argument("--force", action="store_true", help="re-execute even when inputs did not change")
    parser.add_argument("--no-build", action="store_true", help="execute notebooks only, skip the HTML build")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--list", action="store_true", help="list chapters and their parameters")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for chapter in book.chapters():
                print(chapter.name, book.notebook_defaults(chapter.source))
            return 0
        params = {name: book.parse_overrides(f"{name}={value}")[name] for name, value in args.parameter}
        book.run(args.notebooks or None, profile=args.profile, params=params, force=args.force,
                 build=not args.no_build, kernel=args.kernel)
    except book.BookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _data(argv: list[str]) -> int:
    from vlmnb.cli.data import cli_data

    return cli_data(argv) or 0


COMMANDS = {"book": _book, "data": _data}


def main(argv: list[str] | None = None) -> int:
    """``python -m vlmnb COMMAND ...``: run the command (``book`` or ``data``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m vlmnb {book,data} ...  (try: python -m vlmnb book --help)", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
