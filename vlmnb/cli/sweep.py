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
``device_map="auto"`` (local process i uses GPUs i*k .. i*k+k-1). Rerunning the same command
resumes: every process skips the units already in any shard under ``OUT`` (also shards of an
earlier run with another number of processes). ``--merge-only`` merges existing shards (e.g.
after copying them from several machines into one folder).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from vlmnb.data.store import ResultStore, UnitLoop, is_store, list_parts, merge, part_units, read_parts, unit_id


class ShardStore(UnitLoop):
    """The store one process writes, seeing the units of other shards under the run as done.

    Behaves like a :class:`~vlmnb.data.store.ResultStore` for :func:`vlmnb.experiments.sweep.run`: ``done`` is
    true for units in this shard or any other; ``frame`` holds the rows of all of them; ``has``,
    ``unit`` and ``run`` (the store's resumable loop, :class:`~vlmnb.data.store.UnitLoop`) skip them.
    """

    def __init__(self, own: ResultStore, others: list[Path]):
        self.own = own
        self.other_parts = [p for folder in others for p in list_parts(folder)]
        self.other_done = {u for p in self.other_parts for u in part_units(p)}

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
    """Merge every shard under ``out`` into ``out/merged`` (idempotent)."""
    shards = shard_dirs(Path(out))
    if not shards:
        raise FileNotFoundError(f"no shard stores under {Path(out) / 'shards'}; run the sweep first")
    return merge(shards, Path(out) / "merged", ignore_params=("rank", "world_size"))


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
        raise ValueError(f"local process {local_index} needs GPUs {group} but this machine has {n}; "
                         f"launch at most {n // gpus_per_process} processes per machine")
    if gpus_per_process == 1 and device_map in (None, "auto"):
        return {"device_map": {"": group[0]}}
    memory = {g: int(torch.cuda.get_device_properties(g).total_memory * 0.9) for g in group}
    return {"device_map": device_map or "auto", "max_memory": memory}


def build_configs(args, n_layers: int):
    """The sweep's configurations from the command line's ``--fig2``/``--topk``/``--baseline-only``."""
    from vlmnb.experiments import sweep

    configs = [sweep.Config("baseline")]
    if args.fig2:
        window = tuple(args.window) if args.window else None
        configs += sweep.knockout_configs(n_layers, stride=args.stride, window=window)[1:]
    if args.topk:
        configs += sweep.topk_configs(args.topk)[1:]
    if len(configs) == 1 and not args.baseline_only:
        raise SystemExit("choose configurations: --fig2 (with --stride/--window), --topk K ..., or --baseline-only")
    return configs


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    p = argparse.ArgumentParser(prog="python -m vlmnb.cli.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (shards/ and merged/ go inside)")
    p.add_argument("--model", default="toy", help="toy, a model folder or a hub id (default: toy)")
    p.add_argument("--images", default="toy", help="toy, coco, mme or a folder of images (default: toy)")
    p.add_argument("--n-images", type=int, default=None, help="the first N images (default: all)")
    p.add_argument("--prompt", default="describe the image")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--fig2", action="store_true", help="the three knockouts in all layers (+ --stride, --window)")
    p.add_argument("--stride", type=int, default=None, help="also 'from layer l' for every stride-th layer")
    p.add_argument("--window", type=int, nargs=2, metavar=("A", "B"), help="also 'outside layers A-B'")
    p.add_argument("--topk", type=float, nargs="+", help="top-k configurations (fractions, e.g. 0.05 0.1)")
    p.add_argument("--baseline-only", action="store_true")
    p.add_argument("--no-batch", action="store_true", help="one generate per configuration (slow; for checks)")
    p.add_argument("--max-batch-rows", type=int, default=32)
    p.add_argument("--gpus-per-process", type=int, default=1)
    p.add_argument("--device-map", default=None, help="passed to vlmnb.load (default: this process's GPU(s))")
    p.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's on GPU, float32 on CPU)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where GPUs exist")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--merge-only", action="store_true", help="only merge the shards under --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    """Run (or with ``--merge-only`` merge) a sweep; returns the exit status."""
    args = parser().parse_args(argv)
    out = Path(args.out)
    if args.merge_only:
        merged = merge_shards(out)
        print(f"merged {len(shard_dirs(out))} shard(s): {merged}")
        return 0

    import torch
    from accelerate import PartialState

    import vlmnb
    from vlmnb import data
    from vlmnb.experiments import sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    # without cpu=True accelerate leaves CPU-only processes launched by torchrun unconnected
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.cpu else None)
    device_map = "cpu" if args.cpu else args.device_map
    vlm = vlmnb.load(args.model, dtype=dtype,
                     **device_kwargs(state.local_process_index, args.gpus_per_process, device_map))
    configs = build_configs(args, vlm.num_layers)
    samples = data.images(args.images, n=args.n_images)
    params = {"model": args.model, "revision": vlm.revision, "images": args.images, "n_images": args.n_images, "prompt": args.prompt,
              "max_new_tokens": args.max_new_tokens, "configs": [c.name for c in configs],
              "rank": rank, "world_size": world}
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
