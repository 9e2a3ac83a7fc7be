"""Benchmark knockout sweeps: naive (one generate per configuration) vs batched shared-prefix.

    python scripts/bench_sweep.py [--threads 1] [--new-tokens 100] [--images 1] [--toy-images 8]
                                  [--skip-toy] [--skip-medium] [--skip-naive]
                                  [--medium-eos none|split] [--json out.json]

Rows:
* ``toy``: the embedded toy model (``vlmnb.load("toy")``; skipped when its checkpoint is
  missing) on toy scenes, the Fig. 2 grid of chapter 2 (every starting layer, one window).
* ``medium``: a random LLaVA-shaped model -- Llama decoder with 12 layers, hidden 1024, 16
  heads (no grouped KV), MLP 2816, vocabulary 32064; a slim CLIP tower (2 layers, hidden 256)
  on 336 px images with patch 14 = 576 image tokens -- generating ``--new-tokens`` tokens
  (no end-of-sequence: every row runs to the limit; with ``--medium-eos split`` an id chosen
  from a pilot sweep ends the rows at different steps, half the limit on average) for 27 configurations (3 kinds x 8
  starting layers (0 = all layers, 2, 3, 4, 5, 6, 8, 10) + 3 kinds outside window 3-6) plus
  the baseline.

Every sweep of a row runs in the same process, one after the other (naive, batched with rows
carried to the longest row as before early stop, batched with early stop), through
``vlmnb.experiments.sweep.run(..., batch=False)`` and ``batch=True``; the script prints seconds, their
ratio and whether every stored description is identical, in wall-clock seconds and in CPU
seconds of the process (``time.process_time``; with one thread the two agree on an idle
machine, and CPU time stays meaningful when other jobs share the cores). Compare the two
numbers of one row, not rows of different runs. "early-stop gain" is carried / early stop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MEDIUM_STARTS = (0, 2, 3, 4, 5, 6, 8, 10)
MEDIUM_WINDOW = (3, 6)
PROMPT_WORDS = "describe the image in detail , naming every object you can see and where it is ."


def medium_processor(image_size: int = 336, patch_size: int = 14):
    """LLaVA-1.5's processor layout (CLIP preprocessing, ``<image>`` expanded to one token per
    patch, LLaVA's chat template) with a word-level tokenizer of 32,064 ids (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    from vlmnb.engine.families.llava import TEMPLATE

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in ["USER:", "ASSISTANT:"] + PROMPT_WORDS.split():
        vocab.setdefault(word, len(vocab))
    while len(vocab) < 32000:
        vocab[f"w{len(vocab)}"] = len(vocab)
    vocab["<image>"] = 32000
    while len(vocab) < 32064:
        vocab[f"x{len(vocab)}"] = len(vocab)
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_level.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=TEMPLATE)


def medium_vlm():
    """A random LLaVA-1.5-shaped model (smaller decoder) with a real processor."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from vlmnb.engine.vlm import VLM

    processor = medium_processor()
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              image_size=336, patch_size=14, projection_dim=256)
    text = LlamaConfig(vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                       num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                       pad_token_id=3, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 3
    model.generation_config.eos_token_id = 2
    return VLM(model, processor, name="medium-llava", family="llava")


def medium_configs():
    from vlmnb.experiments import sweep
    from vlmnb.engine.knockout import from_layer, outside

    configs = []
    for kind in sweep.KINDS:
        configs += [sweep.Config(kind) if s == 0 else sweep.Config(kind, from_layer(s)) for s in MEDIUM_STARTS]
        configs.append(sweep.Config(kind, outside(*MEDIUM_WINDOW)))
    return configs


def random_images(n: int, size: int = 336):
    import numpy as np

    rng = np.random.default_rng(0)
    return [SimpleNamespace(image_id=f"random{i}", image=(rng.random((size, size, 3)) * 255).astype("uint8"))
            for i in range(n)]


MODES = {"naive": (False, None), "batched, carried": (True, False), "batched, early stop": (True, True)}


def compare(vlm, samples, configs, new_tokens: int, prompt: str, max_batch_rows: int,
            modes=tuple(MODES)) -> dict:
    """Run the sweep once per mode (one after the other, this process) and compare.

    Modes: ``naive`` (one generate per configuration), ``batched, carried`` (shared prefix, rows
    that end are carried to the longest row: ``batched.EARLY_STOP = False``, the behaviour
    before early stop) and ``batched, early stop`` (rows that end leave the batch).
    """
    from vlmnb.data.store import ResultStore
    from vlmnb.engine import batched
    from vlmnb.experiments import sweep

    times, cpu, texts = {}, {}, {}
    saved = batched.EARLY_STOP
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, mode in enumerate(modes):
                batch, early = MODES[mode]
                if early is not None:
                    batched.EARLY_STOP = early
                with ResultStore(Path(tmp) / str(i), {"mode": mode}, flush_every=10_000) as store:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    frame = sweep.run(vlm, samples, configs, store, prompt=prompt, max_new_tokens=new_tokens,
                                      batch=batch, max_batch_rows=max_batch_rows, progress=False)
                    times[mode] = time.perf_counter() - start
                    cpu[mode] = time.process_time() - start_cpu
                desc = sweep.descriptions(frame).sort_values(["image_id", "config"])
                texts[mode] = list(zip(desc.image_id, desc.config, desc.text))
                print(f"  {mode}: {times[mode]:.1f} s wall, {cpu[mode]:.1f} s CPU", file=sys.stderr, flush=True)
    finally:
        batched.EARLY_STOP = saved
    generations = len(samples) * len(sweep.sorted_configs(configs))
    # a batch without early stop decodes until its longest row ends: the row lengths explain it
    first = texts[modes[0]]
    lengths = [len(vlm.tokenizer(text, add_special_tokens=False)["input_ids"]) for _, _, text in first]
    out = {"images": len(samples), "generations": generations, "new_tokens": new_tokens,
           "seconds": {m: round(times[m], 1) for m in modes}, "cpu_seconds": {m: round(cpu[m], 1) for m in modes},
           "identical": all(texts[m] == first for m in modes),
           "mean_row_tokens": round(sum(lengths) / len(lengths), 1),
           "max_row_tokens": max(lengths),
           "rows_near_limit": int(sum(n >= new_tokens - 2 for n in lengths))}
    if "naive" in modes:
        out["speedup_vs_naive"] = round(times["naive"] / times["batched, early stop"], 2)
        out["cpu_speedup_vs_naive"] = round(cpu["naive"] / cpu["batched, early stop"], 2)
    out["early_stop_gain"] = round(times["batched, carried"] / times["batched, early stop"], 2)
    out["early_stop_cpu_gain"] = round(cpu["batched, carried"] / cpu["batched, early stop"], 2)
    return out


def splitting_eos(vlm, samples, configs, new_tokens: int, prompt: str, max_batch_rows: int) -> int:
    """An end-of-sequence id for the random medium model (which never ends on its own), from a
    pilot batched sweep without one: the id that, made end-of-sequence, gives the rows a mean
    length closest to half the limit (rows then end at different steps, some never)."""
    from vlmnb.data.store import ResultStore
    from vlmnb.experiments import sweep

    vlm.model.generation_config.eos_token_id = None
    with tempfile.TemporaryDirectory() as tmp, ResultStore(Path(tmp) / "pilot", {}, flush_every=10_000) as store:
        frame = sweep.run(vlm, samples, configs, store, prompt=prompt, max_new_tokens=new_tokens, batch=True,
                          max_batch_rows=max_batch_rows, progress=False)
    rows = [vlm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in sweep.descriptions(frame).text]

    def mean_length(t):  # each row would end at its first t after its first token
        return sum(ids.index(t, 1) + 1 if t in ids[1:] else len(ids) for ids in rows) / len(rows)

    candidates = {t for ids in rows for t in ids[1:]}
    return int(min(candidates, key=lambda t: (abs(mean_length(t) - new_tokens / 2), t)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--images", type=int, default=1, help="medium-model images")
    parser.add_argument("--toy-images", type=int, default=8)
    parser.add_argument("--max-batch-rows", type=int, default=32)
    parser.add_argument("--skip-toy", action="store_true")
    parser.add_argument("--skip-medium", action="store_true")
    parser.add_argument("--skip-naive", action="store_true",
                        help="compare only the batched sweep with and without early stop")
    parser.add_argument("--medium-eos", choices=("none", "split"), default="none",
                        help="none: the random medium model never ends (every row runs to the limit); "
                             "split: an end-of-sequence id chosen from a pilot sweep so that rows end at "
                             "different steps")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    import torch

    import vlmnb
    from vlmnb.experiments import sweep

    torch.set_num_threads(args.threads)
    modes = tuple(m for m in MODES if not (args.skip_naive and m == "naive"))
    rows = []
    if not args.skip_toy:
        try:
            from vlmnb import toy

            toy.checkpoint_path("toy")
        except (FileNotFoundError, ImportError, ValueError) as exc:
            print(f"toy: skipped ({exc})", file=sys.stderr)
        else:
            vlm = vlmnb.load("toy")
            samples = vlmnb.data.images("toy", n=args.toy_images)
            n = vlm.num_layers
            configs = sweep.knockout_configs(n, stride=1, window=(1, max(1, n // 2)))
            print(f"toy ({n} layers, {len(configs) - 1} configurations):", file=sys.stderr)
            rows.append({"model": "toy", "configs": len(configs) - 1,
                         **compare(vlm, samples, configs, args.new_tokens, "describe the image",
                                   args.max_batch_rows, modes)})
    if not args.skip_medium:
        vlm = medium_vlm()
        configs = medium_configs()
        images = random_images(args.images)
        label = "medium LLaVA-shaped"
        if args.medium_eos == "split":
            eos = splitting_eos(vlm, images, configs, args.new_tokens, PROMPT_WORDS, args.max_batch_rows)
            vlm.model.generation_config.eos_token_id = eos
            label += f" (eos id {eos})"
        print(f"medium (12 layers, hidden 1024, {len(configs)} configurations, eos {args.medium_eos}):",
              file=sys.stderr)
        rows.append({"model": label, "configs": len(configs),
                     **compare(vlm, images, configs, args.new_tokens, PROMPT_WORDS, args.max_batch_rows, modes)})
    header = (f"threads={args.threads}, cpu_count={os.cpu_count()}, load average={os.getloadavg()[0]:.1f}; "
              f"seconds wall (CPU seconds of the process)")
    print(header)
    print("| model | images | configurations (+ baseline) | new tokens | mean / max row tokens | "
          + " | ".join(f"{m} s" for m in modes) + " | early-stop gain wall (CPU) | "
          + ("batched vs naive wall (CPU) | " if "naive" in modes else "") + "identical |")
    print("|---" * (7 + len(modes) + ("naive" in modes)) + "|")
    for r in rows:
        cells = [r["model"], r["images"], r["configs"], r["new_tokens"],
                 f"{r['mean_row_tokens']} / {r['max_row_tokens']}"]
        cells += [f"{r['seconds'][m]} ({r['cpu_seconds'][m]})" for m in modes]
        cells.append(f"{r['early_stop_gain']}x ({r['early_stop_cpu_gain']}x)")
        if "naive" in modes:
            cells.append(f"{r['speedup_vs_naive']}x ({r['cpu_speedup_vs_naive']}x)")
        cells.append("yes" if r["identical"] else "NO")
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": header, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
