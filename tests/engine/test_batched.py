"""Batched shared-prefix sweeps give exactly the per-configuration results (tiny LLaVA and Qwen2-VL)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmnb.engine import batched, invariants  # noqa: E402
from vlmnb.experiments import sweep  # noqa: E402
from vlmnb.engine import tiny  # noqa: E402
from vlmnb.engine.knockout import Knockout, from_layer  # noqa: E402
from vlmnb.engine.record import Record  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402
from vlmnb.data.store import ResultStore  # noqa: E402

FAMILIES = ["llava", "qwen2_vl"]
NEW = 8



@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = tiny.build(request.param)
    return VLM(model, processor, name=f"tiny-{request.param}")


def _image(seed):
    return (np.random.default_rng(seed).random((40, 56, 3)) * 255).astype(np.uint8)


def _samples(n=2):
    return [SimpleNamespace(image_id=f"img{i}", image=_image(i)) for i in range(n)]


def _configs(vlm):
    grid = sweep.knockout_configs(vlm.num_layers, stride=1, window=(1, 1))
    return grid + sweep.topk_configs([0.25, 0.5])[1:]


def _vision_calls(vlm):
    """A list that grows by one per image the vision encoder encodes."""
    inner = vlm.model.model
    module = next(getattr(inner, name) for name in ("vision_tower", "visual") if hasattr(inner, name))
    calls = []

    def count(module, args, kwargs, output):  # images encoded in this call
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        calls.extend([1] * int(grid.shape[0] if grid is not None else pixels.shape[0]))

    handle = module.register_forward_hook(count, with_kwargs=True)
    return calls, handle


def test_image_knockouts_leave_the_prefix_unchanged(vlm):
    """src=image knockouts never change system/image positions; dst=generated not the query either."""
    inp = vlm.prepare(_image(0))
    n = batched.prefix_length(inp)
    assert 0 < n < inp.spans.prompt_length and n == int(inp.spans.query[0])
    base = vlm.forward(inp)
    for kind, dst in sweep.KINDS.items():
        ko = Knockout("image", dst)
        assert not batched.blocks_prefix(ko, inp, vlm.num_layers)
        out = vlm.forward(inp, knockout=ko)
        assert torch.allclose(out[0, :n], base[0, :n], atol=1e-5), kind
        after_image = (out[0, n:] - base[0, n:]).abs().max().item()
        if dst == "generated":  # the query positions are the baseline's too
            assert after_image <= 1e-5
        else:
            assert after_image > 1e-3
    assert batched.blocks_prefix(Knockout("system", "image"), inp, vlm.num_layers)


def _reference(vlm, inp, row_knockouts, new=NEW):
    return [vlm.generate(inp, max_new_tokens=new, knockout=k or None).token_ids for k in row_knockouts]


def test_rows_equal_single_runs_with_eos_at_different_steps(vlm):
    """Every sweep configuration (top-k included), rows ending at different lengths."""
    inp = vlm.prepare(_image(3))
    # the sweep's baseline record
    baseline = vlm.generate(inp, max_new_tokens=NEW, record=Record(fractions=False, image_rows=True))
    attention = baseline.recording.image_rows.mean(axis=1)
    configs = _configs(vlm)
    rows = [c.knockouts(attention, inp.spans.image) for c in configs]
    gen_config = vlm.model.generation_config
    saved_eos = gen_config.eos_token_id
    try:
        gen_config.eos_token_id = None
        free = _reference(vlm, inp, rows)
        # an end-of-sequence id that some rows produce early and others late or never
        counts = {}
        for ids in free:
            for t in set(ids[1:-1]):
                counts[t] = counts.get(t, 0) + 1
        gen_config.eos_token_id = min(counts, key=lambda t: (abs(counts[t] - len(rows) / 2), t))
        expected = _reference(vlm, inp, rows)
        assert len({len(ids) for ids in expected}) > 1, "the test needs rows of different lengths"
        calls, handle = _vision_calls(vlm)
        try:
            got = [g.token_ids for g in batched.generate_rows(vlm, inp, rows, NEW)]
        finally:
            handle.remove()
        assert len(calls) == 1  # the image ran once for all rows
        assert got == expected
    finally:
        gen_config.eos_token_id = saved_eos


def test_rows_blocking_the_prefix_fall_back_and_still_match(vlm):
    inp = vlm.prepare(_image(4))
    rows = [None, Knockout("system", "image"), [Knockout("image", "generated", from_layer(1))]]
    calls, handle = _vision_calls(vlm)
    try:
        got = [g.token_ids for g in batched.generate_rows(vlm, inp, rows, NEW)]
    finally:
        handle.remove()
    assert len(calls) == 2  # the shared prefix once, and the row that blocks image queries on its own
    assert got == _reference(vlm, inp, rows)


def _frame(store):
    df = store.frame()
    cols = ["image_id", "config", "metric", "layer", "token"]
    return df.sort_values(cols).reset_index(drop=True)


def test_batched_sweep_equals_sequential_sweep(vlm, tmp_path):
    samples, configs = _samples(2), _configs(vlm)
    with ResultStore(tmp_path / "seq", {"m": vlm.name}) as store:
        seq = _frame_after(sweep.run(vlm, samples, configs, store, max_new_tokens=NEW, progress=False, batch=False))
    calls, handle = _vision_calls(vlm)
    try:
        with ResultStore(tmp_path / "bat", {"m": vlm.name}) as store:
            bat = _frame_after(sweep.run(vlm, samples, configs, store, max_new_tokens=NEW, progress=False,
                                         batch=True, max_batch_rows=4))
    finally:
        handle.remove()
    assert len(calls) == len(samples)
    desc = lambda df: df[df.metric == "description"][["image_id", "config", "text", "value"]].reset_index(drop=True)  # noqa: E731
    assert len(desc(seq)) == len(samples) * len(configs)
    assert desc(bat).equals(desc(seq))
    att = lambda df: df[df.metric == "image_attention"]  # noqa: E731
    assert len(att(bat)) == len(att(seq)) > 0
    assert np.allclose(att(bat).value.to_numpy(), att(seq).value.to_numpy(), atol=1e-6)


def _frame_after(df):
    return df.sort_values(["image_id", "config", "metric", "layer", "token"]).reset_index(drop=True)


class _Interrupt(Exception):
    pass


def test_interrupted_batched_sweep_resumes_without_loss_or_duplicates(vlm, tmp_path):
    samples, configs = _samples(2), _configs(vlm)
    with ResultStore(tmp_path / "whole", {"m": vlm.name}) as store:
        whole = _frame_after(sweep.run(vlm, samples, configs, store, max_new_tokens=NEW, progress=False,
                                       max_batch_rows=3))
    original = batched.generate_rows
    calls = []
    per_image = len(sweep.image_batches(sweep.sorted_configs(configs), 3))

    def failing(*args, **kwargs):  # a crash (Ctrl-C, a killed job) in the middle of the second image
        calls.append(1)
        if len(calls) == per_image + 2:
            raise _Interrupt
        return original(*args, **kwargs)

    batched.generate_rows = failing
    try:
        with pytest.raises(_Interrupt), ResultStore(tmp_path / "cut", {"m": vlm.name}) as store:
            sweep.run(vlm, samples, configs, store, max_new_tokens=NEW, progress=False, max_batch_rows=3)
    finally:
        batched.generate_rows = original
    partial = ResultStore.open(tmp_path / "cut")
    assert 0 < len(partial) < len(samples) * len(configs)
    partial.close()
    with ResultStore(tmp_path / "cut", {"m": vlm.name}) as store:
        resumed = _frame_after(sweep.run(vlm, samples, configs, store, max_new_tokens=NEW, progress=False,
                                         max_batch_rows=3))
        assert len(store) == len(samples) * len(configs)
    keys = ["image_id", "config", "metric", "layer", "token"]
    assert not resumed.duplicated(keys).any()
    pd_cols = ["image_id", "config", "metric", "layer", "token", "text", "value"]
    assert resumed[pd_cols].equals(whole[pd_cols])


def test_image_batches_put_the_baseline_first_and_topk_after_it():
    # baseline first, then the knockouts, then top-k: the order a sweep runs them in
    configs = sweep.knockout_configs(4, stride=1) + sweep.topk_configs([0.1, 0.5])[1:]
    batches = sweep.image_batches(configs, 4)
    assert batches[0][0].kind == "baseline"
    assert all(len(b) <= 4 for b in batches)
    assert [c.name for b in batches for c in b] == [c.name for c in configs]  # each once, baseline first
    first_topk = next(i for i, b in enumerate(batches) if any(c.kind == "top-k" for c in b))
    assert all(c.kind == "top-k" for b in batches[first_topk:] for c in b)
    with pytest.raises(ValueError, match="max_batch_rows"):
        sweep.run(None, [], configs, None, max_batch_rows=0)


def test_preallocated_cache_layer_holds_what_concatenation_holds():
    from transformers import DynamicCache

    torch.manual_seed(0)
    grown, concatenated = DynamicCache(), DynamicCache()
    first = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    grown.update(*first, layer_idx=0)
    concatenated.update(*first, layer_idx=0)
    batched.preallocate(grown, capacity=7)
    assert type(grown.layers[0]).__name__ == "GrowingLayer"
    for n in (1, 1, 3):  # the third step outgrows the reserved room
        step = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        k, v = grown.update(*step, layer_idx=0)
        k2, v2 = concatenated.update(*step, layer_idx=0)
        assert torch.equal(k, k2) and torch.equal(v, v2)
    assert grown.get_seq_length() == concatenated.get_seq_length() == 10


@pytest.mark.parametrize("q_len", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_split_attention_equals_sdpa_on_the_materialized_keys(q_len, masked):
    from types import SimpleNamespace as NS

    torch.manual_seed(q_len)
    rows, heads, kv_heads, prefix_len, suffix_len, d = 5, 4, 2, 7, 6, 8
    query = torch.randn(rows, heads, q_len, d)
    keys = batched.SplitKV(torch.randn(1, kv_heads, prefix_len, d), torch.randn(rows, kv_heads, suffix_len, d))
    values = batched.SplitKV(torch.randn(1, kv_heads, prefix_len, d), torch.randn(rows, kv_heads, suffix_len, d))
    kv = prefix_len + suffix_len
    q_start = kv - q_len
    causal = torch.arange(kv)[None, :] <= torch.arange(q_start, kv)[:, None]
    mask = causal.expand(rows, 1, q_len, kv).clone()
    if masked:  # knock out some prefix keys in some rows (as a knockout of image -> query would)
        mask[1, :, :, 2:5] = False
        mask[3, :, :, 0] = False
    module = NS(scaling=d ** -0.5, is_causal=True)
    out, weights = batched.split_attention(module, query, keys, values, mask if masked else None, q_start,
                                           return_weights=True)
    k_full = keys.materialize().repeat_interleave(heads // kv_heads, dim=1)
    v_full = values.materialize().repeat_interleave(heads // kv_heads, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(query, k_full, v_full, attn_mask=mask)
    assert out.shape == (rows, q_len, heads, d)
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-5)
    scores = (query @ k_full.transpose(-1, -2)) * d ** -0.5
    reference = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).mean(1)
    assert torch.allclose(weights, reference, atol=1e-6)
    if masked:
        assert float(weights[1, :, 2:5].abs().max()) == 0.0


def test_shared_cache_keeps_one_copy_of_the_prefix():
    from transformers import DynamicCache

    torch.manual_seed(0)
    prefix = DynamicCache()
    pk, pv = torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4)
    prefix.update(pk, pv, layer_idx=0)
    cache = batched.shared_cache(prefix, rows=3, capacity=2)
    layer = cache.layers[0]
    assert layer.prefix_keys.data_ptr() == prefix.layers[0].keys.data_ptr()  # shared, not expanded
    assert cache.get_seq_length() == 9
    plain = DynamicCache()
    plain.update(pk.expand(3, -1, -1, -1).clone(), pv.expand(3, -1, -1, -1).clone(), layer_idx=0)
    for n in (2, 1, 4):  # the last step outgrows the reserved room
        step = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        k, v = cache.update(*step, layer_idx=0)
        k2, v2 = plain.update(*step, layer_idx=0)
        assert isinstance(k, batched.SplitKV) and k.shape == k2.shape
        assert torch.equal(k.materialize(), k2) and torch.equal(v.materialize(), v2)
    assert cache.get_seq_length() == plain.get_seq_length() == 16
    assert prefix.get_seq_length() == 9  # the shared prefix itself is never written


def test_record_rows_records_only_those_rows(vlm):
    inp = vlm.prepare(_image(5), prompt="describe the image")
    knockouts = [None, Knockout("image", "generated", layers=from_layer(1))]
    spec = Record(fractions=True, image_rows=True)
    both = vlm.generate_batch([inp, inp], max_new_tokens=4, record=spec, row_knockouts=knockouts)
    one = vlm.generate_batch([inp, inp], max_new_tokens=4, record=spec, row_knockouts=knockouts, record_rows=[1])
    assert one[0].recording is None and one[0].token_ids == both[0].token_ids
    assert np.allclose(one[1].recording.fractions, both[1].recording.fractions, atol=1e-6)
    assert np.allclose(one[1].recording.image_rows, both[1].recording.image_rows, atol=1e-6)
    with pytest.raises(ValueError, match="record_rows"):
        vlm.generate_batch([inp, inp], max_new_tokens=2, record=spec, row_knockouts=knockouts, record_rows=[2])


def test_early_stop_drops_finished_rows_and_keeps_outputs(vlm):
    """Rows that end leave the batch (later steps run fewer rows); ids and the recorded baseline
    row equal the single runs and the no-early-stop batch."""
    inp = vlm.prepare(_image(3))
    configs = [c for c in _configs(vlm) if c.kind != "top-k"]
    rows = [c.knockouts(None, inp.spans.image) for c in configs]
    spec = Record(fractions=False, image_rows=True)
    saved_eos = vlm.model.generation_config.eos_token_id
    sizes = []
    handle = vlm.decoder.register_forward_pre_hook(
        lambda m, a, k: sizes.append(int((k.get("inputs_embeds") if k.get("inputs_embeds") is not None
                                          else k["input_ids"]).shape[0])), with_kwargs=True)
    try:
        invariants.split_eos(vlm, inp, rows, NEW)
        expected = _reference(vlm, inp, rows)
        lengths = [len(ids) for ids in expected]
        assert len(set(lengths)) > 1
        sizes.clear()
        early = batched.generate_rows(vlm, inp, rows, NEW, record=spec, record_rows=[0], early_stop=True)
        early_sizes = list(sizes)
        late = batched.generate_rows(vlm, inp, rows, NEW, record=spec, record_rows=[0], early_stop=False)
        alone = vlm.generate(inp, max_new_tokens=NEW, record=spec)
    finally:
        handle.remove()
        vlm.model.generation_config.eos_token_id = saved_eos
    assert [g.token_ids for g in early] == expected == [g.token_ids for g in late]
    assert [g.text for g in early] == [g.text for g in late]
    assert early[0].recording.image_rows.shape == alone.recording.image_rows.shape
    assert np.allclose(early[0].recording.image_rows, alone.recording.image_rows, atol=1e-6)
    assert all(g.recording is None for g in early[1:])
    # decoding steps (after the prefix and the query tokens): the batch shrinks as rows end
    steps = early_sizes[-max(lengths):]
    assert steps[0] == len(rows) and steps == sorted(steps, reverse=True) and steps[-1] < len(rows)
    # every running row (and the recorded one) is in the batch; ended rows leave within a few steps
    still_running = [sum(1 for i, n in enumerate(lengths) if n > s or i == 0) for s in range(max(lengths))]
    assert all(size >= running for size, running in zip(steps, still_running))
    assert steps[-1] <= still_running[-1] + max(1, len(rows) // 4)


def test_early_stop_is_used_only_for_plain_greedy(vlm):
    inp = vlm.prepare(_image(2))
    assert batched.greedy_setup(vlm, 10, {}) is not None
    assert batched.greedy_setup(vlm, 10, {"do_sample": False, "use_cache": True}) is not None
    assert batched.greedy_setup(vlm, 10, {"repetition_penalty": 1.3}) is None
    calls = []
    original = vlm.generate_batch
    vlm.generate_batch = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        got = batched.generate_rows(vlm, inp, [None, Knockout("image", "generated")], 4, repetition_penalty=1.3)
    finally:
        del vlm.generate_batch
    assert calls == [1]  # generate() decoded (options the loop does not reproduce)
    assert got[0].token_ids == vlm.generate(inp, max_new_tokens=4, repetition_penalty=1.3).token_ids


def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message given without a CUDA device")
def test_gpu_check_without_cuda_says_so_in_one_line(capsys):
    assert _gpu_check().main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no CUDA device" in err and "--device cpu --tiny" in err


@pytest.mark.slow
def test_gpu_check_runs_its_code_path_on_the_cpu(tmp_path, capsys):
    import json

    out = tmp_path / "check.json"
    assert _gpu_check().main(["--device", "cpu", "--tiny", "--new-tokens", "3", "--repeats", "1",
                              "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["configurations"] == 28 and result["image_tokens"] == 576
    assert result["identical_ids"] and result["recording_same_output"]
    assert result["knockout_over_plain"] > 0 and result["batched_tokens_per_s"] > 0
    assert "knockout / plain" in capsys.readouterr().out
