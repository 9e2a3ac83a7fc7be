"""Compressed contexts (image re-prompting) on tiny random models: positions, caching,
exclusion, files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmnb.engine import tiny  # noqa: E402
from vlmnb.engine.compress import (ATTENTION_NAME, CompressedContext, compress, describe,  # noqa: E402
                            followup_text)
from vlmnb.engine.knockout import Knockout  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402

QUESTION = "is there a dog?"
TOL = 1e-4



def _image(seed: int = 0):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((48, 48, 3)) * 255).astype("uint8"))


def _vlm(family: str, seed: int = 0, window: int | None = None) -> VLM:
    model, processor = tiny.build(family, seed=seed)
    if window is not None:  # shrink the sliding window below the prompt length
        model.config.get_text_config().sliding_window = window
        for module in model.modules():
            if getattr(module, "sliding_window", None):
                module.sliding_window = window
    return VLM(model, processor, name=f"tiny-{family}")


@pytest.fixture(scope="module")
def llava():
    return _vlm("llava")


@pytest.fixture(scope="module")
def image_pass(llava):
    return describe(llava, _image(), max_new_tokens=6)


# ----------------------------------------------------------------------------- k = 100%
@pytest.mark.parametrize("family, window", [("gemma3", 12)])
def test_full_context_reproduces_full_forward(family, window):
    """k=100% with a sliding window shorter than the prompt (Gemma3's window shrunk to 12 tokens,
    so the question's window cuts into the prompt); every family's plain case is in
    test_invariants.py."""
    vlm = _vlm(family, window=window)
    ip = describe(vlm, _image(1), max_new_tokens=4)
    ctx = ip.compress(k=1.0)
    assert ctx.num_tokens == ip.prompt_length
    ids = ctx.question_ids(QUESTION)
    logits, generated = ctx.run(ids, max_new_tokens=4, stop_at_eos=False)
    full = vlm.forward(ip.prepared, continuation_ids=ids + generated)
    P, n = ip.prompt_length, len(ids)
    assert (logits[0] - full[0, P:P + n]).abs().max().item() <= TOL
    # the greedy tokens (decode steps, one position at a time) follow the full pass's argmax
    expected = full[0, P + n - 1:P + n - 1 + len(generated)].argmax(-1).tolist()
    assert generated == expected and len(generated) == 4


def test_new_tokens_continue_after_the_prompt(llava, image_pass):
    """Shifting the new tokens' positions changes the logits: positions are really used."""
    ctx = image_pass.compress(k=1.0)
    ids = ctx.question_ids(QUESTION)
    right = ctx.run(ids)[0]
    ctx.next_position += 3
    shifted = ctx.run(ids)[0]
    assert (right - shifted).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- what is kept
def test_kept_tokens_per_mode(llava, image_pass):
    spans = image_pass.prepared.spans
    n_image, P = len(spans.image), image_pass.prompt_length
    n_text = P - n_image
    k = 0.25
    n_top = max(1, round(k * n_image))
    sizes = {keep: image_pass.compress(k, keep).num_tokens for keep in ("query+topk", "query", "topk")}
    assert sizes == {"query+topk": n_text + n_top, "query": n_text, "topk": n_top}
    ctx = image_pass.compress(k, "topk")
    for layer, kept in enumerate(ctx.positions):
        # the kept image tokens are that layer's most attended ones
        order = np.argsort(-image_pass.image_attention[layer], kind="stable")[:n_top]
        assert set(kept.tolist()) == set(spans.image[order].tolist())
    # query mode keeps exactly the non-image prompt tokens, in every layer
    q = image_pass.compress(k, "query")
    assert all(set(p.tolist()) == set(range(P)) - set(spans.image.tolist()) for p in q.positions)


def test_nbytes_scale_with_tokens(llava, image_pass):
    ctx = image_pass.compress(0.25)
    assert ctx.nbytes == sum(k.numel() * 4 + v.numel() * 4 for k, v in zip(ctx.keys, ctx.values))
    assert ctx.nbytes * image_pass.prompt_length == image_pass.nbytes * ctx.num_tokens


# ----------------------------------------------------------------------------- exclusion
@pytest.mark.parametrize("keep", ["query+topk", "query", "topk"])
def test_matches_engine_knockout(llava, image_pass, keep):
    """A context equals the full prompt with the engine's Eq.-3 knockout hiding every dropped
    prompt token from the question tokens, layer by layer (an independent implementation)."""
    ctx = image_pass.compress(0.3, keep)
    ids = ctx.question_ids(QUESTION)
    P = image_pass.prompt_length
    dropped = {layer: np.setdiff1d(np.arange(P), kept) for layer, kept in enumerate(ctx.positions)}
    ko = Knockout(src=dropped, dst=np.arange(P, P + len(ids)))
    reference = llava.forward(image_pass.prepared, continuation_ids=ids, knockout=ko)[0, P:]
    plain = llava.forward(image_pass.prepared, continuation_ids=ids)[0, P:]
    ours = ctx.logits(QUESTION)[0]
    assert (ours - reference).abs().max().item() <= TOL
    assert (ours - plain).abs().max().item() > 1e-3  # the dropped tokens did matter


@pytest.mark.parametrize("keep", ["query", "topk"])
def test_answer_ignores_dropped_values(llava, image_pass, keep):
    """Noise written into the dropped tokens' keys and values changes nothing; noise in one
    kept token does."""
    import dataclasses

    ctx = image_pass.compress(0.25, keep)
    base = ctx.logits(QUESTION)
    gen = torch.Generator().manual_seed(0)

    def noisy(positions_per_layer):
        keys = [k.clone() for k in image_pass.keys]
        values = [v.clone() for v in image_pass.values]
        for layer, pos in enumerate(positions_per_layer):
            idx = torch.as_tensor(pos, dtype=torch.long)
            keys[layer][:, :, idx] = torch.randn(keys[layer][:, :, idx].shape, generator=gen) * 5
            values[layer][:, :, idx] = torch.randn(values[layer][:, :, idx].shape, generator=gen) * 5
        return dataclasses.replace(image_pass, keys=keys, values=values)

    P = image_pass.prompt_length
    dropped = [np.setdiff1d(np.arange(P), kept) for kept in ctx.positions]
    same = noisy(dropped).compress(0.25, keep).logits(QUESTION)
    assert torch.equal(same, base)
    one_kept = [kept[:1] for kept in ctx.positions]
    changed = noisy(one_kept).compress(0.25, keep).logits(QUESTION)
    assert (changed - base).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- files
def test_save_load_round_trip(llava, image_pass, tmp_path):
    ctx = image_pass.compress(0.25)
    ctx.save(tmp_path / "ctx")
    assert {p.name for p in (tmp_path / "ctx").iterdir()} == {"context.json", "context.safetensors"}
    back = CompressedContext.load(tmp_path / "ctx", llava)
    assert back.num_tokens == ctx.num_tokens and back.nbytes == ctx.nbytes
    assert (back.keep, back.k, back.prompt, back.description, back.next_position) == \
        (ctx.keep, ctx.k, ctx.prompt, ctx.description, ctx.next_position)
    assert all(np.array_equal(a, b) for a, b in zip(back.positions, ctx.positions))
    assert all(torch.equal(a, b) for a, b in zip(back.keys, ctx.keys))
    assert torch.equal(back.logits(QUESTION), ctx.logits(QUESTION))
    assert back.ask(QUESTION, max_new_tokens=3) == ctx.ask(QUESTION, max_new_tokens=3)


def test_load_rejects_another_model_and_missing_files(llava, image_pass, tmp_path):
    image_pass.compress(0.25).save(tmp_path / "ctx")
    other = _vlm("qwen2_vl")
    with pytest.raises(ValueError, match="different model"):
        CompressedContext.load(tmp_path / "ctx", other)
    with pytest.raises(FileNotFoundError, match="no saved context"):
        CompressedContext.load(tmp_path / "nothing", llava)


# ----------------------------------------------------------------------------- API edges
def test_bad_arguments_and_state_restored(llava, image_pass):
    from transformers import AttentionInterface

    with pytest.raises(ValueError, match="keep="):
        image_pass.compress(0.1, keep="image")
    with pytest.raises(ValueError, match="k="):
        compress(llava, _image(), k=0)
    before = [cfg.__dict__.get("_attn_implementation_internal") for cfg in llava.all_configs()]
    ctx = image_pass.compress(0.25)
    ctx.ask(QUESTION, max_new_tokens=2)
    after = [cfg.__dict__.get("_attn_implementation_internal") for cfg in llava.all_configs()]
    assert before == after and ATTENTION_NAME not in AttentionInterface._global_mapping
    with llava.intervene(knockout=Knockout("image", "generated")):
        with pytest.raises(RuntimeError, match="intervene"):
            ctx.ask(QUESTION)
    assert ATTENTION_NAME not in AttentionInterface._global_mapping


def test_followup_turn_follows_the_chat_template(llava):
    text = followup_text(llava.processor, "describe the image", QUESTION, llava.family)
    assert text.endswith("ASSISTANT:") and QUESTION in text and text.startswith("</s>")

    class NoTemplate:
        chat_template = None
        image_token = "<image>"

    assert followup_text(NoTemplate(), "describe the image", QUESTION, "llava") == "\n" + QUESTION


def test_vlmnb_compress_is_callable_as_the_package_attribute(llava):
    import vlmnb
    import vlmnb.engine.compress as module

    assert callable(vlmnb.engine.compress) and vlmnb.engine.compress.CompressedContext is CompressedContext
    ctx = vlmnb.engine.compress(llava, _image(), k=0.5, keep="topk", max_new_tokens=2)
    assert isinstance(ctx, module.CompressedContext) and ctx.num_tokens == 8
