"""Training batches of the toy: the hyper-parameters, the questions a training scene is asked
(descriptions, position look-ups, yes/no, binding questions) and the tokenised batch at a step.

The batch at step ``s`` depends only on (seed, s), so a resumed run sees the same batches as an
uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmnb.toy.model import DEFAULT_PROMPT, NUM_IMAGE_TOKENS, PATCH_SIZE, pixel_values
from vlmnb.toy.scenes import ASPECTS, COLORS, IMAGE_SIZE, crowded_cells, make_scene, object_names

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


def training_scene(index: int, rng: np.random.Generator, cfg):
    """Training scene ``index``: a crowded one with probability ``cfg.crowded_share`` (drawn from
    ``rng``), else the plain training scene of that index."""
    if cfg.crowded_share > 0 and rng.random() < cfg.crowded_share:
        return crowded_scene(index, cfg.seed)
    return make_scene(index, split="train", seed=cfg.seed)


def make_batch(step: int, cfg: TrainConfig, builder: SequenceBuilder) -> dict:
    """The batch of training step ``step`` (a pure function of seed and step)."""
    rng = np.random.default_rng([cfg.seed, step])
    images, seqs = [], []
    for b in range(cfg.batch_size):
        scene = training_scene(step * cfg.batch_size + b, rng, cfg)
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
