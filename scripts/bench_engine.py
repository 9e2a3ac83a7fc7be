"""Benchmark the engine on a medium random LLaVA: speed of knockout/recording vs plain SDPA generate,
and memory kept by recording vs ``output_attentions``.

    python scripts/bench_engine.py [--layers 12] [--hidden 1024] [--new-tokens 100] [--repeats 2]

Timings run interleaved in one process (one torch thread; best of --repeats, as the cores may be
shared). Memory runs each mode once in a fresh subprocess: bytes kept per sample and peak RSS
growth. Modes: plain (SDPA generate), knockout (image -> generated from the middle layer on),
record (span fractions), record+rows (fractions and image rows), output_attentions (eager
attention with ``output_attentions=True``, the usual way; memory only).
The model is random: only timing and memory mean anything here.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("plain", "knockout", "record", "record+rows", "output_attentions")


def build(args):
    import numpy as np
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from vlmnb.engine.spans import Spans

    torch.manual_seed(0)
    # 336 px / patch 14 = 24 x 24 = 576 image tokens; a slim vision tower (only the decoder matters)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              image_size=336, patch_size=14, projection_dim=256)
    text = LlamaConfig(vocab_size=32064, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.75),
                       num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                       num_key_value_heads=args.hidden // 64, max_position_embeddings=4096,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    attn = "eager" if args.mode == "output_attentions" else "sdpa"
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         attn_implementation=attn)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # always generate every requested token
    model.generation_config.pad_token_id = 0
    rng = np.random.default_rng(0)
    n_sys, n_img, n_query = 35, 576, 15
    ids = np.concatenate([[1], rng.integers(3, 32000, n_sys - 1), np.full(n_img, 32000),
                          rng.integers(3, 32000, n_query)])
    input_ids = torch.tensor(ids[None])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "pixel_values": torch.randn(1, 3, 336, 336)}
    spans = Spans(system=np.arange(n_sys), image=np.arange(n_sys, n_sys + n_img),
                  query=np.arange(n_sys + n_img, len(ids)))
    return model, inputs, spans


def _spec(mode: str, layers: int) -> dict:
    import vlmnb

    if mode == "knockout":
        return {"knockout": vlmnb.Knockout("image", "generated", vlmnb.from_layer(layers // 2))}
    if mode == "record":
        return {"record": vlmnb.Record(fractions=True)}
    if mode == "record+rows":
        return {"record": vlmnb.Record(fractions=True, image_rows=True)}
    return {}


class _Prepared:
    """The two fields VLM.generate reads from a prepared input."""

    def __init__(self, inputs, spans):
        self.inputs, self.spans = inputs, spans


def timing(args) -> dict[str, list[float]]:
    """Interleaved in-process timings of the SDPA modes (one model, one thread)."""
    import torch

    from vlmnb.engine.vlm import VLM

    torch.set_num_threads(1)
    model, inputs, spans = build(args)
    vlm = VLM(model, None, name="bench", family="llava")
    inp = _Prepared(inputs, spans)
    modes = [m for m in args.modes.split(",") if m != "output_attentions"]
    vlm.generate(inp, max_new_tokens=2)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for repeat in range(args.repeats):
        for mode in modes:
            # CPU time of this one-thread process is robust to other jobs sharing the cores
            w0, c0 = time.perf_counter(), time.process_time()
            out = vlm.generate(inp, max_new_tokens=args.new_tokens, **_spec(mode, args.layers))
            times[mode].append((time.process_time() - c0, time.perf_counter() - w0))
            assert len(out.token_ids) == args.new_tokens
            print(f"  [{repeat + 1}/{args.repeats}] {mode:12s} cpu {times[mode][-1][0]:6.1f} s, "
                  f"wall {times[mode][-1][1]:6.1f} s", flush=True)
    return times


def memory(args) -> dict:
    """One run of ``args.mode`` in this (fresh) process: bytes kept per sample and peak RSS growth."""
    import torch

    from vlmnb.engine.vlm import VLM

    torch.set_num_threads(1)
    model, inputs, spans = build(args)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if args.mode == "output_attentions":
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                 output_attentions=True, return_dict_in_generate=True)
        kept = sum(a.numel() * a.element_size() for step in out.attentions for a in step)
    else:
        vlm = VLM(model, None, name="bench", family="llava")
        out = vlm.generate(_Prepared(inputs, spans), max_new_tokens=args.new_tokens, **_spec(args.mode, args.layers))
        kept = out.recording.nbytes if out.recording is not None else 0
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": args.mode, "seconds": seconds, "kept_bytes": kept, "peak_rss_growth_mb": (rss1 - rss0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(memory(args)))
        return

    print("timing (interleaved, one process):", flush=True)
    times = timing(args)
    print("memory (one fresh process per mode):", flush=True)
    mem = {}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for mode in ("plain", "record", "record+rows", "output_attentions"):
        if mode not in args.modes.split(","):
            continue
        cmd = [sys.executable, __file__, "--mode", mode, "--layers", str(args.layers),
               "--hidden", str(args.hidden), "--new-tokens", str(args.new_tokens)]
        line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip()
        mem[mode] = json.loads(line.splitlines()[-1])
        print(f"  {mode:18s} kept {mem[mode]['kept_bytes'] / 1e6:9.3f} MB, "
              f"peak RSS +{mem[mode]['peak_rss_growth_mb']:.0f} MB", flush=True)

    base_cpu = min(c for c, _ in times["plain"]) if "plain" in times else None
    base_wall = min(w for _, w in times["plain"]) if "plain" in times else None
    print(f"\nmedium random LLaVA: {args.layers} layers, hidden {args.hidden}, 576 image tokens, "
          f"{args.new_tokens} new tokens, 1 thread; best of {args.repeats} interleaved runs")
    print(f"{'mode':18s} {'cpu s':>7s} {'tokens/cpu-s':>12s} {'cpu vs plain':>13s} {'wall vs plain':>14s} "
          f"{'kept per sample':>16s} {'peak RSS growth':>16s}")
    for mode in list(times) + [m for m in mem if m not in times]:
        if mode in times:
            cpu = min(c for c, _ in times[mode])
            wall = min(w for _, w in times[mode])
            cpu_ratio, wall_ratio = f"{cpu / base_cpu:.3f}x", f"{wall / base_wall:.3f}x"
        else:
            cpu, cpu_ratio, wall_ratio = mem[mode]["seconds"], "(eager,", "1 run, wall)"
        kept = mem.get(mode, {}).get("kept_bytes", 0)
        kept_s = "-" if not kept else f"{kept / 1e3:.1f} kB" if kept < 1e6 else f"{kept / 1e6:.1f} MB"
        rss = f"{mem[mode]['peak_rss_growth_mb']:.0f} MB" if mode in mem else "-"
        print(f"{mode:18s} {cpu:7.1f} {args.new_tokens / cpu:12.2f} {cpu_ratio:>13s} {wall_ratio:>14s} "
              f"{kept_s:>16s} {rss:>16s}")
    print("peak RSS growth: beyond the peak reached while building the model (0 = no new peak)")

if __name__ == "__main__":
    main()
