"""The invariants vlmnb's numbers rest on, as checks any model can be put through.

Every experiment reads attention through vlmnb's swapped attention function and blocks it with
knockouts. These checks show, on a given model, that doing so changes nothing it should not:

========================  ==========================================================================
``own_generate``          no knockout: the model's own greedy ``generate``, token for token
``own_forward``           an empty knockout reproduces the model's own forward logits
``from_layer``            ``from_layer(l)`` leaves the hidden states entering layers <= l bit-identical
``pixel_independence``    blocking image -> (query, generated) in every layer makes the text
                          independent of the pixels (and blocking image -> generated alone does not)
``cache_agreement``       cached, uncached and teacher-forced runs agree: ids, logits, recordings
``eager_fractions``       recorded attention fractions equal an eager run's ``output_attentions``
``left_padding``          a left-padded batch equals single runs
``batched_rows``          shared-prefix and early-stopped sweep rows equal single runs
``compression``           a compressed context keeping 100% of the tokens reproduces the full logits
``geometry``              a painted square changes exactly the image tokens whose boxes cover it
========================  ==========================================================================

:func:`check` runs them and returns one :class:`Outcome` per check; the test suite runs them on
a tiny model of every registered family, and the book's "Supported models" page reports them.
The checks need a model whose vision encoder can be made local (``geometry``) and whose
decoder has an eager attention implementation (``eager_fractions``); where one cannot, the
outcome says ``n/a`` and why.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlmnb.core.progress import progress_bar
from vlmnb.engine import batched
from vlmnb.engine.compress import describe
from vlmnb.engine.knockout import Knockout, from_layer
from vlmnb.engine.record import Record
from vlmnb.engine.vlm import VLM

NEW_TOKENS = 8


class InvariantBroken(AssertionError):
    """A check found the model (or vlmnb) breaking an invariant; the message says where."""


class NotApplicable(Exception):
    """A check cannot run on this model (no eager attention, no separable vision layers)."""


@dataclass(frozen=True)
class Outcome:
    """The result of one check: ``status`` is ``"pass"``, ``"fail"`` or ``"n/a"``."""

    name: str
    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def noise_image(seed: int, size: tuple[int, int] = (56, 40)) -> np.ndarray:
    """A ``size`` (width, height) RGB picture of uniform noise, the same for the same seed."""
    width, height = size
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def require(condition, message: str) -> None:
    """Raise :class:`InvariantBroken` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvariantBroken(message)


def _torch():
    import torch

    return torch


def _greedy_config(vlm, **settings):
    """The model's generation config with greedy decoding and ``settings`` (passing them as
    keyword arguments beside a config is deprecated in transformers)."""
    config = copy.deepcopy(vlm.model.generation_config)
    config.do_sample = False
    for key, value in settings.items():
        setattr(config, key, value)
    return config


# ----------------------------------------------------------------------------- checks


def own_generate(vlm) -> str:
    torch = _torch()
    inp = vlm.prepare(noise_image(8))
    P = inp.input_ids.shape[1]
    with torch.no_grad():
        own = vlm.model.generate(**vlm.to_device(dict(inp.inputs)),
                                 generation_config=_greedy_config(vlm, max_new_tokens=NEW_TOKENS))
    own_ids = own[0, P:].tolist()  # a batch of one ends at its end-of-sequence id: no padding
    ids = vlm.generate(inp, NEW_TOKENS).token_ids
    require(ids == own_ids and ids, f"vlmnb generated {ids}, the model's generate {own_ids}")
    recorded = vlm.generate(inp, NEW_TOKENS, knockout=Knockout(src={0: []}, dst="query"), record=Record())
    require(recorded.token_ids == own_ids, f"recording an empty knockout generated {recorded.token_ids}, "
                                           f"the model's generate {own_ids}")
    return f"{len(ids)} tokens identical"


def own_forward(vlm) -> str:
    torch = _torch()
    inp = vlm.prepare(noise_image(1))
    with torch.no_grad():
        own = vlm.model(**vlm.to_device(dict(inp.inputs))).logits
    empty = vlm.forward(inp, knockout=Knockout(src={0: []}, dst="query"))
    gap = (empty.float() - own.float()).abs().max().item()
    require(gap <= 1e-5, f"an empty knockout moved the logits by {gap:.2e}")
    return f"max |delta logit| {gap:.1e}"


def from_layer_check(vlm) -> str:
    torch = _torch()
    inp = vlm.prepare(noise_image(3))
    last = vlm.num_layers - 1
    inputs = vlm.to_device(dict(inp.inputs))
    with torch.no_grad():
        base = vlm.model(**inputs, output_hidden_states=True).hidden_states
    ko = Knockout("image", ("query", "generated"), from_layer(last))
    with vlm.intervene(knockout=ko, inp=inp), torch.no_grad():
        hidden = vlm.model(**inputs, output_hidden_states=True).hidden_states
    end = int(inp.spans.image[-1]) + 1
    for layer in range(vlm.num_layers + 1):
        if layer <= last:
            require(torch.equal(hidden[layer], base[layer]), f"hidden states entering layer {layer} changed")
        require(torch.equal(hidden[layer][:, :end], base[layer][:, :end]),
                f"the image prefix changed at layer {layer}")
    require(not torch.equal(hidden[-1], base[-1]), f"from_layer({last}) changed nothing")
    return f"layers 0..{last} bit-identical"


def pixel_independence(vlm) -> str:
    a, b = vlm.prepare(noise_image(1)), vlm.prepare(noise_image(2))
    P = a.input_ids.shape[1]
    full = Knockout(src="image", dst=("query", "generated"))
    cont = vlm.generate(a, 5, knockout=full).token_ids
    la, lb = vlm.forward(a, cont, knockout=full), vlm.forward(b, cont, knockout=full)
    gap = (la[0, P - 1:] - lb[0, P - 1:]).abs().max().item()
    require(gap <= 1e-5, f"with the image blocked, two pictures still move the logits by {gap:.2e}")
    require(vlm.generate(b, 5, knockout=full).token_ids == cont, "with the image blocked, another picture "
                                                                 "changed the generated ids")
    gen_only = Knockout(src="image", dst="generated")
    ga, gb = vlm.forward(a, cont, knockout=gen_only), vlm.forward(b, cont, knockout=gen_only)
    control = (ga[0, P:] - gb[0, P:]).abs().max().item()
    require(control > 1e-6, "blocking image -> generated alone already hides the pixels: the check would be "
                            "vacuous (the query carries no image information)")
    return f"blocked: max |delta| {gap:.1e}; control {control:.1e}"


def cache_agreement(vlm) -> str:
    a = vlm.prepare(noise_image(1))
    P = a.input_ids.shape[1]
    ko = Knockout(src="image", dst=("query", "generated"))
    rec = Record(fractions=True, image_rows=True)
    cached = vlm.generate(a, 5, knockout=ko, record=rec)
    uncached = vlm.generate(a, 5, knockout=ko, record=rec, use_cache=False)
    logits, forced = vlm.forward(a, cached.token_ids, knockout=ko, record=rec)
    cont = cached.token_ids
    require(uncached.token_ids == cont, f"uncached ids {uncached.token_ids} != cached {cont}")
    forced_ids = logits[0, P - 1:P - 1 + len(cont)].argmax(-1).tolist()
    require(forced_ids == cont, f"teacher-forced argmax {forced_ids} != generated {cont}")
    gap = 0.0
    for other in (uncached.recording, forced):
        for field in ("fractions", "image_rows"):
            gap = max(gap, float(np.abs(getattr(other, field) - getattr(cached.recording, field)).max()))
    require(gap <= 1e-5, f"recordings of cached / uncached / forced runs differ by {gap:.2e}")
    fractions = cached.recording.fractions
    require(np.all(fractions[:, :, 1] == 0), "attention reached the blocked image")
    require(np.allclose(fractions.sum(-1), 1.0, atol=1e-5), "recorded fractions do not sum to one")
    return f"recordings agree within {gap:.1e}"


def eager_fractions(vlm) -> str:
    torch = _torch()
    inp = vlm.prepare(noise_image(3))
    P = inp.input_ids.shape[1]
    inputs = vlm.to_device(dict(inp.inputs))
    eager = copy.deepcopy(vlm.model)
    # the copy's text decoder (found by its name in the model) runs eager attention; the vision
    # encoder keeps its own (a config of the checkpoint's own code may name no text sub-config)
    decoder = next(name for name, module in vlm.model.named_modules() if module is vlm.decoder)
    try:
        eager.get_submodule(decoder).set_attn_implementation("eager")
    except (ValueError, NotImplementedError) as exc:
        raise NotApplicable(f"no eager attention: {exc}") from None
    with torch.no_grad():
        ref = eager.generate(**inputs, generation_config=_greedy_config(
            vlm, max_new_tokens=4, output_attentions=True, return_dict_in_generate=True))
    if not ref.attentions or ref.attentions[0][0] is None:
        raise NotApplicable("the eager run returns no attention weights")
    out = vlm.generate(inp, 4, record=Record(fractions=True, image_rows=True))
    ref_ids = ref.sequences[0, P:].tolist()
    require(out.token_ids == ref_ids[:len(out.token_ids)], f"eager ids {ref_ids} != vlmnb's {out.token_ids}")
    labels = np.full(P + len(ref.attentions), 3)
    labels[inp.spans.system], labels[inp.spans.image], labels[inp.spans.query] = 0, 1, 2
    gap = 0.0
    for step, per_layer in enumerate(ref.attentions[:len(out.token_ids)]):
        rows = np.stack([a[0, :, -1].float().mean(0).cpu().numpy() for a in per_layer])
        kv = rows.shape[1]
        expected = np.stack([rows[:, labels[:kv] == s].sum(1) for s in range(4)], axis=-1)
        gap = max(gap, float(np.abs(out.recording.fractions[:, step] - expected).max()),
                  float(np.abs(out.recording.image_rows[:, step] - rows[:, inp.spans.image]).max()))
    require(gap <= 1e-5, f"recorded fractions differ from eager output_attentions by {gap:.2e}")
    return f"max |delta| {gap:.1e}"


def left_padding(vlm) -> str:
    inputs = [vlm.prepare(noise_image(4), "describe the image"),
              vlm.prepare(noise_image(5), "what is in this picture ? describe the scene in detail")]
    require(inputs[0].input_ids.shape[1] != inputs[1].input_ids.shape[1], "the two prompts have one length")
    ko = Knockout("image", "generated", from_layer(1))
    rec = Record()
    single = [vlm.generate(x, 4, knockout=ko, record=rec) for x in inputs]
    batch = vlm.generate(inputs, 4, knockout=ko, record=rec)
    gap = 0.0
    for s, b in zip(single, batch):
        require(s.token_ids == b.token_ids, f"batched ids {b.token_ids} != single {s.token_ids}")
        gap = max(gap, float(np.abs(s.recording.fractions - b.recording.fractions).max()))
    require(gap <= 1e-4, f"batched recordings differ from single runs by {gap:.2e}")
    return f"fractions within {gap:.1e}"


def sweep_rows(vlm) -> list:
    """Knockout rows like a sweep's: none, image -> generated / query / both, per layer window and
    from each layer, query -> generated."""
    rows = [None]
    for dst in ("generated", "query", ("query", "generated")):
        rows.append(Knockout("image", dst))
        rows += [Knockout("image", dst, [layer]) for layer in range(vlm.num_layers)]
        rows += [Knockout("image", dst, from_layer(layer)) for layer in range(1, vlm.num_layers)]
    rows.append(Knockout("query", "generated"))
    return rows


def _single_runs(vlm, inp, rows, new):
    return [vlm.generate(inp, max_new_tokens=new, knockout=k or None).token_ids for k in rows]


def split_eos(vlm, inp, rows, new):
    """Make the model's end-of-sequence id one that some knockout ``rows`` produce early and others
    late or never (the caller restores ``generation_config.eos_token_id``)."""
    config = vlm.model.generation_config
    config.eos_token_id = None
    counts: dict[int, int] = {}
    for ids in _single_runs(vlm, inp, rows, new):
        for token in set(ids[1:-1]):
            counts[token] = counts.get(token, 0) + 1
    if counts:
        config.eos_token_id = min(counts, key=lambda t: (abs(counts[t] - len(rows) / 2), t))


def batched_rows(vlm) -> str:
    inp = vlm.prepare(noise_image(1), "describe the image")
    rows = sweep_rows(vlm)
    spec = Record(fractions=False, image_rows=True)
    outs = batched.generate_rows(vlm, inp, rows, 6, record=spec, record_rows=[0])
    expected = _single_runs(vlm, inp, rows, 6)
    require([o.token_ids for o in outs] == expected, "shared-prefix rows differ from single runs")
    alone = vlm.generate(inp, max_new_tokens=6, record=spec).recording.image_rows
    require(np.allclose(outs[0].recording.image_rows, alone, atol=1e-6), "the recorded baseline row differs")
    saved = vlm.model.generation_config.eos_token_id
    try:
        split_eos(vlm, inp, rows, NEW_TOKENS)
        expected = _single_runs(vlm, inp, rows, NEW_TOKENS)
        got = batched.generate_rows(vlm, inp, rows, NEW_TOKENS, record=spec, record_rows=[0])
        plain = batched.generate_rows(vlm, inp, [None] * 3, NEW_TOKENS)
    finally:
        vlm.model.generation_config.eos_token_id = saved
    require([g.token_ids for g in got] == expected, "early-stopped rows differ from single runs")
    require(all(g.token_ids == expected[0] for g in plain), "plain rows differ from the single run")
    lengths = sorted({len(ids) for ids in expected})
    return f"{len(rows)} rows; lengths {lengths[0]}..{lengths[-1]}"


def compression(vlm) -> str:
    ip = describe(vlm, noise_image(9), max_new_tokens=4)
    ctx = ip.compress(k=1.0)
    require(ctx.num_tokens == ip.prompt_length, f"k=100% kept {ctx.num_tokens} of {ip.prompt_length} tokens")
    ids = ctx.question_ids("is there a dog?")
    logits, generated = ctx.run(ids, max_new_tokens=4, stop_at_eos=False)
    full = vlm.forward(ip.prepared, continuation_ids=ids + generated)
    P, n = ip.prompt_length, len(ids)
    gap = (logits[0].float() - full[0, P:P + n].float()).abs().max().item()
    require(gap <= 1e-4, f"the full compressed context moved the question's logits by {gap:.2e}")
    expected = full[0, P + n - 1:P + n - 1 + len(generated)].argmax(-1).tolist()
    require(generated == expected and len(generated) == 4, f"decoded {generated}, the full pass {expected}")
    return f"max |delta logit| {gap:.1e}"


# ----------------------------------------------------------------------------- geometry


def local_vision_copy(model):
    """A copy of ``model`` whose vision encoder's transformer layers are the identity (their
    linear maps zeroed), so that each image feature depends only on its own patches (patch
    embedding, merging, pooling and projection stay); convolutions that merge neighbouring
    positions (GOT-OCR2's stride-2 projector, FastVLM's convolutional encoder) keep only the taps
    over their own stride cell, and squeeze-and-excitation gates are held constant.
    NotApplicable without a layer list or such a convolution."""
    torch = _torch()
    model = copy.deepcopy(model)
    # (Video-LLaVA has two encoders, ``image_tower`` and ``video_tower``)
    lists = [module for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and any(w in name for w in ("vision", "visual", "_tower"))
             and name.rsplit(".", 1)[-1] in ("layers", "layer", "blocks")]
    for layers in lists:
        for sub in layers.modules():
            if isinstance(sub, torch.nn.Linear):
                torch.nn.init.zeros_(sub.weight)
                if sub.bias is not None:
                    torch.nn.init.zeros_(sub.bias)
    cut = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            cut += keep_own_cell(module)
        elif type(module).__name__ in ("SEModule", "EffectiveSEModule"):
            # timm's squeeze-and-excitation scales every position by a function of the global mean
            gate = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            torch.nn.init.zeros_(gate.weight)
            if gate.bias is not None:
                torch.nn.init.zeros_(gate.bias)
    if not lists and not cut:
        raise NotApplicable("found no vision encoder layer list or merging convolution to make local")
    return model


def keep_own_cell(conv) -> bool:
    """Zero the taps of convolution ``conv`` outside its stride cell, so that output ``j`` reads
    inputs ``[j * stride, (j + 1) * stride)`` only, and scale the kept taps up so that a random
    convolution keeps its output's variance; a no-op for a patch embedding (kernel = stride).
    Whether any tap was cut."""
    torch = _torch()
    dims = len(conv.kernel_size)
    padding = conv.padding
    if isinstance(padding, str):  # "valid", or "same" (stride 1)
        padding = tuple(0 if padding == "valid" else (k - 1) // 2 for k in conv.kernel_size)
    mask = torch.ones(conv.kernel_size, dtype=torch.bool)
    for d, (k, s, p) in enumerate(zip(conv.kernel_size, conv.stride, padding)):
        taps = torch.arange(k)
        shape = [1] * dims
        shape[d] = k
        mask &= ((taps >= p) & (taps < p + s)).reshape(shape)
    scale = (mask.numel() / mask.sum()) ** 0.5
    with torch.no_grad():
        conv.weight.mul_(mask.to(conv.weight.dtype) * scale.to(conv.weight.dtype))
    return not bool(mask.all())


def image_embeddings(vlm, prepared) -> np.ndarray:
    """The input embeddings the text decoder receives at the image-span positions."""
    torch = _torch()
    captured = {}

    def hook(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach().float().cpu().clone()

    handle = vlm.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.model(**vlm.to_device(dict(prepared.inputs)))
    finally:
        handle.remove()
    return captured["embeds"][0, prepared.spans.image].numpy()


def painted_square(vlm, size=(56, 40), rect=(4, 4, 40, 16)) -> tuple[int, int]:
    """Paint ``rect`` of a flat ``size`` picture: the image tokens whose boxes cover the paint
    must change, those well away from it must not (``vlm``'s vision layers must be local, see
    :func:`local_vision_copy`), and structure tokens never. Returns how many tokens cover the
    paint and how many lie well away from it (both checked); raises InvariantBroken otherwise."""
    from PIL import Image

    W, H = size
    base = np.full((H, W, 3), 120, dtype=np.uint8)
    painted = base.copy()
    x0, y0, x1, y1 = rect
    painted[y0:y1, x0:x1] = (250, 10, 30)
    a, b = vlm.prepare(Image.fromarray(base)), vlm.prepare(Image.fromarray(painted))
    require(np.array_equal(a.spans.image, b.spans.image), "painting moved the image span")
    change = np.abs(image_embeddings(vlm, a) - image_embeddings(vlm, b)).max(axis=1)
    changed = change > 1e-5
    changed_clearly = change > 0.05 * change.max()  # resampling kernels ring a few pixels beyond
    g = a.geometry
    boxes, has = g.boxes, g.has_box
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for v in g.views:  # a whole-view token (a learned query pooling the picture): its share of the view
        if v.whole_view:
            w[v.token_indices] = (v.region[2] - v.region[0]) / v.cols
            h[v.token_indices] = (v.region[3] - v.region[1]) / v.rows
    with np.errstate(invalid="ignore"):  # a quarter-token margin for the resampling filters
        overlap_x = np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)
        overlap_y = np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)
        covers = has & (overlap_x > w / 4) & (overlap_y > h / 4)
        far = has & ((overlap_x < -w / 4) | (overlap_y < -h / 4))
    require(covers.sum() > 0 and far.sum() > 0, "the painted square covers no token or every token")
    require(changed[covers].all(), f"tokens covering the paint did not change: {np.flatnonzero(covers & ~changed)}")
    require(not changed_clearly[far].any(), f"tokens away from the paint changed: {np.flatnonzero(far & changed_clearly)}")
    require(not changed[~has].any(), "structure tokens changed with the pixels")
    return int(covers.sum()), int(far.sum())


def geometry(vlm) -> str:
    local = VLM(local_vision_copy(vlm.model), vlm.processor, name=vlm.name, family=vlm.family)
    covering, distant = painted_square(local)
    return f"{covering} covering tokens changed, {distant} distant ones did not"


# ----------------------------------------------------------------------------- registry of checks


@dataclass(frozen=True)
class Invariant:
    """One check: ``run(vlm)`` returns a short measurement or raises InvariantBroken / NotApplicable."""

    name: str
    statement: str
    run: Callable


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("own_generate", "no knockout = the model's own generate, token for token", own_generate),
    Invariant("own_forward", "an empty knockout = the model's own forward logits", own_forward),
    Invariant("from_layer", "from_layer(l) leaves earlier layers bit-identical", from_layer_check),
    Invariant("pixel_independence", "image blocked from query and generated: text independent of the pixels",
              pixel_independence),
    Invariant("cache_agreement", "cached, uncached and teacher-forced runs agree", cache_agreement),
    Invariant("eager_fractions", "recorded fractions = eager output_attentions within 1e-5", eager_fractions),
    Invariant("left_padding", "a left-padded batch equals single runs", left_padding),
    Invariant("batched_rows", "shared-prefix and early-stopped sweep rows equal single runs", batched_rows),
    Invariant("compression", "a 100% compressed context reproduces the full-context logits", compression),
    Invariant("geometry", "a painted square changes exactly the tokens whose boxes cover it", geometry),
)
NAMES: tuple[str, ...] = tuple(i.name for i in INVARIANTS)


def get(name: str) -> Invariant:
    """The invariant called ``name``; ValueError naming the known ones otherwise."""
    for invariant in INVARIANTS:
        if invariant.name == name:
            return invariant
    raise ValueError(f"unknown invariant {name!r}; known: {', '.join(NAMES)}")


def check(vlm, names=None, progress: bool = False) -> list[Outcome]:
    """Run the invariants ``names`` (default: all) on ``vlm``; one :class:`Outcome` each.

    A broken invariant is an outcome ``"fail"`` with its message, not an exception; errors
    other than InvariantBroken / NotApplicable propagate (they are bugs, not findings).
    """
    chosen = [get(n) for n in (names or NAMES)]
    outcomes = []
    for invariant in progress_bar(chosen, desc=f"invariants of {vlm.name}", disable=not progress):
        try:
            outcomes.append(Outcome(invariant.name, "pass", invariant.run(vlm)))
        except InvariantBroken as exc:
            outcomes.append(Outcome(invariant.name, "fail", str(exc)))
        except NotApplicable as exc:
            outcomes.append(Outcome(invariant.name, "n/a", str(exc)))
    return outcomes
