"""Benchmark image re-prompting: naive (full image per question) vs compressed contexts.

    python scripts/bench_compress.py [--toy toy] [--layers 8] [--hidden 1024] [--answer-tokens 4]
                                     [--questions 4] [--repeats 3] [--json out.json]

For the embedded toy model and for a medium random LLaVA-1.5-shaped model (336 px / patch 14 =
576 image tokens, LLaVA's chat template), prints per method: tokens kept, KV-cache bytes and
seconds per extra question (prepare + answer for Naive, which also runs the vision tower and the
whole prompt again; ``ask`` for a compressed context, made once beforehand), each also as a
ratio to Naive. Every answer generates exactly ``--answer-tokens`` tokens (no early stop), on
one torch thread, best of ``--repeats`` interleaved rounds (the cores may be shared). The
medium model is random: only its sizes and timings mean anything.

Target (issue 8): on the LLaVA-shaped model, Query + 5% keeps >= 8x fewer KV bytes and answers
an extra question >= 5x faster than Naive.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

QUESTIONS = ["is there a dog in the image?", "what colour is the car?", "how many people are there?",
             "is it daytime?", "is there a red circle?", "what is at the top left?"]


def medium_llava(layers: int, hidden: int):
    """A random LLaVA-1.5-shaped VLM: 576 image tokens, LLaVA's template, tiny tokenizer."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from vlmnb.engine import tiny
    from vlmnb.engine.vlm import VLM

    _, small = tiny.build("llava")
    tok = small.tokenizer
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                                  crop_size={"height": 336, "width": 336}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=small.chat_template)
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=336, patch_size=14, projection_dim=256)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                       num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                       max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config).eval()
    return VLM(model, processor, name=f"random LLaVA-1.5-shaped ({layers} layers, hidden {hidden})")


def bench(vlm, image, questions, answer_tokens: int, repeats: int, ks=(0.05, 0.02)) -> list[dict]:
    """Rows (method, tokens, kv_bytes, seconds) for Naive and Query + k for each k."""
    from vlmnb.engine.compress import describe
    from vlmnb.experiments.reprompt import _kv_bytes_per_token

    vlm.model.generation_config.eos_token_id = None  # every answer has exactly answer_tokens tokens
    t0 = time.perf_counter()
    image_pass = describe(vlm, image, max_new_tokens=16)
    describe_seconds = time.perf_counter() - t0
    contexts = {f"Query + K={k * 100:g}%": image_pass.compress(k) for k in ks}
    per_token = _kv_bytes_per_token(vlm)

    def naive(q):
        inp = vlm.prepare(image, prompt=q)
        vlm.generate(inp, max_new_tokens=answer_tokens)
        return inp.spans.prompt_length

    best = {name: float("inf") for name in ["Naive", *contexts]}
    naive_tokens = []
    for _ in range(repeats):  # interleaved rounds, best of each
        t = time.perf_counter()
        naive_tokens = [naive(q) for q in questions]
        best["Naive"] = min(best["Naive"], (time.perf_counter() - t) / len(questions))
        for name, ctx in contexts.items():
            t = time.perf_counter()
            for q in questions:
                ctx.run(ctx.question_ids(q), max_new_tokens=answer_tokens, stop_at_eos=False)
            best[name] = min(best[name], (time.perf_counter() - t) / len(questions))
    n_naive = sum(naive_tokens) / len(naive_tokens)
    rows = [{"method": "Naive", "tokens": n_naive, "kv_bytes": n_naive * per_token, "seconds": best["Naive"]}]
    rows += [{"method": name, "tokens": ctx.num_tokens, "kv_bytes": ctx.nbytes, "seconds": best[name]}
             for name, ctx in contexts.items()]
    for row in rows:
        row.update(model=vlm.name, image_tokens=len(image_pass.prepared.spans.image),
                   fewer_tokens_x=rows[0]["tokens"] / row["tokens"], fewer_kv_bytes_x=rows[0]["kv_bytes"] / row["kv_bytes"],
                   faster_x=rows[0]["seconds"] / row["seconds"], describe_seconds=describe_seconds)
    return rows


def main(argv=None) -> int:
    import numpy as np
    import torch
    from PIL import Image

    import vlmnb

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", default="toy", help="the toy model (name or folder); 'none' to skip")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the medium model")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the medium model")
    parser.add_argument("--answer-tokens", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    questions = QUESTIONS[: args.questions]
    rows = []
    if args.toy != "none":
        from vlmnb.toy.scenes import make_scene

        try:
            toy = vlmnb.load(args.toy)
        except FileNotFoundError as exc:
            print(f"[skip toy] {exc}", file=sys.stderr)
        else:
            scene = make_scene(0)
            rows += bench(toy, scene.image, [q.text for q in scene.questions[: args.questions]],
                          args.answer_tokens, args.repeats)
    image = Image.fromarray((np.random.default_rng(0).random((336, 336, 3)) * 255).astype("uint8"))
    rows += bench(medium_llava(args.layers, args.hidden), image, questions, args.answer_tokens, args.repeats)

    print(f"\nper extra question ({args.answer_tokens} answer tokens, 1 thread, best of {args.repeats}):\n")
    print("| model | image tokens | method | tokens kept | KV bytes | s / question | x fewer tokens "
          "| x fewer KV bytes | x faster |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['image_tokens']} | {r['method']} | {r['tokens']:.0f} | {r['kv_bytes'] / 1e6:.3f} MB "
              f"| {r['seconds']:.4f} | {r['fewer_tokens_x']:.1f} | {r['fewer_kv_bytes_x']:.1f} | {r['faster_x']:.1f} |")
    main_row = [r for r in rows if r["image_tokens"] == 576 and r["method"] == "Query + K=5%"][0]
    met = main_row["fewer_kv_bytes_x"] >= 8 and main_row["faster_x"] >= 5
    print(f"\ntarget (LLaVA-shaped, Query + 5%: >= 8x fewer KV bytes, >= 5x faster): "
          f"{main_row['fewer_kv_bytes_x']:.1f}x, {main_row['faster_x']:.1f}x -> {'met' if met else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
