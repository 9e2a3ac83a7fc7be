"""``python -m vlmnb.tiny FAMILY DIR``: write a tiny random model of a supported family to a folder.

Bad input (an unknown family, a FOLDER that is a file, holds other files or cannot be written)
is one line and exit status 2, with nothing written."""
from __future__ import annotations

from pathlib import Path

from vlmnb.core.usage import ArgumentParser, UsageError, add_version, at_least, check_output_folder, run_main
from vlmnb.engine import families, tiny

MAX_IMAGE_SIZE = 1024  # beyond this a tiny model's position tables stop being tiny

#: what a FOLDER written earlier by this command holds (it may be written again)
_OWN_FILES = ("config.json", "model.safetensors", "generation_config.json", "processor_config.json",
              "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json",
              "tokenizer.model", "video_preprocessor_config.json")


def parser() -> ArgumentParser:
    """The command line's argument parser."""
    p = ArgumentParser(prog="python -m vlmnb.tiny",
                       description="Write a tiny random model of a supported family to FOLDER.")
    p.add_argument("family", nargs="?", choices=families.NAMES, metavar="FAMILY",
                   help="one of: " + ", ".join(families.NAMES))
    p.add_argument("folder", nargs="?", metavar="FOLDER",
                   help="where to write it (a new or empty folder, or an earlier tiny model's)")
    p.add_argument("--list", action="store_true",
                   help="print the families of the registry (vlmnb.engine.families), one a line, and exit")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--image-size", type=at_least(1), default=None,
                   help=f"image side in pixels, at most {MAX_IMAGE_SIZE} (default: the family's)")
    add_version(p)
    return p


def _own_code(folder: Path, path: Path) -> bool:
    """Whether ``path`` is modelling code an earlier tiny model wrote beside its weights (a
    family whose checkpoints ship their own code: a ``.py`` file, the config holding an auto_map)."""
    import json

    if path.suffix != ".py" or not (folder / "config.json").is_file():
        return False
    try:
        return "auto_map" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def validate(args) -> Path:
    """The folder to write (raises :class:`~vlmnb.core.usage.UsageError`; writes nothing)."""
    if args.family is None or args.folder is None:
        raise UsageError("FAMILY and FOLDER are required (or --list); see python -m vlmnb.tiny --help")
    if args.image_size is not None and args.image_size > MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size {args.image_size}: a tiny model takes at most {MAX_IMAGE_SIZE} pixels")
    folder = check_output_folder(args.folder, "FOLDER")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in _OWN_FILES and not _own_code(folder, p))
        if foreign:
            raise UsageError(f"FOLDER {folder} holds other files ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder")
    return folder


def _main(argv) -> int:
    args = parser().parse_args(argv)
    if args.list:
        print("\n".join(families.NAMES))
        return 0
    folder = validate(args)
    try:
        print(tiny.save(args.family, folder, seed=args.seed, image_size=args.image_size))
    except ValueError as exc:  # e.g. an image size the family's processor cannot take
        raise UsageError(f"{args.family}: {exc}") from None
    return 0


def main(argv=None) -> int:
    """``python -m vlmnb.tiny FAMILY FOLDER [--seed N] [--image-size PX]``, or ``--list``."""
    return run_main(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
