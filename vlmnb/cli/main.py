"""Command line: ``python -m vlmnb book ...`` (:mod:`vlmnb.cli.book`) and ``python -m vlmnb data ...``
(:mod:`vlmnb.cli.data`); ``python -m vlmnb --help`` lists the commands, ``--version`` prints the
package version. Bad input is one line, ``error: ...``, and exit status 2."""
from __future__ import annotations

import sys

from vlmnb import __version__

PROG = "python -m vlmnb"

#: command -> (module under vlmnb.cli with a ``main(argv)``, one-line description)
COMMANDS = {
    "book": ("book", "execute the chapter notebooks with papermill and build the book"),
    "data": ("data", "fetch or check the datasets the chapters use (COCO, MME)"),
}

OTHER_COMMANDS = {
    "python -m vlmnb.cli.sweep": "a knockout sweep on one process or many (accelerate, torchrun)",
    "python -m vlmnb.tiny": "write a tiny random model of a supported family to a folder",
    "python -m vlmnb.toy.train": "train the embedded toy model",
    "python -m vlmnb.toy.evaluate": "held-out evaluation of a toy checkpoint",
}


def usage() -> str:
    """The ``--help`` text."""
    width = max(map(len, [*COMMANDS, *OTHER_COMMANDS])) + 2
    lines = [f"usage: {PROG} [--help] [--version] {{{','.join(COMMANDS)}}} ...", "",
             "vlmnb: the re-runnable companion to \"What's in the Image?\".", "", "commands:"]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", f"Run '{PROG} COMMAND --help' for a command's options. Other command lines:"]
    lines += [f"  {name:<{width}}{text}" for name, text in OTHER_COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m vlmnb COMMAND ...``: run the command (``book`` or ``data``); returns the exit status."""
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] == "--version":
        print(f"vlmnb {__version__}")
        return 0
    if not argv:
        print(f"error: no command given; choose one of: {', '.join(COMMANDS)} (see {PROG} --help)", file=sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        what = "option" if argv[0].startswith("-") else "command"
        print(f"error: unknown {what} {argv[0]!r}; choose one of: {', '.join(COMMANDS)} (see {PROG} --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"vlmnb.cli.{COMMANDS[argv[0]][0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
