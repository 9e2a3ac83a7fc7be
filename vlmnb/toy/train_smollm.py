"""Train toy-smollm (the toy's CLIP tower + SmolLM2-135M-Instruct): ``python -m vlmnb.toy.train_smollm --out DIR``.

One resumable, seeded command. Every training sequence is one scene's image followed by several
chat turns written with SmolLM2's own chat template (system prompt included; the image
placeholder opens the first user turn): usually "describe the image" first, then packed
follow-up questions (position look-ups and yes/no questions) drawn by the toy's own sampler
(:func:`vlmnb.toy.train.sample_turns`). The loss covers answer tokens (and the ``<|im_end|>``
that closes each answer) only, and the language-model head runs on those positions only.

What trains: the projector always; the vision tower at ``--vision-lr-scale`` x the lr (0: frozen);
the decoder layers listed in ``--unfreeze`` and/or LoRA tensors (``--lora-rank``, every linear of
every decoder layer; folded into plain weights at load) at ``--lm-lr-scale`` x the lr; everything
else of SmolLM2 stays frozen. The batch of step ``s`` depends only on (seed, s), the learning rate only on
``s``, and checkpoints (every ``--checkpoint-every`` steps: trained tensors, AdamW state, step,
RNG state) make a resumed run bit-identical to an uninterrupted one on the same machine with the
same thread count. ``DIR/model`` holds the latest small trained weights (load them with
:func:`vlmnb.toy.smollm.load_toy_smollm`), ``DIR/log.csv`` the training curve, ``DIR/probe.csv``
quick held-out checks every ``--probe-every`` steps (scenes 100000+ of the test split, never the reported ones).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlmnb.toy.model import DEFAULT_PROMPT, NUM_IMAGE_TOKENS, pixel_values
from vlmnb.toy.scenes import make_scenes
from vlmnb.toy.batches import TASKS, lr_at, sample_turns, training_scene
from vlmnb.toy.evaluate import generate_answers
from vlmnb.toy.metrics import description_quality
from vlmnb.toy.train import restore_adam
from vlmnb.toy.smollm import (RECIPE_FILE, WEIGHTS_FILE, add_lora, apply_trained, assemble,
                              load_language_model, save_trained)
from vlmnb.core.progress import progress_bar as tqdm

LOG_COLUMNS = (["step", "loss", "lr", "grad_norm", "tokens", "supervised", "elapsed_s"]
               + [f"loss_{t}" for t in TASKS] + [f"first_{t}" for t in TASKS[2:]])
PROBE_START = 100_000


@dataclass
class SmolTrainConfig:
    """Hyper-parameters of a toy-smollm run (all of them go into the checkpoint's ``state.json``)."""

    steps: int = 250
    batch_size: int = 8
    lr: float = 2e-3                  # the projector's; the other groups scale it
    min_lr_ratio: float = 0.05
    decay_fraction: float = 0.3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1
    bf16: bool = True                 # bfloat16 autocast of the forward/backward (weights and AdamW stay fp32)
    # sequences (the names are those vlmnb.toy.train.sample_turns reads)
    description_first: float = 0.7
    followups: int = 4
    lookup_share: float = 0.4
    aspect_weights: dict | None = None
    binding_share: float = 0.0
    rowmate_weight: float = 1.0
    crowded_share: float = 0.0
    # a sequence that opens with "describe the image" ends there: follow-up questions after a
    # description can be answered from its text, which teaches the language model to read its own
    # words instead of the image
    description_alone: bool = False
    # what trains
    unfreeze: list[int] = field(default_factory=list)   # decoder layers trained in full
    lm_norm: bool = False             # also train the decoder's final RMSNorm
    lm_lr_scale: float = 0.5          # lr factor of unfrozen layers and LoRA tensors
    lora_rank: int = 16               # >0: LoRA on every linear of every decoder layer (merged at load)
    lora_alpha: float = 16.0
    vision_lr_scale: float = 0.1      # 0: vision tower frozen
    checkpoint_every: int = 25
    probe: int = 8                    # held-out scenes checked every `probe_every` steps (0: none)
    probe_every: int = 100
    vision_source: str | None = None  # toy save_pretrained folder (default: the shipped toy)
    # loss weight of the token that decides a yes/no answer ("yes"/"no"), relative to every other
    # supervised token: a description has ~30 tokens, a yes/no decision one, so at weight 1 the
    # decisions are a few percent of the gradient
    decision_weight: float = 1.0
    init_from: str | None = None      # a toy-smollm weights folder (DIR/model) to start from (a second stage)


class SmolSequenceBuilder:
    """One image + chat turns -> (input_ids, labels, task ids), exactly as the processor's chat
    template and tokenizer write the conversation; labels on answer tokens and their end token."""

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        self.image_text = processor.image_token * NUM_IMAGE_TOKENS

    def conversation(self, turns):
        messages = []
        for i, (prompt, answer, _) in enumerate(turns):
            content = [{"type": "image"}, {"type": "text", "text": prompt}] if i == 0 else prompt
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": answer})
        return messages

    def render(self, messages, add_generation_prompt=False) -> str:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return text.replace(self.processor.image_token, self.image_text)

    def encode(self, turns):
        messages = self.conversation(turns)
        full = self.render(messages)
        spans = []  # character spans of each answer, from its first character to its end token
        for k, (_, answer, task) in enumerate(turns):
            start = len(self.render(messages[:2 * k + 1], add_generation_prompt=True))
            end = len(self.render(messages[:2 * k + 2]))
            if not full.startswith(self.render(messages[:2 * k + 2])):
                raise ValueError("the chat template is not prefix-consistent")
            # supervise the answer and the end-of-turn token, not the whitespace after it
            tail = full[start:end]
            stop = start + len(tail.rstrip())
            spans.append((start, stop, TASKS.index(task)))
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [-100] * len(ids)
        tasks = [-1] * len(ids)
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            if b <= a:
                continue
            for s, e, t in spans:
                if a >= s and b <= e:
                    labels[j] = ids[j]
                    tasks[j] = t
                    break
        return ids, labels, tasks


def make_batch(step: int, cfg: SmolTrainConfig, builder: SmolSequenceBuilder) -> dict:
    """The batch of training step ``step`` (a pure function of seed and step), right-padded."""
    rng = np.random.default_rng([cfg.seed, step])
    images, seqs = [], []
    for b in range(cfg.batch_size):
        scene = training_scene(step * cfg.batch_size + b, rng, cfg)
        images.append(scene.image)
        turns = sample_turns(scene, rng, cfg)
        if cfg.description_alone and turns[0][2] == "description":
            turns = turns[:1]
        seqs.append(builder.encode(turns))
    width = max(len(s[0]) for s in seqs)
    pad = builder.tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    tasks = torch.full((len(seqs), width), -1, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, lab, tsk) in enumerate(seqs):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(ids)] = torch.tensor(lab)
        tasks[i, :len(ids)] = torch.tensor(tsk)
        attention[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixel_values(images),
            "labels": labels, "tasks": tasks}


def answer_losses(model, batch, bf16: bool = False):
    """Cross-entropy of every supervised next token (the LM head runs on those positions only):
    (losses, labels, task ids, first-answer-token flags), 1-D over supervised positions."""
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    tasks = batch["tasks"][:, 1:]
    mask = labels != -100
    first = mask & torch.cat([torch.ones_like(mask[:, :1]), ~mask[:, :-1]], dim=1)
    h = hidden[:, :-1][mask].float()
    logits = model.lm_head(h) if not bf16 else torch.nn.functional.linear(h, model.lm_head.weight.float())
    losses = torch.nn.functional.cross_entropy(logits, labels[mask], reduction="none")
    return losses, labels[mask], tasks[mask], first[mask]


def setup_trainable(model, cfg: SmolTrainConfig):
    """Freeze everything but the projector, (vision tower), the layers ``cfg.unfreeze`` (and the final
    norm); returns the AdamW parameter groups (with their ``lr_scale``)."""
    n_layers = model.config.text_config.num_hidden_layers
    bad = [i for i in cfg.unfreeze if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"--unfreeze layers {bad} out of range 0..{n_layers - 1}")
    if cfg.unfreeze and cfg.lora_rank:
        raise ValueError("use either --unfreeze or --lora-rank, not both")
    groups: dict[str, list] = {"projector": [], "vision": [], "lm": []}
    lm_prefixes = tuple(f"model.language_model.layers.{i}." for i in cfg.unfreeze)
    if cfg.lm_norm:
        lm_prefixes += ("model.language_model.norm.",)
    for n, p in model.named_parameters():
        if n.startswith("model.multi_modal_projector."):
            key = "projector"
        elif n.startswith("model.vision_tower.") and cfg.vision_lr_scale > 0:
            key = "vision"
        elif (lm_prefixes and n.startswith(lm_prefixes)) or ".lora_" in n:
            key = "lm"
        else:
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
        groups[key].append(p)
    scale = {"projector": 1.0, "vision": cfg.vision_lr_scale, "lm": cfg.lm_lr_scale}
    return [{"params": ps, "lr_scale": scale[k], "name": k,
             "weight_decay": cfg.weight_decay if k != "projector" else 0.0}
            for k, ps in groups.items() if ps]


def _trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _save_checkpoint(out: Path, step: int, model, optimizer, cfg: SmolTrainConfig, last: dict) -> None:
    tmp = out / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    params = dict(model.named_parameters())
    names = _trainable_names(model)
    save_file({n: params[n].detach().cpu().contiguous() for n in names}, str(tmp / "trainable.safetensors"))
    opt, adam_steps = {}, {}
    for n in names:
        st = optimizer.state.get(params[n])
        if st:
            opt[f"{n}.exp_avg"] = st["exp_avg"].cpu().contiguous()
            opt[f"{n}.exp_avg_sq"] = st["exp_avg_sq"].cpu().contiguous()
            adam_steps[n] = float(st["step"])
    opt["__torch_rng_state__"] = torch.get_rng_state()
    save_file(opt, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg), "adam_steps": adam_steps,
                                                "last": last}, indent=1))
    final = out / "checkpoint"
    old = out / "checkpoint.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _load_checkpoint(out: Path, model, optimizer) -> int:
    ckpt = out / "checkpoint"
    if not (ckpt / "state.json").exists() and (out / "checkpoint.old" / "state.json").exists():
        ckpt = out / "checkpoint.old"  # killed between the two renames
    state = json.loads((ckpt / "state.json").read_text())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in load_file(str(ckpt / "trainable.safetensors")).items():
            params[n].copy_(v)
    restore_adam(optimizer, params, ckpt, state, next(iter(params.values())).device)
    return int(state["step"])


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def probe(model, processor, n: int, seed: int = 0) -> dict:
    """Quick held-out check on test scenes ``PROBE_START..+n``: description exact match and object
    F1, one position look-up and all yes/no questions per scene (greedy, through the chat template)."""
    was_training = model.training
    model.eval()
    scenes = make_scenes(n, split="test", seed=seed, start=PROBE_START)
    images = [s.image for s in scenes]
    t0 = time.time()
    desc = generate_answers(model, processor, images, [DEFAULT_PROMPT] * n, 40, 16)
    quality = description_quality(desc, [s.objects for s in scenes])
    lk = [(s, q) for s in scenes for q in s.questions if q.aspect == "position_lookup"]
    lk_pred = generate_answers(model, processor, [s.image for s, _ in lk], [q.text for _, q in lk], 8, 32)
    yn = [(s, q) for s in scenes for q in s.questions if q.aspect != "position_lookup"]
    yn_pred = generate_answers(model, processor, [s.image for s, _ in yn], [q.text for _, q in yn], 3, 32)
    model.train(was_training)
    out = {"probe_exact": float(quality["exact"]), "probe_object_f1": float(quality["object_f1"]),
           "probe_lookup": float(np.mean([_norm(p) == _norm(q.answer) for p, (_, q) in zip(lk_pred, lk)])),
           "probe_seconds": round(time.time() - t0, 1), "probe_sample": desc[0]}
    for aspect in ("existence", "color", "position", "count"):
        hits = [_norm(p) == _norm(q.answer) for p, (_, q) in zip(yn_pred, yn) if q.aspect == aspect]
        out[f"probe_{aspect}"] = float(np.mean(hits)) if hits else float("nan")
    return out


def _append_csv(path: Path, row: dict, columns) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_csv(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        columns = rows[0].keys() if rows else None
    if columns is None:
        path.unlink()
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(r for r in rows if int(r["step"]) <= last_step)


def build(cfg: SmolTrainConfig, language_model=None):
    """The assembled (untrained-projector) model and processor of a run. ``language_model``: a
    callable returning (causal LM, tokenizer) in place of SmolLM2 from the GGUF (tests)."""
    lm, tokenizer = language_model() if language_model else load_language_model()
    model, processor = assemble(lm, tokenizer, vision_source=cfg.vision_source, seed=cfg.seed)
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    if cfg.init_from:
        init_from_trained(model, cfg.init_from, cfg)
    return model, processor


def init_from_trained(model, folder: str | Path, cfg: SmolTrainConfig) -> None:
    """Start from the trained tensors of an earlier run's weights folder (same LoRA shape)."""
    folder = Path(folder)
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    lora = recipe["trained"].get("lora") or {}
    if int(lora.get("rank", 0)) != cfg.lora_rank or float(lora.get("alpha", cfg.lora_alpha)) != cfg.lora_alpha:
        raise ValueError(f"--init-from {folder}: LoRA {lora or 'none'}, this run rank {cfg.lora_rank} "
                         f"alpha {cfg.lora_alpha}")
    apply_trained(model, load_file(str(folder / WEIGHTS_FILE)))


def decision_weights(labels, tasks, first, decision_weight: float):
    """Per-token loss weights: ``decision_weight`` on the first token of yes/no answers, 1 elsewhere."""
    yes_no = tasks >= TASKS.index("existence")
    w = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    return w.masked_fill(yes_no & first, float(decision_weight))


def train(out: str | Path, cfg: SmolTrainConfig = SmolTrainConfig(), resume: bool = False,
          progress: bool = True, language_model=None, stop_after: int | None = None, device: str = "cpu"):
    """Train (or resume) toy-smollm into ``out``; returns (model, processor). ``stop_after``: stop
    after that many steps of this call (the schedule still follows ``cfg.steps``). ``device`` other
    than the CPU (e.g. ``"cuda"``) is much faster but not bit-identical to a CPU run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_build = time.time()
    model, processor = build(cfg, language_model)
    model.to(device)
    groups = setup_trainable(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, foreach=False)
    start = 0
    if resume and ((out / "checkpoint" / "state.json").exists() or (out / "checkpoint.old" / "state.json").exists()):
        start = _load_checkpoint(out, model, optimizer)
        _truncate_csv(out / "log.csv", start)
        _truncate_csv(out / "probe.csv", start)
    else:
        for name in ("log.csv", "probe.csv"):
            if (out / name).exists():
                (out / name).unlink()
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    if progress:
        n_train = sum(p.numel() for g in groups for p in g["params"])
        print(f"[toy-smollm] built in {time.time() - t_build:.0f} s; {n_train:,} trained parameters; "
              f"steps {start}..{cfg.steps}", flush=True)
    builder = SmolSequenceBuilder(processor)
    model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress, desc="toy-smollm",
               mininterval=5)
    t0 = time.time()
    for step in bar:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        batch = make_batch(step, cfg, builder)
        if device != "cpu":
            batch = {k: v.to(device) for k, v in batch.items()}
        losses, labels, tasks, first = answer_losses(model, batch, cfg.bf16)
        weights = decision_weights(labels, tasks, first, cfg.decision_weight)
        loss = (losses * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            entry = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr, "grad_norm": round(gnorm.item(), 4),
                     "tokens": int(batch["attention_mask"].sum()), "supervised": int(labels.numel()),
                     "elapsed_s": round(time.time() - t0, 2)}
            for ti, name in enumerate(TASKS):
                sel = tasks == ti
                if sel.any():
                    entry[f"loss_{name}"] = round(losses[sel].mean().item(), 5)
                if ti >= 2 and (sel & first).any():
                    entry[f"first_{name}"] = round(losses[sel & first].mean().item(), 5)
        _append_csv(out / "log.csv", entry, LOG_COLUMNS)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{lr:.1e}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or step + 1 == end:
            _save_checkpoint(out, step + 1, model, optimizer, cfg, entry)
            save_trained(model, processor, out / "model", lm_layers=cfg.unfreeze, lm_norm=cfg.lm_norm,
                         info={"step": step + 1, "config": asdict(cfg)},
                         lora={"rank": cfg.lora_rank, "alpha": cfg.lora_alpha} if cfg.lora_rank else None)
            shutil.copy(out / "log.csv", out / "model" / "training_curves.csv")
            if cfg.probe and ((step + 1) % cfg.probe_every == 0 or step + 1 == cfg.steps):
                try:
                    row = {"step": step + 1, **probe(model, processor, cfg.probe, cfg.seed)}
                except Exception as exc:  # a probe never stops training
                    row = {"step": step + 1, "probe_sample": f"probe failed: {exc!r}"[:200]}
                _append_csv(out / "probe.csv", row, ["step", "probe_exact", "probe_object_f1", "probe_lookup",
                                                     "probe_existence", "probe_color", "probe_position",
                                                     "probe_count", "probe_seconds", "probe_sample"])
                if progress:
                    print(f"\n[probe] {json.dumps(row)}", flush=True)
    return model, processor


def main(argv=None) -> None:
    d = SmolTrainConfig()
    parser = argparse.ArgumentParser(description="Train toy-smollm (toy CLIP tower + SmolLM2-135M-Instruct).")
    parser.add_argument("--out", required=True, help="run folder (checkpoint/, model/, log.csv, probe.csv)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"total steps of the schedule (default {d.steps}; on --resume: the saved run's)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup", type=int, default=d.warmup_steps)
    parser.add_argument("--decay-fraction", type=float, default=d.decay_fraction)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d.bf16,
                        help="bfloat16 autocast (weights and optimizer stay fp32)")
    parser.add_argument("--description-first", type=float, default=d.description_first)
    parser.add_argument("--followups", type=int, default=d.followups)
    parser.add_argument("--lookup-share", type=float, default=d.lookup_share)
    parser.add_argument("--aspect-weights", default=None,
                        help='JSON sampling weights of the yes/no aspects, e.g. \'{"color": 2}\'')
    parser.add_argument("--description-alone", action="store_true",
                        help="no follow-up questions after a description (they could be answered from its text)")
    parser.add_argument("--binding-share", type=float, default=d.binding_share)
    parser.add_argument("--crowded-share", type=float, default=d.crowded_share)
    parser.add_argument("--unfreeze", type=int, nargs="*", default=[], help="decoder layers to train in full")
    parser.add_argument("--lm-norm", action="store_true", help="also train the decoder's final norm")
    parser.add_argument("--lm-lr-scale", type=float, default=d.lm_lr_scale)
    parser.add_argument("--lora-rank", type=int, default=d.lora_rank,
                        help="LoRA rank on every decoder linear (0: none); merged into plain weights at load")
    parser.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    parser.add_argument("--vision-lr-scale", type=float, default=d.vision_lr_scale)
    parser.add_argument("--decision-weight", type=float, default=d.decision_weight,
                        help="loss weight of the yes/no decision token (default 1: like every other token)")
    parser.add_argument("--init-from", default=None, help="start from this toy-smollm weights folder (DIR/model)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help=f"default {d.checkpoint_every}")
    parser.add_argument("--probe", type=int, default=None,
                        help=f"held-out scenes of the quick probe (0: none; default {d.probe})")
    parser.add_argument("--probe-every", type=int, default=None,
                        help=f"probe at checkpoints whose step is a multiple of this (default {d.probe_every})")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after N steps of this call")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint if present")
    parser.add_argument("--device", default="cpu",
                        help="torch device (default cpu; a GPU run is much faster but not bit-identical)")
    args = parser.parse_args(argv)
    state = Path(args.out) / "checkpoint" / "state.json"
    if args.resume and state.exists():
        saved = json.loads(state.read_text())["config"]
        if args.steps is not None:  # the only training setting a resume may change is where to stop
            saved["steps"] = args.steps
        cfg = SmolTrainConfig(**saved)
        # bookkeeping that leaves the weights alone may change too
        for name in ("checkpoint_every", "probe", "probe_every"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
    else:
        cfg = SmolTrainConfig(steps=args.steps if args.steps is not None else d.steps,
                              batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                              decay_fraction=args.decay_fraction, seed=args.seed, threads=args.threads,
                              bf16=args.bf16, description_first=args.description_first, followups=args.followups,
                              lookup_share=args.lookup_share, binding_share=args.binding_share,
                              crowded_share=args.crowded_share, unfreeze=sorted(args.unfreeze),
                              lm_norm=args.lm_norm, lm_lr_scale=args.lm_lr_scale,
                              lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                              vision_lr_scale=args.vision_lr_scale, decision_weight=args.decision_weight,
                              init_from=args.init_from, description_alone=args.description_alone,
                              aspect_weights=json.loads(args.aspect_weights) if args.aspect_weights else None)
        for name in ("checkpoint_every", "probe", "probe_every"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
    train(args.out, cfg, resume=args.resume, stop_after=args.stop_after, device=args.device)


if __name__ == "__main__":
    main()
