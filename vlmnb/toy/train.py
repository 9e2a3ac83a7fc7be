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
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vlmnb.toy.model import (DEFAULT_PROMPT, NUM_IMAGE_TOKENS, PATCH_SIZE, ToyArchitecture, build_model, build_processor,
                             pixel_values)
from vlmnb.toy.scenes import (ASPECTS, COLORS, GRID, IMAGE_SIZE, SHAPES, SIZES, crowded_cells, make_scene,
                              object_names)

TASKS = ("description",) + ASPECTS  # task ids used in the per-task loss log


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all of them go into the run's ``state.json``)."""

    steps: int = 4500
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    decay_fraction: float = 0.25
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1                  # 1 thread: with other jobs on the 2 cores, 2 threads ran 5-10x slower
    description_first: float = 0.75   # share of sequences whose first turn is "describe the image"
    followups: int = 2                # packed question turns after the first turn
    lookup_share: float = 0.4         # share of follow-ups that are position look-ups (rest yes/no)
    # relative sampling weights of the yes/no aspects (e.g. {"existence": 2, "count": 0.5});
    # None: every yes/no question of the scene equally likely (the recipe of the first stages)
    aspect_weights: dict[str, float] | None = None
    # share of follow-ups drawn from `binding_questions` (questions that need a cell bound to the
    # object in it: look-ups of occupied cells, colour questions); 0 keeps the earlier recipes
    binding_share: float = 0.0
    # relative weight, among the binding questions, of those about an object that shares its grid
    # row with another object (before stage ft3 the look-ups failed on 41% of these, on none of the rest)
    rowmate_weight: float = 1.0
    # share of training sequences whose scene has two or more objects in one grid row
    # (0: scenes as the generator makes them, about half of them crowded)
    crowded_share: float = 0.0
    checkpoint_every: int = 100
    vision_lr_scale: float = 0.1      # learning-rate factor for the vision tower and the projector
    arch: dict | None = None
    # optional attention ("sink") supervision, off for the shipped `toy` model: head `sink_head` of
    # each layer in `sink_layers`, at the answer position of existence questions, is pulled towards
    # the asked object's patches (or towards the start token when no such object exists)
    sink_layers: list[int] | None = None
    sink_head: int = 0
    sink_weight: float = 1.0
    sink_aspects: tuple[str, ...] = ("existence",)
    init_from: str | None = None      # fine-tune from this save_pretrained folder instead of a fresh model
    # stage 0: the vision tower alone learns to label every patch with the shape, colour and size
    # of the object covering it (as hub VLMs start from a pretrained CLIP); 0 turns it off
    vision_steps: int = 1500
    vision_batch_size: int = 32
    vision_lr: float = 2e-3


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warm-up, constant, then linear decay to ``min_lr_ratio * lr`` over the last ``decay_fraction``
    of the steps ("warm-up / stable / decay"); a function of the step only.

    Because the stable phase does not depend on the total, a run resumed with a smaller ``--steps``
    before the decay began is identical to an uninterrupted run with that ``--steps``.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.steps - int(cfg.decay_fraction * cfg.steps)
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start + 1) / max(1, cfg.steps - decay_start)
    return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * progress)


class SequenceBuilder:
    """Turns a scene and a list of (prompt, answer, task) turns into token ids and loss labels."""

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        first = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{Q}"}]}],
            add_generation_prompt=True)
        self._first_prefix, self._first_suffix = first.split("{Q}")
        self.eos = self.tok.eos_token_id

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode(self, turns: list[tuple[str, str, str]], scene=None, sink_aspects: tuple[str, ...] = ()):
        """(input_ids, labels, task ids per label, sink targets) for one image followed by ``turns``.

        Sink targets (only for turns whose task is in ``sink_aspects``; needs ``scene``) are
        ``(query position, key positions)``: the position that predicts the answer's first token and
        the image-token positions of the asked object's patches, or ``[0]`` (the start token) when the
        scene has no such object.
        """
        sinks = []
        image_text = self.processor.image_token * NUM_IMAGE_TOKENS
        ids = [self.tok.bos_token_id]
        labels = [-100]
        tasks = [-1]
        for i, (prompt, answer, task) in enumerate(turns):
            if i == 0:
                prefix = self._first_prefix.replace("<image>", image_text) + prompt + self._first_suffix
            else:
                prefix = f"USER: {prompt} ASSISTANT:"
            p = self._ids(prefix)
            a = self._ids(" " + answer) + [self.eos]
            if task in sink_aspects:
                sinks.append((len(ids) + len(p) - 1, self._sink_keys(ids + p, prompt, scene)))
            ids += p + a
            labels += [-100] * len(p) + a
            tasks += [-1] * len(p) + [TASKS.index(task)] * len(a)
        return ids, labels, tasks, sinks

    def _sink_keys(self, ids: list[int], prompt: str, scene) -> list[int]:
        names = object_names(prompt)
        masks = [m for o, m in zip(scene.objects, scene.masks) if names and o.name == names[0]]
        if not masks:
            return [0]
        first_image = ids.index(self.processor.image_token_id)
        grid = IMAGE_SIZE // PATCH_SIZE
        union = np.any(masks, axis=0).reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).sum(axis=(1, 3))
        return [first_image + int(k) for k in np.flatnonzero(union.reshape(-1) >= 8)]


def _binding_questions_by_cell(scene) -> list[tuple[str, tuple[str, str, str]]]:
    """(asked cell, turn) for every binding question of ``scene`` (see :func:`binding_questions`)."""
    out = []
    colors = {o.color for o in scene.objects}
    for o in scene.objects:
        out.append((o.cell, (f"what is at the {o.cell}?", f"a {o.size} {o.color} {o.shape}.", "position_lookup")))
        out.append((o.cell, (f"is the object at the {o.cell} {o.color}?", "yes.", "color")))
        others = sorted(c for c in colors if c != o.color) or [c for c in COLORS if c != o.color]
        for c in others:
            out.append((o.cell, (f"is the object at the {o.cell} {c}?", "no.", "color")))
    return out


def binding_questions(scene) -> list[tuple[str, str, str]]:
    """Training-only questions that can be answered only by binding a cell to the object in it:
    the look-up of every occupied cell, and for every object a colour question with its own colour
    and one with each other colour present in the scene (or any other colour in a one-colour scene).

    The scene's own question pairs ask about one random object each; the shipped model's errors
    were almost all an object of another cell of the same row, so these put every object of a
    crowded row in the training signal.
    """
    return [turn for _, turn in _binding_questions_by_cell(scene)]


def sample_turns(scene, rng: np.random.Generator, cfg: TrainConfig) -> list[tuple[str, str, str]]:
    """The chat turns of one training sequence."""
    lookups = [q for q in scene.questions if q.aspect == "position_lookup"]
    yesno = [q for q in scene.questions if q.aspect != "position_lookup"]
    turns = []
    if rng.random() < cfg.description_first:
        turns.append((DEFAULT_PROMPT, scene.description, "description"))
    weights = None
    if cfg.aspect_weights:
        weights = np.array([cfg.aspect_weights.get(q.aspect, 1.0) for q in yesno], dtype=float)
        weights /= weights.sum()
    by_cell = _binding_questions_by_cell(scene) if cfg.binding_share > 0 else []
    binding = [turn for _, turn in by_cell]
    if binding:  # as many "yes." as "no." colour answers, look-ups as often as both
        kinds = [(t[2], t[1] if t[2] == "color" else "") for t in binding]
        binding_p = np.array([1.0 / kinds.count(k) for k in kinds])
        crowded = crowded_cells(scene.objects)
        binding_p *= [cfg.rowmate_weight if cell in crowded else 1.0 for cell, _ in by_cell]
        binding_p /= binding_p.sum()
    for _ in range(cfg.followups + (0 if turns else 1)):
        if binding and rng.random() < cfg.binding_share:
            turns.append(binding[rng.choice(len(binding), p=binding_p)])
            continue
        if rng.random() < cfg.lookup_share:
            q = lookups[rng.integers(len(lookups))]
        elif weights is None:
            q = yesno[rng.integers(len(yesno))]
        else:
            q = yesno[rng.choice(len(yesno), p=weights)]
        turns.append((q.text, q.answer, q.aspect))
    return turns


def crowded_scene(index: int, seed: int = 0):
    """A training scene with a crowded row: the first such scene among a block of candidates that
    the ordinary stream never draws (a pure function of ``index`` and ``seed``)."""
    for k in range(64):
        scene = make_scene(30_000_000 + 64 * index + k, split="train", seed=seed)
        if crowded_cells(scene.objects):
            return scene
    raise RuntimeError(f"no crowded scene among 64 candidates for index {index}")  # p ~ 0.5**64


def make_batch(step: int, cfg: TrainConfig, builder: SequenceBuilder) -> dict:
    """The batch of training step ``step`` (a pure function of seed and step)."""
    rng = np.random.default_rng([cfg.seed, step])
    images, seqs = [], []
    for b in range(cfg.batch_size):
        index = step * cfg.batch_size + b
        if cfg.crowded_share > 0 and rng.random() < cfg.crowded_share:
            scene = crowded_scene(index, cfg.seed)
        else:
            scene = make_scene(index, split="train", seed=cfg.seed)
        images.append(scene.image)
        seqs.append(builder.encode(sample_turns(scene, rng, cfg), scene,
                                   cfg.sink_aspects if cfg.sink_layers else ()))
    width = max(len(s[0]) for s in seqs)
    pad = builder.tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    tasks = torch.full((len(seqs), width), -1, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    sinks = []
    for i, (ids, lab, tsk, snk) in enumerate(seqs):
        sinks += [(i, q, keys) for q, keys in snk]
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(ids)] = torch.tensor(lab)
        tasks[i, :len(ids)] = torch.tensor(tsk)
        attention[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixel_values(images),
            "labels": labels, "tasks": tasks, "sinks": sinks}


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
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    rng_state = tensors.pop("__torch_rng_state__")
    tensors = {k: v.to(device) for k, v in tensors.items()}
    for n, p in model.named_parameters():
        if f"{n}.exp_avg" in tensors:
            optimizer.state[p] = {"step": torch.tensor(state["adam_steps"][n]),
                                  "exp_avg": tensors[f"{n}.exp_avg"], "exp_avg_sq": tensors[f"{n}.exp_avg_sq"]}
    torch.set_rng_state(rng_state)
    return int(state["step"])


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
                from vlmnb.toy.curves import training_curves

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
    from vlmnb.toy.curves import stage_curves

    stage_curves([out / st["name"] / "log.jsonl" for st in stages]).to_csv(previous / "training_curves.csv",
                                                                         index=False)
    return previous


def _aspect_weights(text: str) -> dict[str, float]:
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the toy LLaVA on generated shape scenes.")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl, model/)")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--followups", type=int, default=TrainConfig.followups)
    parser.add_argument("--description-first", type=float, default=TrainConfig.description_first)
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    parser.add_argument("--text-layers", type=int, default=ToyArchitecture.text_layers)
    parser.add_argument("--vision-lr-scale", type=float, default=TrainConfig.vision_lr_scale)
    parser.add_argument("--lookup-share", type=float, default=TrainConfig.lookup_share)
    parser.add_argument("--init-from", default=None, help="fine-tune from a save_pretrained folder")
    parser.add_argument("--sink-layers", type=int, nargs="*", default=None,
                        help="decoder layers whose head --sink-head gets attention supervision (off by default)")
    parser.add_argument("--sink-head", type=int, default=0)
    parser.add_argument("--sink-weight", type=float, default=1.0)
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_steps,
                        help="steps of the per-patch vision pre-training before the chat stage (0: none)")
    parser.add_argument("--binding-share", type=float, default=TrainConfig.binding_share,
                        help="share of follow-ups that ask about every object's cell (look-ups, colour)")
    parser.add_argument("--rowmate-weight", type=float, default=TrainConfig.rowmate_weight,
                        help="weight of binding questions about objects that share their row with another object")
    parser.add_argument("--crowded-share", type=float, default=TrainConfig.crowded_share,
                        help="share of sequences whose scene has two or more objects in one row")
    parser.add_argument("--aspect-weights", default=None, type=_aspect_weights,
                        help="relative sampling weights of the yes/no aspects, e.g. existence=2,color=2,count=0.5 "
                             "(unnamed aspects weigh 1; default: all yes/no questions equally likely)")
    parser.add_argument("--device", default="cpu",
                        help="torch device to train on (default cpu; a GPU run is faster but not bit-identical)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint if present")
    parser.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                        help="run every stage of a named recipe into DIR/<stage> (resumable; the other "
                             "hyper-parameter flags are then ignored but --threads and --device)")
    args = parser.parse_args(argv)
    if args.recipe:
        final = train_recipe(args.out, args.recipe, device=args.device, threads=args.threads)
        print(f"[recipe] done: {final} (copy it to vlmnb/toy/checkpoint to ship it)")
        return
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


if __name__ == "__main__":
    main()
