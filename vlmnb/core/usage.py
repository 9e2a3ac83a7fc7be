"""What every command line of the package shares: bad input is one line and exit status 2.

A command's ``main`` parses its arguments with :class:`ArgumentParser` (a malformed command
line is one line, ``error: ...``, and exit 2), then *validates* them before anything is written, raising
:class:`UsageError` (a :class:`~vlmnb.core.errors.OneLineError`) for input that cannot work.
:func:`run_main` runs such a ``main``: any one-line error it raises is printed as
``error: <message>`` on one line of stderr and the exit status is 2, with no traceback.
Warnings are printed as ``warning: <message>``, one line each.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from vlmnb.core.errors import OneLineError
from vlmnb import __version__

__all__ = ["UsageError", "ArgumentParser", "is_one_line", "one_line", "run_main", "add_version",
           "check_output_folder", "check_input_folder", "at_least", "between", "check_device"]


class UsageError(OneLineError, ValueError):
    """Bad command-line input (or a bad argument to a public function): one line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser answering a malformed command line with one line (and status 2), not
    its usage; ``--help`` prints the usage as always."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def is_one_line(err: BaseException) -> bool:
    """Whether ``err`` is one of the package's one-line errors (:class:`OneLineError`)."""
    return isinstance(err, OneLineError)


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {one_line(message)}", file=file or sys.stderr)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a one-line error becomes ``error: <message>`` on stderr and status 2."""
    previous = warnings.showwarning
    warnings.showwarning = _warning_line
    try:
        return int(main(argv) or 0)
    except Exception as err:  # OneLineError is a mixin: catch its exceptions only
        if not is_one_line(err):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


def add_version(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` option printing the package version."""
    parser.add_argument("--version", action="version", version=f"vlmnb {__version__}")


def at_least(minimum: int | float, kind: type = int) -> Callable[[str], int | float]:
    """An argparse ``type``: a number of ``kind`` that is at least ``minimum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} >= {minimum}"
    return parse


def between(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = (low < value if low_open else low <= value) and value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low}, {high}], got {text}")
        return value

    parse.__name__ = "number"
    return parse


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Raise :class:`UsageError` unless ``path`` is (or can be created as) a writable folder.

    Nothing is created: the check looks at ``path`` or, when it does not exist, at its nearest
    existing parent (which must be a folder on a writable file system that we may write to).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path} cannot be created: {existing} is a file, not a folder")
    readonly = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if readonly or not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if readonly else "is not writable"
        where = "" if existing == path else f" (its parent {existing} {why})"
        raise UsageError(f"{option} {path} cannot be written{where or ': it ' + why}; choose a writable folder")
    return path


def check_input_folder(path: str | os.PathLike, option: str, must_hold: str | None = None) -> Path:
    """Raise :class:`UsageError` unless ``path`` is an existing folder (holding ``must_hold``)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(f"{option} {path}: no such folder")
    if must_hold and not (path / must_hold).is_file():
        raise UsageError(f"{option} {path} holds no {must_hold}")
    return path


def check_device(device: str, option: str = "--device") -> str:
    """Raise :class:`UsageError` unless ``device`` is a torch device this machine has."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"{option} {device}: not a torch device ({one_line(exc)})") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{option} {device}: this machine has no CUDA GPU; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f"{option} {device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option} {device}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{option} {device}: use cpu, cuda or cuda:N")
    return device
