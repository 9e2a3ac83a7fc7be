"""Run a knockout sweep from the command line, on one process or many.

One process (one GPU or the CPU)::

    python -m vlmnb.cli.sweep --model llava-hf/llava-1.5-7b-hf --images coco --fig2 --stride 1 \\
        --window 4 20 --max-new-tokens 200 --out runs/fig2-llava

Several processes (``accelerate launch`` or ``torchrun``): the images are split between the
processes (accelerate's ``PartialState.split_between_processes``), each process writes its own
store ``OUT/shards/w<world>-r<rank>`` (the sweep's parameters plus ``rank`` and
``world_size``), and when all are done the first process merges every shard into
``OUT/merged`` (:func:`vlmnb.data.store.merge`)::

    accelerate launch --num_processes 8 -m vlmnb.cli.sweep ... --out runs/fig2
    torchrun --nproc_per_node 8 -m vlmnb.cli.sweep ... --out runs/fig2

``--gpus-per-process k`` shards a model too big for one GPU over k GPUs with
``device_map="auto"`` (local process i uses GPUs i*k .. i*k+k-1). ``--dtype``, ``--device-map``,
``--revision`` and ``--trust-remote-code`` go to :func:`vlmnb.load`.

Rerunning the same command resumes: every process skips the units already in any shard under
``OUT`` (also shards of an earlier run with another number of processes). A part file that
cannot be read (a truncated copy) is set aside into its store's ``parts/corrupt/`` and its
units are recomputed. ``--merge-only`` merges existing shards (e.g. after copying them from
several machines into one folder). Running with other parameters into an ``OUT`` that holds
results is refused; ``--reset`` moves its shards and merged store aside into
``OUT/old/<time>/`` and starts over.

Bad input (an unknown model, ``--window 5 2``, ``--stride 0``, an unwritable ``--out``, changed
parameters) is answered with one line, ``error: ...``, and exit status 2, before anything is
written.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from vlmnb.core.errors import OneLineError
from vlmnb.core.usage import (ArgumentParser, UsageError, add_version, at_least, between, check_output_folder,
                              is_one_line, one_line, run_main)
from vlmnb.data.store import (CorruptPart, ResultStore, UnitLoop, is_store, list_parts, merge, params_differ,
                              part_units, read_parts, stored_params, unit_id)
from vlmnb.experiments import sweep
import vlmnb
from vlmnb import data

#: what ``--dtype`` accepts (``auto``: the checkpoint's own dtype)
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: parameters that differ between the shards of one run
PER_PROCESS = ("rank", "world_size")


class NoShards(OneLineError, FileNotFoundError):
    """``--merge-only`` on a folder without shard stores."""


class ShardStore(UnitLoop):
    """The store one process writes, seeing the units of other shards under the run as done.

    Behaves like a :class:`~vlmnb.data.store.ResultStore` for :func:`vlmnb.experiments.sweep.run`: ``done`` is
    true for units in this shard or any other; ``frame`` holds the rows of all of them; ``has``,
    ``unit`` and ``run`` (the store's resumable loop, :class:`~vlmnb.data.store.UnitLoop`) skip them.
    """

    def __init__(self, own: ResultStore, others: list[Path]):
        self.own = own
        self.other_parts, self.other_done = [], set()
        for part in (p for folder in others for p in list_parts(folder)):
            try:  # a corrupt part of another shard: its units are not done (the merge sets it aside)
                self.other_done.update(part_units(part))
                self.other_parts.append(part)
            except CorruptPart:
                pass

    @property
    def path(self) -> Path:
        """This process's own store's folder."""
        return self.own.path

    @property
    def params(self) -> dict:
        """This process's own store's parameters."""
        return self.own.params

    def done(self, key) -> bool:
        """True when the unit is in this shard or in any other."""
        return self.own.done(key) or unit_id(key) in self.other_done

    def put(self, key, rows) -> None:
        """Record one complete unit in this process's own store."""
        self.own.put(key, rows)

    def flush(self):
        """Write this process's buffered units (see :meth:`ResultStore.flush`)."""
        return self.own.flush()

    def frame(self) -> pd.DataFrame:
        """The rows of the other shards, then this one's."""
        own = self.own.frame()
        if not self.other_parts:
            return own
        return pd.concat([read_parts(self.other_parts), own], ignore_index=True)


def shard_dirs(out: Path) -> list[Path]:
    """Every shard store under the run folder ``out``."""
    folder = Path(out) / "shards"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_store(p))


def merge_shards(out: str | os.PathLike) -> ResultStore:
    """Merge every shard under ``out`` into ``out/merged`` (idempotent); corrupt parts of the
    shards are set aside (their units are then missing until a rerun recomputes them)."""
    shards = shard_dirs(Path(out))
    if not shards:
        raise NoShards(f"no shard stores under {Path(out) / 'shards'}; run the sweep first")
    return merge(shards, Path(out) / "merged", ignore_params=PER_PROCESS, repair=True)


def device_kwargs(local_index: int, gpus_per_process: int, device_map: str | None) -> dict[str, Any]:
    """``vlmnb.load`` arguments placing this process's model on its own GPU(s), or the CPU."""
    import torch

    if device_map == "cpu":
        return {"device_map": "cpu"}
    if not torch.cuda.is_available():
        return {"device_map": device_map}
    n = torch.cuda.device_count()
    first = local_index * gpus_per_process
    group = list(range(first, first + gpus_per_process))
    if group[-1] >= n:
        raise UsageError(f"local process {local_index} needs GPUs {group} but this machine has {n}; "
                         f"launch at most {n // gpus_per_process} processes per machine")
    if gpus_per_process == 1 and device_map in (None, "auto"):
        return {"device_map": {"": group[0]}}
    memory = {g: int(torch.cuda.get_device_properties(g).total_memory * 0.9) for g in group}
    return {"device_map": device_map or "auto", "max_memory": memory}


def build_configs(args, n_layers: int):
    """The sweep's configurations from the command line's ``--fig2``/``--topk``/``--baseline-only``."""
    configs = [sweep.Config("baseline")]
    if args.fig2:
        window = tuple(args.window) if args.window else None
        if window is not None and window[1] >= n_layers:
            raise UsageError(f"--window {window[0]} {window[1]}: the model has {n_layers} layers (0 to "
                             f"{n_layers - 1})")
        configs += sweep.knockout_configs(n_layers, stride=args.stride, window=window)[1:]
    if args.topk:
        configs += sweep.topk_configs(args.topk)[1:]
    return configs


def _text(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    p = ArgumentParser(prog="python -m vlmnb.cli.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (shards/ and merged/ go inside)")
    p.add_argument("--model", default="toy", type=_text, help="toy, a model folder or a hub id (default: toy)")
    p.add_argument("--images", default="toy", type=_text,
                   help="toy, coco, mme, a folder of images or an image file (default: toy)")
    p.add_argument("--n-images", type=at_least(1), default=None, help="the first N images (default: all)")
    p.add_argument("--prompt", default="describe the image", type=_text)
    p.add_argument("--max-new-tokens", type=at_least(1), default=64)
    p.add_argument("--fig2", action="store_true", help="the three knockouts in all layers (+ --stride, --window)")
    p.add_argument("--stride", type=at_least(1), default=None, help="also 'from layer l' for every stride-th layer")
    p.add_argument("--window", type=at_least(0), nargs=2, metavar=("A", "B"),
                   help="also 'outside layers A-B' (0 <= A <= B < the model's layers)")
    p.add_argument("--topk", type=between(0, 1, low_open=True), nargs="+",
                   help="top-k configurations (fractions in (0, 1], e.g. 0.05 0.1)")
    p.add_argument("--baseline-only", action="store_true")
    p.add_argument("--no-batch", action="store_true", help="one generate per configuration (slow; for checks)")
    p.add_argument("--max-batch-rows", type=at_least(1), default=32)
    p.add_argument("--gpus-per-process", type=at_least(1), default=1)
    p.add_argument("--device-map", default=None, type=_text,
                   help="passed to vlmnb.load, e.g. auto, cpu, cuda:0 (default: this process's GPU(s))")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="passed to vlmnb.load (default: the checkpoint's on GPU, float32 on CPU)")
    p.add_argument("--revision", default=None, type=_text,
                   help="hub branch, tag or commit of the model (default: main); passed to vlmnb.load")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the checkpoint's own modelling code (passed to vlmnb.load)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where GPUs exist")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads per process")
    p.add_argument("--reset", action="store_true",
                   help="move OUT's shards and merged store aside into OUT/old/<time>/ and start over")
    p.add_argument("--merge-only", action="store_true", help="only merge the shards under --out")
    p.add_argument("--no-progress", action="store_true")
    add_version(p)
    return p


def validate(args) -> None:
    """Check the arguments that need no model (raises :class:`UsageError`); writes nothing."""
    if args.merge_only:
        check_output_folder(args.out)
        return
    if args.window and args.window[0] > args.window[1]:
        raise UsageError(f"--window A B needs A <= B, got {args.window[0]} {args.window[1]}")
    if (args.stride or args.window) and not args.fig2:
        raise UsageError("--stride and --window refine --fig2; add --fig2")
    if not (args.fig2 or args.topk or args.baseline_only):
        raise UsageError("choose configurations: --fig2 (with --stride/--window), --topk K ..., or --baseline-only")
    if args.cpu and args.device_map not in (None, "cpu"):
        raise UsageError(f"--cpu and --device-map {args.device_map} contradict each other; give one of them")
    if args.images not in ("toy", "coco", "mme") and not Path(args.images).expanduser().exists():
        raise UsageError(f"--images {args.images}: no such file or folder (use toy, coco, mme, a folder of "
                         "images or an image file)")
    model = Path(args.model).expanduser()
    if model.exists() and not (model / "config.json").is_file():
        raise UsageError(f"--model {args.model} is not a model folder (no config.json)")
    out = check_output_folder(args.out)
    shards = out / "shards"
    for folder in [out / "merged", shards] + (list(shards.iterdir()) if shards.is_dir() else []):
        if args.reset or folder == shards and (folder.is_dir() or not folder.exists()):
            continue  # --reset moves shards/ and merged/ aside whatever they hold
        if folder.exists() and not is_store(folder) and (not folder.is_dir() or _occupied(folder)):
            raise UsageError(f"{folder} is in the way: it is not a result store; move it out of --out {out}, "
                             "or rerun with --reset to move OUT's shards and merged store aside")


def _occupied(folder: Path) -> bool:
    """Whether ``folder`` holds something (an empty ``parts/`` left by a killed run does not count)."""
    return any(p.name != "parts" or not p.is_dir() or any(p.iterdir()) for p in folder.iterdir())


def check_existing(out: Path, params: dict) -> None:
    """Refuse (:class:`UsageError`) when a store under ``out`` holds results of other parameters."""
    for folder in [*shard_dirs(out), out / "merged"]:
        try:
            stored = stored_params(folder)
        except (ValueError, OSError) as exc:
            raise UsageError(f"{folder} is not a readable result store ({one_line(exc)}); rerun with --reset "
                             f"to move it aside into {out / 'old'}/ and start over") from None
        diff = params_differ(stored, params, ignore=PER_PROCESS) if stored is not None else []
        if diff:
            raise UsageError(f"--out {out} holds results of a sweep with other parameters ({'; '.join(diff)}); "
                             f"rerun with --reset to move them aside into {out / 'old'}/ and start over, "
                             "or choose another --out")


def reset(out: Path) -> Path | None:
    """Move ``out``'s shards and merged store into ``out/old/<UTC time>/`` (never deletes)."""
    present = [out / name for name in ("shards", "merged") if (out / name).exists()]
    if not present:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = out / "old" / stamp
    target.mkdir(parents=True)
    for folder in present:
        os.replace(folder, target / folder.name)
    return target


def load_model(args, local_index: int):
    """The model of ``--model`` (one-line :class:`UsageError` when it cannot be loaded)."""
    import torch

    dtype = args.dtype
    if dtype is None:
        dtype = "float32" if args.cpu else None
    if dtype not in (None, "auto"):
        dtype = getattr(torch, dtype)
    device_map = "cpu" if args.cpu else args.device_map
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return vlmnb.load(args.model, dtype=dtype, revision=args.revision, trust_remote_code=args.trust_remote_code,
                          **device_kwargs(local_index, args.gpus_per_process, device_map))
    except (OSError, ValueError, ImportError) as exc:
        if is_one_line(exc):
            raise
        raise UsageError(f"--model {args.model} cannot be loaded: {one_line(exc)}") from None


def main(argv=None) -> int:
    """Run (or with ``--merge-only`` merge) a sweep; returns the exit status (2: bad input)."""
    return run_main(_main, argv)


def _main(argv) -> int:
    args = parser().parse_args(argv)
    validate(args)
    out = Path(args.out).expanduser()
    if args.merge_only:
        merged = merge_shards(out)
        print(f"merged {len(shard_dirs(out))} shard(s): {merged}")
        return 0

    import torch
    from accelerate import PartialState

    if args.threads:
        torch.set_num_threads(args.threads)
    # without cpu=True accelerate leaves CPU-only processes launched by torchrun unconnected
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    vlm = load_model(args, state.local_process_index)
    configs = build_configs(args, vlm.num_layers)
    try:
        samples = data.images(args.images, n=args.n_images)
    except (OSError, ValueError, LookupError) as exc:
        raise UsageError(f"--images {args.images}: {one_line(exc)}") from None
    if not samples:
        raise UsageError(f"--images {args.images} holds no images")
    params = {"model": args.model, "revision": vlm.revision, "dtype": str(vlm.model.dtype).removeprefix("torch."),
              "images": args.images, "n_images": args.n_images, "prompt": args.prompt,
              "max_new_tokens": args.max_new_tokens, "configs": [c.name for c in configs],
              "rank": rank, "world_size": world}
    if not args.reset:
        check_existing(out, params)
    state.wait_for_everyone()  # every process has checked before anything is moved or written
    if args.reset and state.is_main_process:
        moved = reset(out)
        if moved:
            print(f"moved the earlier results aside into {moved}", file=sys.stderr)
    state.wait_for_everyone()
    own_path = out / "shards" / f"w{world:03d}-r{rank:03d}"
    others = [p for p in shard_dirs(out) if p.resolve() != own_path.resolve()]
    with state.split_between_processes(list(samples)) as mine:
        with ResultStore(own_path, params) as own:
            sweep.run(vlm, mine, configs, ShardStore(own, others), prompt=args.prompt,
                      max_new_tokens=args.max_new_tokens, batch=not args.no_batch,
                      max_batch_rows=args.max_batch_rows, progress=not args.no_progress and state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        merged = merge_shards(out)
        print(f"{len(merged)} units in {merged.path}", file=sys.stderr)
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
