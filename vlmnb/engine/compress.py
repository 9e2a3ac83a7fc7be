"""Image re-prompting: answer new questions from a compressed context (paper Sec. 5, Fig. 10).

The model sees the image once, with the prompt "describe the image". While it describes, the
engine records, per decoder layer, how much attention the generated tokens give each image
token (averaged over heads and generated tokens, the paper's ranking). The *compressed
context* then keeps, per layer, only the keys and values of

* ``"query+topk"``: the prompt's text tokens plus that layer's top-k fraction of image tokens;
* ``"query"``: the prompt's text tokens only;
* ``"topk"``: that layer's top-k image tokens only.

"The prompt's text tokens" are every prompt token that is not in the image span: the
template's tokens before the image (BOS, system prompt, role tokens) and the query after it.
The paper counts its "query" the same way as far as its token counts tell (60 tokens on
InternVL2, whose template has a long system prompt).

New questions are appended as a follow-up chat turn and attend to the kept keys of each
layer plus, causally, to each other. Nothing is recomputed: kept keys hold their original
rotary positions (they are cached after the rotation), and the new tokens take the positions
that follow the original prompt (for Qwen2-VL's 3-D positions: the text positions after the
image, as the model itself continues them). The vision tower never runs again.

The generated description itself is *not* part of the context (Fig. 10 keeps the query and
the image tokens); it is kept as text in :attr:`CompressedContext.description` (the input of
the describe-to-LLM baseline).

Mechanism: per-layer KV lengths differ from layer to layer, which the model's own mask
builder cannot express, so during :meth:`CompressedContext.ask` the text decoder attends
through vlmnb's attention function registered under ``"vlmnb_compressed"`` (the same swap and
restore as interventions, :class:`~vlmnb.engine.attention.AttentionSwap`), which hands each layer
to the ask's state. It builds each layer's mask from that layer's key and query lengths
(and the original positions, for sliding-window layers) and attends exactly like transformers'
own implementation (:func:`~vlmnb.engine.attention.stock_attention`).
"""
from __future__ import annotations

import json
import os
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlmnb.engine import families
from vlmnb.engine.attention import AttentionSwap, stock_attention
from vlmnb.engine.record import Record
from vlmnb.engine.spans import render_prompt
from vlmnb.engine.topk import topk_dropped

KEEP_MODES = ("query+topk", "query", "topk")
ATTENTION_NAME = "vlmnb_compressed"
FORMAT_VERSION = 1
_SENTINEL = "VLMNBANSWERSENTINEL"


# ============================================================================ attention
@dataclass
class _AskState:
    """What the attention function needs to know during one ask (shared by all layers)."""

    positions: list[Any]          # per layer: original positions of the kept keys (torch, long)
    new_positions: Any = None     # 1-D sequence positions of every new token so far (torch, long)

    def attend(self, layer, module, query, key, value, attention_mask, **kwargs):
        """Attention over a layer's kept keys plus the new tokens (causal among themselves).

        The model still builds one mask for layer 0's lengths; it is ignored here.
        """
        import torch

        q_len, kv_len = query.shape[2], key.shape[2]
        kept = self.positions[layer]
        n_new = kv_len - int(kept.shape[0])
        if n_new < q_len:
            raise RuntimeError(f"layer {layer}: the cache holds {kv_len} keys but {kept.shape[0]} kept + "
                               f"{q_len} new were expected; was the context modified?")
        window = getattr(module, "sliding_window", None)
        mask = None
        if q_len > 1 or window:
            new = self.new_positions[-n_new:]
            key_pos = torch.cat([kept.to(query.device), new.to(query.device)])
            q_pos = new[-q_len:].to(query.device)
            mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device)
            # among the new tokens: causal
            mask[:, kv_len - n_new:] = key_pos[None, kv_len - n_new:] <= q_pos[:, None]
            if window:
                mask &= key_pos[None, :] > q_pos[:, None] - int(window)
            mask = mask[None, None]
        kwargs.pop("is_causal", None)
        return stock_attention(module, query, key, value, mask, is_causal=False, **kwargs)


@contextmanager
def _compressed_attention(vlm, state: _AskState) -> Iterator[None]:
    """Select the compressed-context attention for the text decoder; restore everything after."""
    if vlm.active is not None:
        raise RuntimeError("ask() cannot run inside vlm.intervene(); leave the intervention context first")
    with AttentionSwap(vlm, ATTENTION_NAME, state):
        yield


# ============================================================================ follow-up turns
def followup_text(processor, prompt: str, question: str, family: str) -> str:
    """The text a chat template writes after the first turn's generation prompt for a new
    user turn ``question``: end of the (absent) answer, the user turn, the generation prompt.

    Without a chat template (or one that does not render a second turn): ``"\\n" + question``.
    """
    first = render_prompt(processor, prompt, family)
    template = getattr(processor, "chat_template", None)
    if template and _SENTINEL not in question:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ]
        try:
            both = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render two turns: use the fallback
            both = ""
        head, sep, tail = both.partition(_SENTINEL)
        if sep and head.rstrip().startswith(first.rstrip()) and question in tail:
            return tail
    return "\n" + question


def followup_ids(vlm, prompt: str, question: str) -> list[int]:
    """Token ids of the follow-up turn for ``question`` (see :func:`followup_text`)."""
    text = followup_text(vlm.processor, prompt, question, vlm.family)
    ids = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the follow-up turn for {question!r} tokenizes to nothing")
    return [int(i) for i in ids]


# ============================================================================ the image pass
@dataclass
class ImagePass:
    """The one pass over the image that every compressed context is cut from.

    Attributes:
        prepared: the model input (image + prompt), with spans.
        description: the text generated for the prompt.
        image_attention: (n_layers, n_image) head- and token-averaged attention of the
            generated tokens to each image token (columns follow ``prepared.spans.image``).
        keys, values: per layer, the full prompt's cached keys / values (1, kv_heads, L, d).
        rope_delta: for Qwen2-VL-style 3-D positions, the offset the model adds to text
            positions after the image; None for 1-D positions.
    """

    vlm: Any
    prepared: Any
    description: str
    description_ids: list[int]
    image_attention: np.ndarray
    keys: list[Any]
    values: list[Any]
    rope_delta: int | None = None

    @property
    def prompt_length(self) -> int:
        return int(self.prepared.spans.prompt_length)

    @property
    def nbytes(self) -> int:
        """Bytes of the full prompt's KV cache (what the naive baseline holds per question)."""
        return int(sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                       for k, v in zip(self.keys, self.values)))

    def kept_positions(self, k: float, keep: str = "query+topk") -> list[np.ndarray]:
        """Per layer, the sorted absolute prompt positions a context with ``k`` and ``keep`` keeps."""
        check_keep(k, keep)
        spans = self.prepared.spans
        image = np.asarray(spans.image)
        text = np.setdiff1d(np.arange(self.prompt_length), image)
        dropped = topk_dropped(self.image_attention, image, k) if keep != "query" else {}
        out = []
        for layer in range(len(self.keys)):
            parts = []
            if keep in ("query+topk", "query"):
                parts.append(text)
            if keep in ("query+topk", "topk"):
                parts.append(np.setdiff1d(image, dropped.get(layer, np.zeros(0, dtype=np.int64))))
            out.append(np.sort(np.concatenate(parts)).astype(np.int64))
        return out

    def compress(self, k: float = 0.05, keep: str = "query+topk") -> "CompressedContext":
        """The compressed context that keeps ``keep`` with a top-``k`` fraction of image tokens."""
        import torch

        positions = self.kept_positions(k, keep)
        keys, values = [], []
        for pos, key, value in zip(positions, self.keys, self.values):
            index = torch.as_tensor(pos, device=key.device)
            keys.append(key.index_select(2, index).contiguous())
            values.append(value.index_select(2, index).contiguous())
        n_image = len(self.prepared.spans.image)
        return CompressedContext(
            vlm=self.vlm, keys=keys, values=values, positions=positions, next_position=self.prompt_length,
            rope_delta=self.rope_delta, keep=keep, k=float(k), prompt=self.prepared.prompt,
            description=self.description, n_image_tokens=n_image, full_prompt_length=self.prompt_length)


def check_keep(k: float, keep: str) -> None:
    """ValueError unless ``keep`` is one of :data:`KEEP_MODES` and ``k`` a fraction in (0, 1]."""
    if keep not in KEEP_MODES:
        raise ValueError(f"keep={keep!r}: use one of {KEEP_MODES}")
    if keep != "query" and not (isinstance(k, (int, float)) and 0 < k <= 1):
        raise ValueError(f"k={k!r}: the fraction of image tokens to keep must be in (0, 1], e.g. 0.05 for 5%")


def _check_family(vlm) -> None:
    if vlm.family not in families.REGISTRY:
        raise NotImplementedError(f"compressed contexts are not supported for family {vlm.family!r}; "
                                  f"supported: {', '.join(families.NAMES)}")


def describe(vlm, image, prompt: str = "describe the image", max_new_tokens: int = 64) -> ImagePass:
    """Run the image pass once: generate for ``prompt`` while recording image attention, then
    cache the prompt's keys and values (one extra forward over the prompt, no generation).

    ``image``: a PIL image, a path, an array, or an already prepared input (``vlm.prepare``).
    """
    import torch
    from transformers import DynamicCache

    _check_family(vlm)
    inp = image if hasattr(image, "spans") and hasattr(image, "inputs") else vlm.prepare(image, prompt=prompt)
    gen = vlm.generate(inp, max_new_tokens=max_new_tokens, record=Record(fractions=False, image_rows=True))
    attention = gen.recording.image_rows.mean(axis=1)  # (layers, n_image): mean over generated tokens
    inputs = inp.to(vlm.device, vlm.model.dtype).inputs
    # an empty full-attention cache: sliding-window cache layers would drop the early keys
    cache = DynamicCache()
    with torch.no_grad():
        vlm.model(**inputs, **{vlm.cache_argument: cache}, use_cache=True)
    rope_delta = None
    if families.get(vlm.family).mrope:
        deltas = getattr(vlm.inner_model, "rope_deltas", None)
        if deltas is None:
            raise NotImplementedError(f"{vlm.family}: the model did not expose its rope_deltas after the prompt "
                                      "pass, so the positions of new tokens are unknown")
        rope_delta = int(torch.as_tensor(deltas).reshape(-1)[0])
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    if len(keys) != vlm.num_layers or any(k.shape[2] != inp.spans.prompt_length for k in keys):
        raise NotImplementedError(f"{vlm.family}: the prompt cache does not hold one key per prompt token in "
                                  "every layer; compressed contexts need a plain (full) KV cache")
    return ImagePass(vlm=vlm, prepared=inp, description=gen.text, description_ids=list(gen.token_ids),
                     image_attention=np.asarray(attention, dtype=np.float64), keys=keys, values=values,
                     rope_delta=rope_delta)


def compress(vlm, image, k: float = 0.05, prompt: str = "describe the image", keep: str = "query+topk",
             max_new_tokens: int = 64) -> "CompressedContext":
    """Show ``vlm`` the image once and keep only a compressed context to ask questions with.

    Args:
        vlm: a loaded :class:`~vlmnb.engine.vlm.VLM`.
        image: a PIL image, a path or an array (or a prepared input).
        k: per layer, the fraction of image tokens to keep, ranked by the attention the
            generated description gave them (0.05 = the paper's 5%; at least one token).
        prompt: the first (and only) prompt that sees the image.
        keep: ``"query+topk"`` (the paper's compressed context), ``"query"`` or ``"topk"``.
        max_new_tokens: length limit of the description used for the ranking.

    Example::

        ctx = vlmnb.engine.compress(vlm, "photo.jpg", k=0.05)
        ctx.ask("Is there a dog in the image? Please answer yes or no.")
    """
    check_keep(k, keep)
    return describe(vlm, image, prompt=prompt, max_new_tokens=max_new_tokens).compress(k=k, keep=keep)


# ============================================================================ the context
@dataclass
class CompressedContext:
    """Kept keys and values of one image pass; ask it new questions with :meth:`ask`.

    Attributes:
        keys, values: per layer, (1, kv_heads, n_kept, head_dim) tensors.
        positions: per layer, the original absolute positions of the kept tokens.
        next_position: position of the first new token (the original prompt's length).
        rope_delta: Qwen2-VL-style 3-D position offset for new text tokens, else None.
        keep, k, prompt, description: how the context was made, and the description text.
    """

    vlm: Any
    keys: list[Any]
    values: list[Any]
    positions: list[np.ndarray]
    next_position: int
    rope_delta: int | None = None
    keep: str = "query+topk"
    k: float = 0.05
    prompt: str = "describe the image"
    description: str = ""
    n_image_tokens: int = 0
    full_prompt_length: int = 0
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"CompressedContext(keep={self.keep!r}, k={self.k:g}, tokens={self.num_tokens} of "
                f"{self.full_prompt_length}, {self.nbytes / 1e6:.2f} MB)")

    # -------------------------------------------------------------- size
    @property
    def tokens_per_layer(self) -> np.ndarray:
        """Number of kept tokens in each layer."""
        return np.array([len(p) for p in self.positions], dtype=np.int64)

    @property
    def num_tokens(self) -> int:
        """Kept tokens per layer (the same in every layer; the mean, rounded, if not)."""
        counts = self.tokens_per_layer
        return int(counts[0]) if (counts == counts[0]).all() else int(round(float(counts.mean())))

    @property
    def nbytes(self) -> int:
        """Memory held by the kept keys and values, in bytes."""
        return int(sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                       for k, v in zip(self.keys, self.values)))

    # -------------------------------------------------------------- asking
    def _position_ids(self, start: int, n: int):
        import torch

        pos = torch.arange(start, start + n, device=self.vlm.device) + families.get(self.vlm.family).position_offset
        if self.rope_delta is not None:
            return (pos + self.rope_delta).view(1, 1, -1).expand(3, 1, -1)
        return pos.view(1, -1)

    def _check_vlm(self) -> None:
        if self.vlm is None:
            raise RuntimeError("this context has no model attached; use CompressedContext.load(path, vlm)")
        if len(self.keys) != self.vlm.num_layers:
            raise ValueError(f"the context has {len(self.keys)} layers but the model has {self.vlm.num_layers}")

    def run(self, token_ids: Sequence[int], max_new_tokens: int = 0, stop_at_eos: bool = True):
        """Feed ``token_ids`` after the kept context, then generate greedily.

        Returns ``(logits, generated_ids)``: logits (1, len(token_ids), vocab) of the fed tokens
        (position ``i`` predicts token ``i + 1``, the last one the first generated token) and
        up to ``max_new_tokens`` generated ids (an end-of-sequence id, if produced, included).
        """
        import torch
        from transformers import DynamicCache

        self._check_vlm()
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("nothing to feed: token_ids is empty")
        device = self.vlm.device
        cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in zip(self.keys, self.values)])
        state = _AskState(positions=[torch.as_tensor(p, dtype=torch.long, device=device) for p in self.positions])
        eos = _eos_ids(self.vlm)
        cache_kw = self.vlm.cache_argument
        generated: list[int] = []
        step_ids, start = ids, self.next_position
        all_new = torch.arange(self.next_position, self.next_position + len(ids), device=device)
        with _compressed_attention(self.vlm, state), torch.no_grad():
            state.new_positions = all_new
            out = self.vlm.model(input_ids=torch.tensor([step_ids], device=device), **{cache_kw: cache},
                                 position_ids=self._position_ids(start, len(step_ids)), use_cache=True)
            logits = out.logits
            next_logits = logits[:, -1]
            position = self.next_position + len(ids)
            for _ in range(max_new_tokens):
                token = int(next_logits.argmax(-1)[0])
                generated.append(token)
                if stop_at_eos and token in eos:
                    break
                if len(generated) == max_new_tokens:
                    break
                state.new_positions = torch.arange(self.next_position, position + 1, device=device)
                out = self.vlm.model(input_ids=torch.tensor([[token]], device=device), **{cache_kw: cache},
                                     position_ids=self._position_ids(position, 1), use_cache=True)
                next_logits = out.logits[:, -1]
                position += 1
        return logits, generated

    def question_ids(self, question: str) -> list[int]:
        """Token ids of ``question`` as a follow-up chat turn after the context's prompt."""
        self._check_vlm()
        return followup_ids(self.vlm, self.prompt, question)

    def ask(self, question: str, max_new_tokens: int = 16) -> str:
        """Answer ``question`` (greedy) from the compressed context alone."""
        _, generated = self.run(self.question_ids(question), max_new_tokens=max_new_tokens)
        return self.vlm.tokenizer.decode(generated, skip_special_tokens=True).strip()

    def logits(self, question: str, answer_ids: Sequence[int] = ()) -> Any:
        """Teacher-forced logits (1, n, vocab) of the question turn followed by ``answer_ids``."""
        logits, _ = self.run(self.question_ids(question) + [int(t) for t in answer_ids])
        return logits

    # -------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the context to folder ``path``: ``context.safetensors`` (tensors) + ``context.json``."""
        import torch
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer, (k, v, p) in enumerate(zip(self.keys, self.values, self.positions)):
            tensors[f"keys.{layer}"] = k.detach().contiguous().cpu()
            tensors[f"values.{layer}"] = v.detach().contiguous().cpu()
            tensors[f"positions.{layer}"] = torch.as_tensor(np.asarray(p, dtype=np.int64))
        save_file(tensors, str(path / "context.safetensors"))
        info = {
            "format": "vlmnb.CompressedContext", "version": FORMAT_VERSION,
            "model": _fingerprint(self.vlm) if self.vlm is not None else self.meta.get("model"),
            "num_layers": len(self.keys), "next_position": int(self.next_position),
            "rope_delta": self.rope_delta, "keep": self.keep, "k": self.k, "prompt": self.prompt,
            "description": self.description, "n_image_tokens": int(self.n_image_tokens),
            "full_prompt_length": int(self.full_prompt_length), "dtype": str(self.keys[0].dtype),
        }
        (path / "context.json").write_text(json.dumps(info, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, vlm) -> "CompressedContext":
        """Read a context written by :meth:`save` and attach it to ``vlm`` (the same model)."""
        from safetensors.torch import load_file

        path = Path(path)
        info_path, tensor_path = path / "context.json", path / "context.safetensors"
        if not info_path.is_file() or not tensor_path.is_file():
            raise FileNotFoundError(f"{path} holds no saved context (context.json + context.safetensors); "
                                    "write one with ctx.save(path)")
        info = json.loads(info_path.read_text())
        if info.get("format") != "vlmnb.CompressedContext" or info.get("version") != FORMAT_VERSION:
            raise ValueError(f"{info_path} is not a version-{FORMAT_VERSION} vlmnb compressed context")
        expected = _fingerprint(vlm)
        saved = dict(info.get("model") or {})
        if {k: v for k, v in saved.items() if k != "name"} != {k: v for k, v in expected.items() if k != "name"}:
            raise ValueError(f"the context in {path} was made with a different model ({info.get('model')}); "
                             f"this model is {expected}")
        tensors = load_file(str(tensor_path))
        n = int(info["num_layers"])
        dtype = vlm.model.dtype
        keys = [tensors[f"keys.{i}"].to(vlm.device, dtype) for i in range(n)]
        values = [tensors[f"values.{i}"].to(vlm.device, dtype) for i in range(n)]
        positions = [tensors[f"positions.{i}"].numpy().astype(np.int64) for i in range(n)]
        return cls(vlm=vlm, keys=keys, values=values, positions=positions, next_position=int(info["next_position"]),
                   rope_delta=info.get("rope_delta"), keep=info["keep"], k=float(info["k"]), prompt=info["prompt"],
                   description=info.get("description", ""), n_image_tokens=int(info.get("n_image_tokens", 0)),
                   full_prompt_length=int(info.get("full_prompt_length", 0)), meta={"model": info.get("model")})


def _fingerprint(vlm) -> dict:
    """What must match between the model a context was made with and the one it is used with."""
    cfg = vlm.text_config
    return {"name": vlm.name, "family": vlm.family, "num_layers": int(vlm.num_layers),
            "hidden_size": int(getattr(cfg, "hidden_size", 0) or 0),
            "num_key_value_heads": int(getattr(cfg, "num_key_value_heads", 0) or 0),
            "vocab_size": int(getattr(cfg, "vocab_size", 0) or 0)}


def _eos_ids(vlm) -> set[int]:
    eos = vlm.model.generation_config.eos_token_id
    if eos is None:
        eos = getattr(vlm.tokenizer, "eos_token_id", None)
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])


class _CallableModule(types.ModuleType):
    """``vlmnb.engine.compress`` names both this module and its main function. Importing a submodule
    binds the module to the package attribute, so the module itself forwards calls to
    :func:`compress`: ``vlmnb.engine.compress(vlm, image, k=0.05)`` works whichever way it was bound."""

    def __call__(self, *args, **kwargs) -> CompressedContext:
        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
