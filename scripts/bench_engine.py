"""Benchmark the engine on a medium random LLaVA: speed of knockout/recording vs plain SDPA generate,
and memory kept by recording vs ``output_attentions``.

    python scripts/bench_engine.py [--layers 12] [--hidden 1024] [--new-tokens 100] [--repeats 2]

Each measurement runs in its own subprocess (one torch thread) so peak RSS is per mode. Modes:
plain (SDPA generate), knockout (image -> generated from the middle layer on), record
(fractions), record+rows (fractions and image rows), eager+output_attentions (the usual way).
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

    from vlmnb.spans import Spans

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


def run_mode(args) -> dict:
    import torch

    import vlmnb
    from vlmnb.models import VLM

    torch.set_num_threads(1)
    model, inputs, spans = build(args)

    class _Inp:  # what VLM.generate needs from a prepared input
        pass

    inp = _Inp()
    inp.inputs, inp.spans = inputs, spans
    vlm = VLM(model, None, name="bench", family="llava")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = 0
    t0 = time.perf_counter()
    if args.mode == "output_attentions":
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                 output_attentions=True, return_dict_in_generate=True)
        kept = sum(a.numel() * a.element_size() for step in out.attentions for a in step)
        n = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    else:
        kw = {}
        if args.mode == "knockout":
            kw["knockout"] = vlmnb.Knockout("image", "generated", vlmnb.from_layer(args.layers // 2))
        elif args.mode == "record":
            kw["record"] = vlmnb.Record(fractions=True)
        elif args.mode == "record+rows":
            kw["record"] = vlmnb.Record(fractions=True, image_rows=True)
        gen = vlm.generate(inp, max_new_tokens=args.new_tokens, **kw)
        n = len(gen.token_ids)
        if gen.recording is not None:
            kept = gen.recording.nbytes
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": args.mode, "seconds": seconds, "tokens": n, "kept_bytes": kept,
            "peak_rss_growth_mb": (rss1 - rss0) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for repeat in range(args.repeats):  # interleaved so that load changes hit every mode alike
        for mode in modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--layers", str(args.layers),
                   "--hidden", str(args.hidden), "--new-tokens", str(args.new_tokens)]
            line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip()
            results[mode].append(json.loads(line.splitlines()[-1]))
            print(f"  [{repeat + 1}/{args.repeats}] {mode:18s} {results[mode][-1]['seconds']:.1f} s", flush=True)

    base = min(r["seconds"] for r in results["plain"]) if "plain" in results else None
    print(f"\nmedium random LLaVA: {args.layers} layers, hidden {args.hidden}, 576 image tokens, "
          f"{args.new_tokens} new tokens, 1 thread, best of {args.repeats}")
    print(f"{'mode':20s} {'seconds':>8s} {'tokens/s':>9s} {'time vs plain':>14s} {'kept per sample':>16s} "
          f"{'peak RSS growth':>16s}")
    for mode in modes:
        best = min(results[mode], key=lambda r: r["seconds"])
        ratio = f"{best['seconds'] / base:.3f}x" if base else "-"
        kept = best["kept_bytes"]
        kept_s = ("-" if not kept else f"{kept / 1e3:.1f} kB" if kept < 1e6 else f"{kept / 1e6:.1f} MB")
        print(f"{mode:20s} {best['seconds']:8.1f} {best['tokens'] / best['seconds']:9.2f} {ratio:>14s} "
              f"{kept_s:>16s} {best['peak_rss_growth_mb']:13.0f} MB")


if __name__ == "__main__":
    main()
