"""Train the toy LLaVA on generated scenes: ``python -m vlmnb.toy.train --out DIR --recipe shipped``
(every stage of the shipped model) or one stage: ``python -m vlmnb.toy.train --out DIR --steps N [--resume]``.

Every training sequence is one image followed by several chat turns, written exactly as the
processor's chat template writes them: a first turn (usually "describe the image", sometimes a
question) and a few packed follow-up questions (position look-ups and yes/no questions). The
loss covers answer tokens only. The batch at step ``s`` depends only on (seed, s), the learning
rate only on the step, and checkpoints hold the model, the AdamW state and the RNG state in
safetensors + JSON, so a run resumed from a checkpoint is bit-identical to an uninterrupted one
on the same machine with the same thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlmnb.core.usage import (ArgumentParser, UsageError, add_version, at_least, between, check_device,
                              check_input_folder, check_output_folder, run_main)
from vlmnb.toy.batches import (TASKS, SequenceBuilder, TrainConfig, binding_questions, crowded_scene, lr_at,
                               make_batch, sample_turns)

__all__ = ["TASKS", "TrainConfig", "SequenceBuilder", "binding_questions", "sample_turns", "crowded_scene", "lr_at",
           "make_batch", "token_losses", "sink_loss", "patch_labels", "pretrain_vision", "train", "save_pretrained",
           "train_recipe", "parse_aspect_weights", "parser", "validate", "main"]
from vlmnb.toy.model import (PATCH_SIZE, ToyArchitecture, build_model, build_processor,
                             pixel_values)
from vlmnb.toy.scenes import (ASPECTS, COLORS, GRID, IMAGE_SIZE, SHAPES, SIZES, make_scene)
from vlmnb.toy.curves import training_curves
from vlmnb.toy.curves import stage_curves
from vlmnb.core.progress import progress_bar as tqdm

def token_losses(model, batch, output_attentions: bool = False):
    """Per-token cross-entropy on the next token, with the shifted labels and task ids
    (and the attention weights when asked: the model must then run eager attention)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], output_attentions=output_attentions)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    tasks = batch["tasks"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none")
    if output_attentions:
        return losses.view(labels.shape), labels, tasks, out.attentions
    return losses.view(labels.shape), labels, tasks


def sink_loss(attentions, sinks, layers, head: int) -> torch.Tensor:
    """Mean over supervised (sequence, question, layer) of -log(attention mass on the target keys)."""
    terms = []
    for layer in layers:
        att = attentions[layer]
        for b, q, keys in sinks:
            terms.append(-torch.log(att[b, head, q, keys].sum() + 1e-6))
    return torch.stack(terms).mean()


def patch_labels(scene, min_pixels: int = 12) -> np.ndarray:
    """Per-patch targets of the vision pre-training, shape (patches, 4): shape, colour and size
    index + 1 of the object owning most of the patch's pixels (0: background or a sliver of less
    than ``min_pixels`` pixels), and the index of the grid cell the patch lies in."""
    grid = IMAGE_SIZE // PATCH_SIZE
    labels = np.zeros((grid * grid, 4), dtype=np.int64)
    per_cell = grid // GRID
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    labels[:, 3] = (rows // per_cell) * GRID + cols // per_cell
    if not scene.objects:
        return labels
    counts = scene.masks.reshape(len(scene.objects), grid, PATCH_SIZE, grid, PATCH_SIZE).sum(axis=(2, 4))
    counts = counts.reshape(len(scene.objects), -1)
    owner, top = counts.argmax(axis=0), counts.max(axis=0)
    for k in np.flatnonzero(top >= min_pixels):
        o = scene.objects[owner[k]]
        labels[k, :3] = (SHAPES.index(o.shape) + 1, list(COLORS).index(o.color) + 1, SIZES.index(o.size) + 1)
    return labels


# shape, colour, size (each with a background class) and the patch's own grid cell: the cell
# head keeps absolute position in the tower's output, which look-ups by position words need
# (the decoder's rotary positions are relative)
VISION_HEADS = (len(SHAPES) + 1, len(COLORS) + 1, len(SIZES) + 1, GRID * GRID)


def pretrain_vision(model, cfg: TrainConfig, progress: bool = True, log=None, device: str = "cpu") -> float:
    """Stage 0: train the vision tower alone to label every patch (shape, colour, size of the object
    covering it, and the patch's grid cell) through a throw-away linear head; returns the last
    step's loss.

    Like the CLIP encoder of a hub LLaVA, the tower then arrives at the chat stage already seeing
    shapes; batches are a pure function of (seed, step), on scenes the chat stage never draws.
    """
    tower = model.model.vision_tower
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(tower.config.hidden_size, sum(VISION_HEADS)).to(device)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay,
                                  foreach=False)
    tower.train()
    loss_value = float("nan")
    bar = tqdm(range(cfg.vision_steps), disable=not progress, desc="vision")
    for step in bar:
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        decay = 1 - 0.9 * max(0.0, step - 0.75 * cfg.vision_steps) / (0.25 * cfg.vision_steps)
        for g in optimizer.param_groups:
            g["lr"] = cfg.vision_lr * warm * decay
        # scene indices far above anything the chat stage uses (it draws step * batch + b)
        scenes = [make_scene(10_000_000 + step * cfg.vision_batch_size + b, split="train", seed=cfg.seed)
                  for b in range(cfg.vision_batch_size)]
        target = torch.from_numpy(np.stack([patch_labels(s) for s in scenes])).to(device)
        feats = tower(pixel_values([s.image for s in scenes]).to(device)).last_hidden_state[:, 1:]
        logits = head(feats).split(VISION_HEADS, dim=-1)
        loss = sum(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), target[..., i].reshape(-1))
                   for i, lg in enumerate(logits)) / len(VISION_HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if log is not None:
            log.write(json.dumps({"vision_step": step + 1, "loss_vision": round(loss_value, 5)}) + "\n")
        bar.set_postfix(loss=f"{loss_value:.3f}")
    return loss_value


def _save_checkpoint(out: Path, step: int, model, optimizer, cfg: TrainConfig, log_tail: dict) -> None:
    tmp = out / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    names = {id(p): n for n, p in model.named_parameters()}
    opt_tensors, opt_steps = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            n = names[id(p)]
            opt_tensors[f"{n}.exp_avg"] = st["exp_avg"].cpu().contiguous()
            opt_tensors[f"{n}.exp_avg_sq"] = st["exp_avg_sq"].cpu().contiguous()
            opt_steps[n] = float(st["step"])
    opt_tensors["__torch_rng_state__"] = torch.get_rng_state()
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps(
        {"step": step, "config": asdict(cfg), "adam_steps": opt_steps, "last": log_tail}, indent=1))
    final = out / "checkpoint"
    if final.exists():
        old = out / "checkpoint.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def _load_checkpoint(out: Path, model, optimizer, device: str = "cpu") -> int:
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    restore_adam(optimizer, dict(model.named_parameters()), ckpt, state, device)
    return int(state["step"])


def restore_adam(optimizer, params: dict, ckpt: Path, state: dict, device: str = "cpu") -> None:
    """Put the AdamW moments and step counts of checkpoint folder ``ckpt`` (``optimizer.safetensors``
    and ``state["adam_steps"]``) back on ``params`` ({name: parameter}), and torch's RNG state."""
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    rng_state = tensors.pop("__torch_rng_state__")
    tensors = {k: v.to(device) for k, v in tensors.items()}
    for n, p in params.items():
        if f"{n}.exp_avg" in tensors:
            optimizer.state[p] = {"step": torch.tensor(state["adam_steps"][n]),
                                  "exp_avg": tensors[f"{n}.exp_avg"], "exp_avg_sq": tensors[f"{n}.exp_avg_sq"]}
    torch.set_rng_state(rng_state)


def train(out: str | Path, cfg: TrainConfig = TrainConfig(), resume: bool = False,
          progress: bool = True, save_every_model: bool = True, device: str = "cpu"):
    """Train (or resume) a toy model into ``out``; returns the model. ``out/model`` holds the
    latest model + processor as a ``save_pretrained`` folder, ``out/log.jsonl`` one line per step.

    ``device`` other than the CPU (e.g. ``"cuda"``) trains faster but is not bit-identical to a
    CPU run; the shipped checkpoint was trained on the CPU."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    processor = build_processor()
    arch = ToyArchitecture(**(cfg.arch or {}))
    cfg.arch = asdict(arch)
    model = build_model(arch, seed=cfg.seed)
    if cfg.init_from:
        from transformers import LlavaForConditionalGeneration
        model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(cfg.init_from).state_dict())
    if cfg.sink_layers:
        model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})
    model.to(device)
    model.train()
    groups = {}
    for n, p in model.named_parameters():
        vision = "vision_tower" in n or "multi_modal_projector" in n
        decayed = p.ndim >= 2 and "embed" not in n
        groups.setdefault((vision, decayed), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "weight_decay": cfg.weight_decay if decayed else 0.0,
          "lr_scale": cfg.vision_lr_scale if vision else 1.0} for (vision, decayed), ps in sorted(groups.items())],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, foreach=False)
    start = 0
    if resume and (out / "checkpoint" / "state.json").exists():
        start = _load_checkpoint(out, model, optimizer, device)
        if (out / "log.jsonl").exists():  # drop log lines of steps after the checkpoint (they are redone)
            kept = [line for line in (out / "log.jsonl").read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start]
            (out / "log.jsonl").write_text("".join(line + "\n" for line in kept))
    elif (out / "log.jsonl").exists():
        (out / "log.jsonl").unlink()
    if start == 0 and not cfg.init_from and cfg.vision_steps > 0:
        with open(out / "vision_log.jsonl", "w") as vlog:
            pretrain_vision(model, cfg, progress=progress, log=vlog, device=device)
        model.train()
    builder = SequenceBuilder(processor)
    log = open(out / "log.jsonl", "a")
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train")
    entry: dict = {}
    for step in bar:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        batch = make_batch(step, cfg, builder)
        if device != "cpu":
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if cfg.sink_layers:
            losses, labels, tasks, attentions = token_losses(model, batch, output_attentions=True)
        else:
            losses, labels, tasks = token_losses(model, batch)
        mask = labels != -100
        loss = losses[mask].mean()
        supervised = None
        if cfg.sink_layers and batch["sinks"]:
            supervised = sink_loss(attentions, batch["sinks"], cfg.sink_layers, cfg.sink_head)
            loss = loss + cfg.sink_weight * supervised
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            entry = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr, "grad_norm": round(gnorm.item(), 4),
                     "elapsed_s": round(time.time() - t0, 2)}
            if supervised is not None:
                entry["loss_sink"] = round(supervised.item(), 5)
            for ti, name in enumerate(TASKS):
                sel = tasks == ti
                if sel.any():
                    entry[f"loss_{name}"] = round(losses[sel].mean().item(), 5)
                # loss on the first answer token of yes/no questions alone (ln 2 = chance)
            first = mask & torch.cat([torch.ones_like(mask[:, :1]), ~mask[:, :-1]], dim=1)
            for ti, name in enumerate(TASKS[2:], start=2):
                sel = first & (tasks == ti)
                if sel.any():
                    entry[f"first_{name}"] = round(losses[sel].mean().item(), 5)
        log.write(json.dumps(entry) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{lr:.1e}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(out, step + 1, model, optimizer, cfg, entry)
            if save_every_model:
                save_pretrained(model, processor, out / "model")
                log.flush()  # the curves ship next to the weights
                training_curves(out / "log.jsonl").to_csv(out / "model" / "training_curves.csv", index=False)
    log.close()
    return model


def save_pretrained(model, processor, path: str | Path) -> None:
    """Write model + processor into one standard ``save_pretrained`` folder (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


# The recipe of the shipped `toy` checkpoint: each stage fine-tunes the model of the stage before
# (the first one starts with the vision pre-training, stage 0). Values not named are TrainConfig's
# defaults. The model card (vlmnb/toy/checkpoint/README.md) gives each stage's reason and numbers.
RECIPES: dict[str, list[dict]] = {
    "shipped": [
        {"name": "base", "steps": 3000, "followups": 3, "lookup_share": 0.6, "description_first": 0.6},
        {"name": "ft1", "steps": 900, "lr": 7e-4, "warmup_steps": 30, "description_first": 0.4, "followups": 4,
         "lookup_share": 0.5},
        {"name": "ft2", "steps": 700, "lr": 3e-4, "warmup_steps": 20, "description_first": 0.3, "followups": 4,
         "lookup_share": 0.6},
        {"name": "ft3", "steps": 1200, "lr": 1e-3, "warmup_steps": 50, "description_first": 0.3, "followups": 6,
         "lookup_share": 0.5, "binding_share": 0.5, "crowded_share": 0.5, "rowmate_weight": 4.0,
         "aspect_weights": {"existence": 2.0, "color": 2.0, "position": 0.5, "count": 0.5}},
    ],
}


def train_recipe(out: str | Path, stages: list[dict] | str = "shipped", progress: bool = True,
                 device: str = "cpu", **overrides) -> Path:
    """Run every stage of a recipe in turn, each in ``out/<stage name>`` and each fine-tuning the
    model the stage before it saved; returns the last stage's ``model/`` folder.

    Resumable like :func:`train`: a stage whose checkpoint reached its last step is skipped, an
    unfinished one continues from its checkpoint. ``overrides`` (e.g. ``threads=2``) apply to every
    stage; ``stages`` is a name in :data:`RECIPES` or a list of stage dicts (``name`` + TrainConfig
    fields).
    """
    if isinstance(stages, str):
        if stages not in RECIPES:
            raise ValueError(f"unknown recipe {stages!r}; available: {sorted(RECIPES)}")
        stages = RECIPES[stages]
    names = [st["name"] for st in stages]
    if not stages or len(set(names)) != len(names):
        raise ValueError(f"a recipe needs at least one stage and distinct stage names, got {names}")
    out = Path(out)
    previous: Path | None = None
    for i, stage in enumerate(stages):
        fields = {k: v for k, v in stage.items() if k != "name"}
        cfg = TrainConfig(**{**fields, **overrides})
        if previous is not None:
            cfg.init_from = str(previous)
        folder = out / stage["name"]
        state = folder / "checkpoint" / "state.json"
        done = state.exists() and json.loads(state.read_text())["step"] >= cfg.steps and (folder / "model").exists()
        if progress:
            print(f"[recipe] stage {i + 1}/{len(stages)} {stage['name']}: "
                  + ("done already, skipped" if done else f"{cfg.steps} steps into {folder}"), flush=True)
        if not done:
            train(folder, cfg, resume=state.exists(), progress=progress, device=device)
        previous = folder / "model"
    # the last model carries the curves of every stage, one after the other
    stage_curves([out / st["name"] / "log.jsonl" for st in stages]).to_csv(previous / "training_curves.csv",
                                                                         index=False)
    return previous


def parse_aspect_weights(text: str) -> dict[str, float]:
    """Parse ``existence=2,color=2`` into ``{"existence": 2.0, "color": 2.0}`` (yes/no aspects only)."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in ASPECTS[1:] or not value:
            raise argparse.ArgumentTypeError(
                f"bad aspect weight {part!r}: expected NAME=WEIGHT with NAME one of {', '.join(ASPECTS[1:])}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad aspect weight {part!r}: {value!r} is not a number") from None
        if weights[name] < 0:
            raise argparse.ArgumentTypeError(f"bad aspect weight {part!r}: weights must be >= 0")
    if weights and not any(weights.get(a, 1.0) > 0 for a in ASPECTS[1:]):
        raise argparse.ArgumentTypeError("aspect weights are all zero")
    return weights


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    parser = ArgumentParser(prog="python -m vlmnb.toy.train",
                            description="Train the toy LLaVA on generated shape scenes.")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl, model/)")
    parser.add_argument("--steps", type=at_least(1), default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=at_least(1), default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=between(0, 1, low_open=True), default=TrainConfig.lr)
    parser.add_argument("--warmup", type=at_least(0), default=TrainConfig.warmup_steps)
    parser.add_argument("--seed", type=at_least(0), default=TrainConfig.seed)
    parser.add_argument("--threads", type=at_least(1), default=TrainConfig.threads)
    parser.add_argument("--followups", type=at_least(0), default=TrainConfig.followups)
    parser.add_argument("--description-first", type=between(0, 1), default=TrainConfig.description_first)
    parser.add_argument("--checkpoint-every", type=at_least(1), default=TrainConfig.checkpoint_every)
    parser.add_argument("--text-layers", type=at_least(1), default=ToyArchitecture.text_layers)
    parser.add_argument("--vision-lr-scale", type=at_least(0.0, float), default=TrainConfig.vision_lr_scale)
    parser.add_argument("--lookup-share", type=between(0, 1), default=TrainConfig.lookup_share)
    parser.add_argument("--init-from", default=None, help="fine-tune from a save_pretrained folder")
    parser.add_argument("--sink-layers", type=at_least(0), nargs="*", default=None,
                        help="decoder layers whose head --sink-head gets attention supervision (off by default)")
    parser.add_argument("--sink-head", type=at_least(0), default=0)
    parser.add_argument("--sink-weight", type=at_least(0.0, float), default=1.0)
    parser.add_argument("--vision-steps", type=at_least(0), default=TrainConfig.vision_steps,
                        help="steps of the per-patch vision pre-training before the chat stage (0: none)")
    parser.add_argument("--binding-share", type=between(0, 1), default=TrainConfig.binding_share,
                        help="share of follow-ups that ask about every object's cell (look-ups, colour)")
    parser.add_argument("--rowmate-weight", type=at_least(0.0, float), default=TrainConfig.rowmate_weight,
                        help="weight of binding questions about objects that share their row with another object")
    parser.add_argument("--crowded-share", type=between(0, 1), default=TrainConfig.crowded_share,
                        help="share of sequences whose scene has two or more objects in one row")
    parser.add_argument("--aspect-weights", default=None, type=parse_aspect_weights,
                        help="relative sampling weights of the yes/no aspects, e.g. existence=2,color=2,count=0.5 "
                             "(unnamed aspects weigh 1; default: all yes/no questions equally likely)")
    parser.add_argument("--device", default="cpu",
                        help="torch device to train on (default cpu; a GPU run is faster but not bit-identical)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint if present")
    parser.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                        help="run every stage of a named recipe into DIR/<stage> (resumable; the other "
                             "hyper-parameter flags are then ignored but --threads and --device)")
    add_version(parser)
    return parser


def validate(args) -> None:
    """Check the arguments before anything is written (raises :class:`~vlmnb.core.usage.UsageError`)."""
    out = check_output_folder(args.out)
    check_device(args.device)
    if args.init_from:
        check_input_folder(args.init_from, "--init-from", must_hold="config.json")
    if args.sink_layers and not args.init_from and max(args.sink_layers) >= args.text_layers:
        raise UsageError(f"--sink-layers {max(args.sink_layers)}: the model has {args.text_layers} text layers "
                         f"(0 to {args.text_layers - 1})")
    if not args.recipe and not args.resume and (out / "checkpoint" / "state.json").exists():
        raise UsageError(f"--out {out} holds a training run; add --resume to continue it, or choose another --out")


def main(argv=None) -> int:
    """``python -m vlmnb.toy.train ...``; returns the exit status (2, one line: bad input)."""
    return run_main(_main, argv)


def _main(argv=None) -> int:
    args = parser().parse_args(argv)
    validate(args)
    if args.recipe:
        final = train_recipe(args.out, args.recipe, device=args.device, threads=args.threads)
        print(f"[recipe] done: {final} (copy it to vlmnb/toy/checkpoint to ship it)")
        return 0
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                      seed=args.seed, threads=args.threads, followups=args.followups,
                      description_first=args.description_first, checkpoint_every=args.checkpoint_every,
                      arch={"text_layers": args.text_layers}, lookup_share=args.lookup_share, vision_lr_scale=args.vision_lr_scale,
                      init_from=args.init_from, sink_layers=args.sink_layers, sink_head=args.sink_head,
                      sink_weight=args.sink_weight, vision_steps=args.vision_steps,
                      aspect_weights=args.aspect_weights, binding_share=args.binding_share,
                      rowmate_weight=args.rowmate_weight, crowded_share=args.crowded_share)
    if args.init_from:
        import transformers
        base = transformers.AutoConfig.from_pretrained(args.init_from).text_config
        cfg.arch = {"text_layers": base.num_hidden_layers}
    if args.resume and (Path(args.out) / "checkpoint" / "state.json").exists():
        saved = json.loads((Path(args.out) / "checkpoint" / "state.json").read_text())["config"]
        saved["steps"] = args.steps  # the only thing a resume may change is where to stop
        saved["sink_aspects"] = tuple(saved.get("sink_aspects", TrainConfig.sink_aspects))
        cfg = TrainConfig(**saved)
    train(args.out, cfg, resume=args.resume, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
