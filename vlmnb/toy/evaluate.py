"""Held-out evaluation of a toy checkpoint: ``python -m vlmnb.toy.evaluate [--checkpoint DIR] [--n 500]``.

Everything goes through the public pipeline (``AutoProcessor`` / ``LlavaForConditionalGeneration``
``from_pretrained``, the processor's chat template, greedy ``generate`` with left padding) on
test-split scenes the model never saw. Measured:

- descriptions ("describe the image"): exact match and object precision/recall/F1;
- position look-ups ("what is at the top left?"): accuracy (exact answer) and ACC+ per pair;
- yes/no questions per aspect: MME ACC and ACC+, and the same questions asked about another
  scene's image (image-swap control: an answer that depends on the image falls to chance there).

The table is printed and written to ``eval.json`` next to the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch

from vlmnb.core.usage import (ArgumentParser, UsageError, add_version, at_least, check_device, check_input_folder,
                              run_main)
from vlmnb.core.yes_no import mme_scores
from vlmnb.toy.metrics import description_quality
from vlmnb.toy.model import DEFAULT_PROMPT
from vlmnb.toy.scenes import make_scenes
from vlmnb.toy.scenes import CELLS, crowded_cells
from vlmnb.toy import checkpoint_path, smollm_weights_path
from vlmnb.toy.smollm import export_pretrained
from vlmnb.core.progress import progress_bar as tqdm

YES_NO_ASPECTS = ("existence", "color", "position", "count")


def load(checkpoint: str | Path):
    """(model, processor) from a ``save_pretrained`` folder, model in eval mode."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {checkpoint}: pass a save_pretrained folder")
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    return model, processor


def chat_prompt(processor, question: str) -> str:
    """The processor's chat-template text for one image and one question."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.no_grad()
def generate_answers(model, processor, images, questions, max_new_tokens: int = 40,
                     batch_size: int = 64, progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy answers to ``questions[i]`` about ``images[i]``, batched with left padding."""
    processor.tokenizer.padding_side = "left"
    answers: list[str] = []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, disable=not progress, desc=desc):
        texts = [chat_prompt(processor, q) for q in questions[s:s + batch_size]]
        enc = processor(images=list(images[s:s + batch_size]), text=texts, return_tensors="pt",
                        padding=True).to(model.device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
        answers += processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [a.strip() for a in answers]


ROW_COMPANY = ("empty_cell", "alone_in_row", "shares_row")


def row_company(scene, lookup: str) -> str:
    """For a look-up "what is at the <cell>?": ``"empty_cell"`` when no object is there, else
    ``"alone_in_row"`` or ``"shares_row"`` (another object in the same grid row)."""
    cell = lookup.strip().removeprefix("what is at the ").rstrip("?").strip()
    if cell not in CELLS:
        raise ValueError(f"not a position look-up: {lookup!r}")
    if not any(o.cell == cell for o in scene.objects):
        return "empty_cell"
    return "shares_row" if cell in crowded_cells(scene.objects) else "alone_in_row"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def evaluate(checkpoint: str | Path, n: int = 500, seed: int = 0, batch_size: int = 64,
             progress: bool = True, threads: int | None = 1, device: str = "cpu", start: int = 0) -> dict:
    """Run the held-out evaluation on test scenes ``start..start+n-1``; returns the result dict
    (see module doc). The reported numbers use ``start=0``; choosing between training recipes
    uses scenes from another range (e.g. ``start=100_000``) so that the reported test set
    plays no part in the choice."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    model, processor = load(checkpoint)
    model.to(device)
    scenes = make_scenes(n, split="test", seed=seed, start=start)
    images = [s.image for s in scenes]

    descriptions = generate_answers(model, processor, images, [DEFAULT_PROMPT] * n, 40, batch_size,
                                    progress, "descriptions")
    desc = description_quality(descriptions, [s.objects for s in scenes])

    lookups = [(s, q) for s in scenes for q in s.questions if q.aspect == "position_lookup"]
    lookup_pred = generate_answers(model, processor, [s.image for s, _ in lookups],
                                   [q.text for _, q in lookups], 8, batch_size, progress, "look-ups")
    lk = pd.DataFrame({"pair_id": [q.pair_id for _, q in lookups],
                       "row": [row_company(s, q.text) for s, q in lookups],
                       "correct": [_norm(p) == _norm(q.answer) for p, (_, q) in zip(lookup_pred, lookups)]})
    lookup = {"n_questions": len(lk), "acc": float(lk["correct"].mean()),
              "acc_plus": float(lk.groupby("pair_id")["correct"].all().mean())}
    for company in ROW_COMPANY:  # where look-ups fail: objects alone in their row or not
        sel = lk[lk["row"] == company]
        lookup[f"acc_{company}"] = float(sel["correct"].mean()) if len(sel) else None
        lookup[f"n_{company}"] = int(len(sel))

    yesno = [(s, q) for s in scenes for q in s.questions if q.aspect in YES_NO_ASPECTS]
    questions = [q.text for _, q in yesno]
    pred = generate_answers(model, processor, [s.image for s, _ in yesno], questions, 3, batch_size,
                            progress, "yes/no")
    # image-swap control: the same questions about the next scene's image
    swapped = [scenes[(s.index - start + 1) % n].image for s, _ in yesno]
    pred_swap = generate_answers(model, processor, swapped, questions, 3, batch_size, progress, "swap control")
    frame = pd.DataFrame({"question_id": range(len(yesno)), "image_id": [s.index for s, _ in yesno],
                          "pair_id": [q.pair_id for _, q in yesno], "category": [q.aspect for _, q in yesno],
                          "answer": [q.answer for _, q in yesno], "prediction": pred})
    table = mme_scores(frame)
    table_swap = mme_scores(frame.assign(prediction=pred_swap))
    per_aspect = {a: {"acc": float(table.loc[a, "acc"]), "acc_plus": float(table.loc[a, "acc_plus"]),
                      "swap_acc": float(table_swap.loc[a, "acc"]),
                      "swap_acc_plus": float(table_swap.loc[a, "acc_plus"]),
                      "n_questions": int(table.loc[a, "n_questions"])} for a in YES_NO_ASPECTS}

    result = {
        "checkpoint": str(checkpoint), "n_scenes": n, "split": "test", "seed": seed, "start": start,
        "description": desc, "position_lookup": lookup, "yes_no": per_aspect,
        "mme_score": float(table["score"].sum()), "mme_score_swap": float(table_swap["score"].sum()),
        "samples": [{"index": s.index, "truth": s.description, "prediction": d}
                    for s, d in zip(scenes[:8], descriptions[:8])],
        "seconds": round(time.time() - t0, 1),
    }
    return result


def format_table(result: dict) -> str:
    """The quality table as Markdown."""
    d = result["description"]
    lk = result["position_lookup"]
    lines = [f"Held-out evaluation on {result['n_scenes']} test scenes",
             "", "| task | metric | value |", "|---|---|---|",
             f"| description | exact match | {d['exact']:.3f} |",
             f"| description | object precision / recall / F1 (all attributes) | "
             f"{d['object_precision']:.3f} / {d['object_recall']:.3f} / {d['object_f1']:.3f} |",
             f"| description | object-name F1 (colour + shape) | {d['name_f1']:.3f} |",
             f"| description | F1 on colour + cell / shape + cell / size + cell / cell | "
             f"{d['color_cell_f1']:.3f} / {d['shape_cell_f1']:.3f} / {d['size_cell_f1']:.3f} / {d['cell_f1']:.3f} |",
             f"| position look-up | ACC / ACC+ | {lk['acc']:.3f} / {lk['acc_plus']:.3f} |",
             *[f"| position look-up | ACC, {c.replace('_', ' ')} (n={lk[f'n_{c}']}) | {lk[f'acc_{c}']:.3f} |"
               for c in ROW_COMPANY if lk.get(f"acc_{c}") is not None],
             "", "| yes/no aspect | ACC | ACC+ | swapped-image ACC | swapped-image ACC+ |",
             "|---|---|---|---|---|"]
    for a, v in result["yes_no"].items():
        lines.append(f"| {a} | {v['acc']:.3f} | {v['acc_plus']:.3f} | {v['swap_acc']:.3f} | {v['swap_acc_plus']:.3f} |")
    lines.append("")
    lines.append(f"MME-style score (sum of ACC+ACC+ in %, 4 aspects): {result['mme_score']:.1f} "
                 f"(swapped images: {result['mme_score_swap']:.1f})")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    p = ArgumentParser(prog="python -m vlmnb.toy.evaluate", description="Held-out evaluation of a toy checkpoint.")
    p.add_argument("--checkpoint", default=None,
                   help="save_pretrained folder, or toy-smollm (the second embedded model: its eval.json goes "
                        "next to its shipped weights); default: the shipped toy")
    p.add_argument("--n", type=at_least(1), default=500, help="number of test scenes")
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--threads", type=at_least(1), default=1)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--start", type=at_least(0), default=0,
                   help="first test scene (default 0; use another range to compare recipes)")
    p.add_argument("--no-write", action="store_true", help="print only, do not write eval.json")
    add_version(p)
    return p


def main(argv=None) -> int:
    """``python -m vlmnb.toy.evaluate ...``; returns the exit status (2, one line: bad input)."""
    return run_main(_main, argv)


def _main(argv=None) -> int:
    args = parser().parse_args(argv)
    written_to = None
    if args.checkpoint == "toy-smollm":
        written_to = smollm_weights_path()
        checkpoint = export_pretrained(written_to)
    elif args.checkpoint:
        checkpoint = check_input_folder(args.checkpoint, "--checkpoint", must_hold="config.json")
    else:
        checkpoint = checkpoint_path()
    written_to = written_to or checkpoint
    check_device(args.device)
    if not args.no_write and not os.access(written_to, os.W_OK):
        raise UsageError(f"{written_to} is not writable (eval.json goes there); add --no-write")
    result = evaluate(checkpoint, n=args.n, batch_size=args.batch_size, threads=args.threads,
                      device=args.device, start=args.start)
    print(format_table(result))
    if not args.no_write:
        if written_to != checkpoint:
            result["checkpoint"] = f"toy-smollm ({written_to.name}, weights sha256 {checkpoint.name})"
        (written_to / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {written_to / 'eval.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
