"""GPU check: the engine on a random model with LLaVA-1.5-7B's shape, bf16, on CUDA.

    python scripts/gpu_check.py [--new-tokens 64] [--repeats 3] [--json out.json]
    python scripts/gpu_check.py --device cpu --tiny          # the same code path, small, on the CPU

Builds ``LlavaForConditionalGeneration`` from configs (random weights, nothing downloaded) with
LLaVA-1.5-7B's shape -- Llama decoder of 32 layers, hidden 4096, 32 heads, MLP 11008, vocabulary
32064; CLIP ViT-L/14 tower at 336 px (24 layers, hidden 1024) = 576 image tokens -- in bfloat16
on the GPU, and prints from one run:

* plain generation: seconds and tokens per second (one row, ``--new-tokens`` tokens, no
  end-of-sequence: the random model would never end anyway, and this fixes every length);
* knockout / plain: the same generation under a Fig. 2 knockout (image -> query and
  generated tokens, all layers), as a time ratio;
* recording / plain: the same generation recording what the sweep's baseline records
  (image-attention rows), as a time ratio;
* the 27-configuration sweep (3 kinds x 8 starting layers + 3 kinds outside a window, plus the
  baseline with its recording): naive (one ``generate`` per configuration) against batched
  (:func:`vlmnb.engine.batched.generate_rows`, shared prefix, one decode), seconds, tokens per
  second, the speed-up and whether every configuration's token ids are identical;
* the peak GPU memory (``torch.cuda.max_memory_allocated``) of each part.

Times are the best of ``--repeats`` for the single generations (after a warm-up) and one run
for each sweep. ``--tiny`` shrinks the shape (8 layers, hidden 128; a 2-layer tower, still
576 image tokens) so that the code path runs on a CPU in about a minute; its numbers mean
nothing. Without a CUDA device and without ``--device cpu`` the script stops with one line
and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    # LLaVA-1.5-7B: vicuna-7b decoder, CLIP ViT-L/14-336 tower
    "llava-1.5-7b": dict(layers=32, hidden=4096, heads=32, mlp=11008, v_layers=24, v_hidden=1024, v_heads=16,
                         v_mlp=4096, starts=(0, 4, 8, 12, 16, 20, 24, 28), window=(8, 16)),
    "tiny": dict(layers=8, hidden=128, heads=4, mlp=344, v_layers=2, v_hidden=64, v_heads=2, v_mlp=128,
                 starts=(0, 1, 2, 3, 4, 5, 6, 7), window=(2, 5)),
}
PROMPT = "describe the image in detail , naming every object you can see and where it is ."


def build(shape: dict, device: str, dtype):
    """A random LLaVA-1.5-shaped VLM on ``device`` in ``dtype`` (weights made there, not on the CPU)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from bench_sweep import medium_processor
    from vlmnb.engine.vlm import VLM

    processor = medium_processor()
    vision = CLIPVisionConfig(hidden_size=shape["v_hidden"], intermediate_size=shape["v_mlp"],
                              num_hidden_layers=shape["v_layers"], num_attention_heads=shape["v_heads"],
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
                       num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                       num_key_value_heads=shape["heads"], max_position_embeddings=4096,
                       pad_token_id=3, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(saved)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = 3
    model.generation_config.eos_token_id = None  # every row generates exactly --new-tokens tokens
    return VLM(model, processor, name="random LLaVA-1.5-7B-shaped", family="llava")


def configs(shape: dict):
    """The baseline and 27 knockout configurations (3 kinds x 8 starts + 3 kinds outside a window)."""
    from vlmnb.engine.knockout import from_layer, outside
    from vlmnb.experiments import sweep

    out = [sweep.Config("baseline")]
    for kind in sweep.KINDS:
        out += [sweep.Config(kind) if s == 0 else sweep.Config(kind, from_layer(s)) for s in shape["starts"]]
        out.append(sweep.Config(kind, outside(*shape["window"])))
    return out


class Meter:
    """Seconds (synchronised on CUDA) and peak GPU memory of a block."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def run(self, fn):
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if self.cuda else None
        return result, seconds, peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a small shape, to test the code path (e.g. on the CPU)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on the CPU)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.repeats < 1:
        print("gpu_check: --new-tokens and --repeats must be at least 1", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (torch.cuda.is_available() is False); "
              "run on a GPU machine, or test the code path with --device cpu --tiny", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        print(f"gpu_check: unknown --dtype {dtype_name!r}; use bfloat16, float16 or float32", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from vlmnb.engine import batched
    from vlmnb.engine.knockout import Knockout
    from vlmnb.experiments import sweep

    shape_name = "tiny" if args.tiny else "llava-1.5-7b"
    shape = SHAPES[shape_name]
    meter = Meter(args.device)
    (vlm, build_s, build_peak) = meter.run(lambda: build(shape, args.device, dtype))
    device_name = torch.cuda.get_device_name() if meter.cuda else "CPU"
    n_params = sum(p.numel() for p in vlm.model.parameters())
    image = (np.random.default_rng(0).random((336, 336, 3)) * 255).astype("uint8")
    inp = vlm.prepare(image, prompt=PROMPT)
    n_image = len(inp.spans.image)
    new = args.new_tokens
    print(f"{vlm.name} ({shape_name}: {shape['layers']} layers, hidden {shape['hidden']}, {n_params / 1e9:.2f} B "
          f"parameters, {dtype_name}) on {device_name}; prompt {inp.spans.prompt_length} tokens "
          f"({n_image} image tokens), {new} new tokens", file=sys.stderr, flush=True)

    fig2 = [Knockout("image", "query"), Knockout("image", "generated")]
    record = sweep.baseline_record()
    vlm.generate(inp, max_new_tokens=2)  # warm-up (kernels, allocator)
    vlm.generate(inp, max_new_tokens=2, knockout=fig2, record=record)

    def best(fn):
        runs = [meter.run(fn) for _ in range(args.repeats)]
        out, seconds, _ = min(runs, key=lambda r: r[1])
        return out, seconds, max((r[2] or 0) for r in runs) if meter.cuda else None

    plain, plain_s, plain_peak = best(lambda: vlm.generate(inp, max_new_tokens=new))
    knocked, ko_s, ko_peak = best(lambda: vlm.generate(inp, max_new_tokens=new, knockout=fig2))
    recorded, rec_s, rec_peak = best(lambda: vlm.generate(inp, max_new_tokens=new, record=record))
    assert len(plain.token_ids) == new

    grid = configs(shape)
    row_knockouts = [c.knockouts(None, inp.spans.image) for c in grid]

    def naive():
        return [vlm.generate(inp, max_new_tokens=new, knockout=ko or None,
                             record=record if c.kind == "baseline" else None).token_ids
                for c, ko in zip(grid, row_knockouts)]

    def batch():
        outs = batched.generate_rows(vlm, inp, row_knockouts, new, record=record, record_rows=[0])
        return [g.token_ids for g in outs]

    naive_ids, naive_s, naive_peak = meter.run(naive)
    batch_ids, batch_s, batch_peak = meter.run(batch)
    differing = [c.name for c, a, b in zip(grid, naive_ids, batch_ids) if a != b]
    sweep_tokens = sum(len(ids) for ids in naive_ids)

    gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
    rows = [
        ("plain generate (1 row)", plain_s, new / plain_s, "1.00", plain_peak),
        ("knockout (image -> query + generated, all layers)", ko_s, new / ko_s, f"{ko_s / plain_s:.2f}", ko_peak),
        ("recording (baseline image-attention rows)", rec_s, new / rec_s, f"{rec_s / plain_s:.2f}", rec_peak),
        (f"sweep, naive ({len(grid)} generations)", naive_s, sweep_tokens / naive_s, "", naive_peak),
        (f"sweep, batched ({len(grid)} rows, shared prefix)", batch_s, sweep_tokens / batch_s, "", batch_peak),
    ]
    print(f"\n{vlm.name}, {shape_name} shape, {dtype_name}, {device_name}; {new} new tokens per row; "
          f"weights + build peak {gib(build_peak)} GiB\n")
    print("| run | seconds | tokens / s | time / plain | peak GPU memory GiB |")
    print("|---|---|---|---|---|")
    for name, seconds, tps, ratio, peak in rows:
        print(f"| {name} | {seconds:.3f} | {tps:.1f} | {ratio} | {gib(peak)} |")
    print(f"\nknockout / plain: {ko_s / plain_s:.2f}x; recording / plain: {rec_s / plain_s:.2f}x; "
          f"batched sweep vs naive: {naive_s / batch_s:.2f}x faster; identical token ids in all "
          f"{len(grid)} configurations: {'yes' if not differing else 'NO (' + ', '.join(differing) + ')'}")
    result = {"model": vlm.name, "shape": shape_name, "dtype": dtype_name, "device": device_name,
              "parameters": n_params, "prompt_tokens": int(inp.spans.prompt_length), "image_tokens": n_image,
              "new_tokens": new, "build_peak_bytes": build_peak,
              "plain_s": plain_s, "plain_tokens_per_s": new / plain_s, "plain_peak_bytes": plain_peak,
              "knockout_s": ko_s, "knockout_over_plain": ko_s / plain_s, "knockout_peak_bytes": ko_peak,
              "recording_s": rec_s, "recording_over_plain": rec_s / plain_s, "recording_peak_bytes": rec_peak,
              "configurations": len(grid), "naive_sweep_s": naive_s, "batched_sweep_s": batch_s,
              "sweep_speedup": naive_s / batch_s, "naive_tokens_per_s": sweep_tokens / naive_s,
              "batched_tokens_per_s": sweep_tokens / batch_s, "naive_peak_bytes": naive_peak,
              "batched_peak_bytes": batch_peak, "identical_ids": not differing, "differing": differing,
              "knockout_changed_output": knocked.token_ids != plain.token_ids,
              "recording_same_output": recorded.token_ids == plain.token_ids}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
