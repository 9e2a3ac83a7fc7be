"""Masks for any image from a detail's words: a text-conditioned detector, then Segment Anything.

The paper made its pseudo ground-truth masks with text-grounded Segment Anything and checked
them by hand. Here the same two steps run behind the :class:`vlmnb.data.masks.MaskSource`
interface:

1. a text-conditioned detector from transformers (OWLv2 by default, Grounding DINO also works)
   finds the best box for the detail's name;
2. Segment Anything (the ``segment-anything`` package) turns that box into a mask; of its three
   proposals the one with the highest predicted IoU is kept.

Quality checks reject a detail when the detector's best score is below ``min_box_score``, when
SAM's predicted IoU is below ``min_mask_score``, or when less than ``min_inside`` of the mask
lies inside the (slightly enlarged) box. The masks are written to ``cache_dir`` as PNG files
beside a JSON note with the box and scores, so a person can look at them and list the bad
ones in a reject list (:class:`vlmnb.data.masks.RejectList`) instead of editing code.

Real checkpoints: SAM's ``sam_vit_h_4b8939.pth`` (or vit_l / vit_b) downloaded from the
official links in :data:`SAM_CHECKPOINTS`, loaded with ``segment_anything.sam_model_registry``;
the detector by hub id, from the local Hugging Face cache when offline. :func:`tiny_sam` and
:func:`tiny_owlv2` build small randomly initialised versions of the same classes so the whole
path runs offline in tests.

:func:`mask_source` picks a mask source by name: this one, or those of :mod:`vlmnb.data.masks`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from vlmnb.core.errors import MissingExtra
from vlmnb.core.paths import cache_dir as cache_root
from vlmnb.data.masks import CocoMasks, DetailMask, FirstOf, ToyMasks
from vlmnb.engine.loading import ModelNotAvailable, hub_offline

__all__ = ["SAM_CHECKPOINTS", "DETECTORS", "load_sam", "tiny_sam", "Detector", "tiny_owlv2",
           "TextPromptedMasks", "mask_source"]

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
#: model type -> official checkpoint file name (download from ``_SAM_URL + name``)
SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
#: short names of the text-conditioned detectors -> hub ids
DETECTORS = {
    "owlv2": "google/owlv2-base-patch16-ensemble",
    "grounding-dino": "IDEA-Research/grounding-dino-base",
}


# ============================================================================ Segment Anything
def segment_anything_module():
    """``segment_anything``, or a one-line :class:`MissingExtra` naming the ``sam`` extra (the
    package and torchvision, which it imports, are optional: see README, "In your own environment")."""
    try:
        import segment_anything
    except ImportError as exc:
        raise MissingExtra(f"Segment Anything masks need the optional 'sam' extra ({exc.name or 'segment_anything'} "
                           "is not installed): pip install 'vlmnb[sam]', after the torchvision that matches "
                           "your torch") from None
    return segment_anything


def load_sam(checkpoint: str | os.PathLike | None = None, model_type: str = "vit_h", device: str | None = None):
    """Segment Anything from an official checkpoint file, through ``sam_model_registry``.

    ``checkpoint``: the ``.pth`` file; default: ``$VLMNB_SAM_CHECKPOINT``, else
    ``<cache>/sam/<official file name>`` (see :func:`vlmnb.core.paths.cache_dir`).
    """
    sam_model_registry = segment_anything_module().sam_model_registry

    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"unknown SAM model type {model_type!r}; use one of {sorted(SAM_CHECKPOINTS)}")
    if checkpoint is None:
        env = os.environ.get("VLMNB_SAM_CHECKPOINT")
        if env:
            checkpoint = env
        else:
            checkpoint = cache_root() / "sam" / SAM_CHECKPOINTS[model_type]
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"Segment Anything checkpoint {path} not found; download it once with\n"
            f"  wget {_SAM_URL}{SAM_CHECKPOINTS[model_type]} -O {path}\n"
            f"or point VLMNB_SAM_CHECKPOINT at the file")
    sam = sam_model_registry[model_type](checkpoint=str(path))
    return sam.to(device or _default_device()).eval()


def tiny_sam(seed: int = 0, image_size: int = 64, dim: int = 32):
    """A small randomly initialised Segment Anything model built from the package's own classes
    (image encoder, prompt encoder, mask decoder), for tests and offline runs."""
    from functools import partial

    import torch

    segment_anything_module()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    patch = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=image_size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=2.0,
                out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(image_size // patch, image_size // patch),
                input_image_size=(image_size, image_size), mask_in_chans=8),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2 * dim,
                                                                        num_heads=2),
                transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=dim),
        )
    return sam.eval()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ============================================================================ detector
class Detector:
    """A text-conditioned object detector from transformers (OWLv2 or Grounding DINO).

    ``detect(image, phrase)`` returns ``[(score, (x0, y0, x1, y1)), ...]`` in original-image
    pixels, best first.
    """

    def __init__(self, model, processor, name: str = "detector"):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.kind = "grounding-dino" if "grounding" in model.config.model_type else "owlv2"

    @classmethod
    def load(cls, name_or_path: str = "owlv2", device: str | None = None) -> "Detector":
        """Load by short name (:data:`DETECTORS`), hub id or local folder. Offline, only the local
        cache is used and a missing model raises :class:`vlmnb.engine.loading.ModelNotAvailable`."""
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        source = DETECTORS.get(name_or_path, name_or_path)
        local = Path(str(source)).expanduser().exists()
        try:
            kwargs = dict(local_files_only=True)
            model = AutoModelForZeroShotObjectDetection.from_pretrained(source, **kwargs)
            processor = AutoProcessor.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            if local:
                raise
            if hub_offline():
                raise ModelNotAvailable(
                    f"detector {source!r} is not in the local cache and the hub is unreachable; download it "
                    f"first with `hf download {source}` on a machine with network access") from exc
            model = AutoModelForZeroShotObjectDetection.from_pretrained(source)
            processor = AutoProcessor.from_pretrained(source)
        return cls(model.to(device or _default_device()), processor, name=str(source))

    def detect(self, image, phrase: str) -> list[tuple[float, tuple[float, float, float, float]]]:
        """Boxes for ``phrase`` in ``image`` (PIL): ``[(score, (x0, y0, x1, y1)), ...]``, best first."""
        import torch

        image = image.convert("RGB")
        W, H = image.size
        device = next(self.model.parameters()).device
        if self.kind == "grounding-dino":
            text = phrase.strip().lower().rstrip(".") + "."
            inputs = self.processor(images=image, text=text, return_tensors="pt").to(device)
            with torch.no_grad():
                outputs = self.model(**inputs)
            res = self.processor.post_process_grounded_object_detection(
                outputs, inputs.input_ids, threshold=0.0, text_threshold=0.0, target_sizes=[(H, W)])[0]
        else:
            inputs = self.processor(text=[[phrase]], images=image, return_tensors="pt")
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
            with torch.no_grad():
                outputs = self.model(**inputs)
            # OWLv2 pads the image to a square at the bottom/right: boxes scale by the longer side
            res = self.processor.post_process_grounded_object_detection(outputs, threshold=0.0,
                                                                        target_sizes=[(H, W)])[0]
        scores = res["scores"].float().cpu().numpy()
        boxes = res["boxes"].float().cpu().numpy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, W)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, H)
        order = np.argsort(-scores, kind="stable")
        return [(float(scores[i]), tuple(float(v) for v in boxes[i])) for i in order
                if boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]]


def tiny_owlv2(seed: int = 0, image_size: int = 64):
    """A small randomly initialised OWLv2 detector and its processor (offline; for tests)."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import TokenizersBackend

    # a word-level vocabulary is enough for a random model (and needs no training)
    words = ["<unk>", "<|startoftext|>", "<|endoftext|>", "a", "the", "of", "red", "green", "blue", "yellow",
             "purple", "circle", "square", "triangle", "man", "dog", "cat", "car", "shoes", "bagel", "phone"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = TokenizersBackend(tokenizer_object=core, unk_token="<unk>", bos_token="<|startoftext|>",
                            eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="right")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=16)
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
        # the heads come out of the constructor at unit scale, which saturates every random box
        # at an image corner; small weights give boxes spread over the image
        for head in (model.box_head, model.class_head, model.objectness_head):
            for layer in head.modules():
                if isinstance(layer, torch.nn.Linear):
                    torch.nn.init.normal_(layer.weight, std=0.02)
                    torch.nn.init.zeros_(layer.bias)
    tok.model_max_length = 16
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}),
                               tokenizer=tok)
    return model, processor


# ============================================================================ the mask source
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "detail"


class TextPromptedMasks:
    """Mask source for any image: detector box for the detail's name, then SAM inside it.

    Args:
        detector: a :class:`Detector`.
        sam: a Segment Anything model (:func:`load_sam`, :func:`tiny_sam`).
        min_box_score: reject when the detector's best box scores lower.
        min_mask_score: reject when SAM's predicted IoU of the kept mask is lower.
        min_inside: reject when less than this share of the mask lies inside the box (enlarged
            by 10% of its size on each side).
        cache_dir: where masks are written (PNG + JSON per detail) and read back on reruns.
    """

    name = "text-prompted-sam"

    def __init__(self, detector: Detector, sam, min_box_score: float = 0.1, min_mask_score: float = 0.7,
                 min_inside: float = 0.8, cache_dir: str | os.PathLike | None = None):
        SamPredictor = segment_anything_module().SamPredictor

        self.detector = detector
        self.predictor = SamPredictor(sam)
        self.min_box_score = float(min_box_score)
        self.min_mask_score = float(min_mask_score)
        self.min_inside = float(min_inside)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._image_key = None

    @classmethod
    def load(cls, detector: str = "owlv2", sam_checkpoint: str | os.PathLike | None = None,
             sam_type: str = "vit_h", device: str | None = None, **kwargs) -> "TextPromptedMasks":
        """The real models: a detector by name / hub id and SAM from its official checkpoint."""
        return cls(Detector.load(detector, device=device), load_sam(sam_checkpoint, sam_type, device=device), **kwargs)

    def _paths(self, sample, detail) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        folder = self.cache_dir / _slug(str(sample.image_id))
        stem = _slug(detail.name)
        return folder / f"{stem}.png", folder / f"{stem}.json"

    def segment(self, image, phrase: str) -> tuple[np.ndarray | None, dict]:
        """``(mask or None, note)`` for one phrase in one image (no cache, no filters but the box)."""
        found = self.detector.detect(image, phrase)
        if not found:
            return None, {"reason": "the detector found no box"}
        box_score, box = found[0]
        rgb = np.asarray(image.convert("RGB"))
        key = (id(image), rgb.shape, int(rgb[::7, ::7].sum()))
        if key != self._image_key:
            self.predictor.set_image(rgb)
            self._image_key = key
        masks, scores, _ = self.predictor.predict(box=np.asarray(box, dtype=float), multimask_output=True)
        best = int(np.argmax(scores))
        mask = np.asarray(masks[best], dtype=bool)
        x0, y0, x1, y1 = box
        mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        H, W = mask.shape
        inside = np.zeros_like(mask)
        inside[int(max(0, np.floor(y0 - my))):int(min(H, np.ceil(y1 + my))),
               int(max(0, np.floor(x0 - mx))):int(min(W, np.ceil(x1 + mx)))] = True
        share = float((mask & inside).sum() / mask.sum()) if mask.any() else 0.0
        return mask, {"box": [float(v) for v in box], "box_score": box_score, "mask_score": float(scores[best]),
                      "inside_box": share}

    def _verdict(self, mask, note: dict) -> str | None:
        if mask is None:
            return note.get("reason", "no mask")
        if not mask.any():
            return "SAM returned an empty mask"
        if note["box_score"] < self.min_box_score:
            return f"detector score {note['box_score']:.2f} < {self.min_box_score}"
        if note["mask_score"] < self.min_mask_score:
            return f"SAM predicted IoU {note['mask_score']:.2f} < {self.min_mask_score}"
        if note["inside_box"] < self.min_inside:
            return f"only {note['inside_box']:.0%} of the mask lies inside the detected box"
        return None

    def __call__(self, sample, detail) -> DetailMask:
        """The detail's mask (cached in ``cache_dir`` when set), or why there is none."""
        from PIL import Image

        paths = self._paths(sample, detail)
        if paths is not None and paths[1].is_file():
            note = json.loads(paths[1].read_text())
            mask = np.asarray(Image.open(paths[0])) > 0 if paths[0].is_file() else None
        else:
            mask, note = self.segment(sample.image, detail.name)
            if paths is not None:
                paths[0].parent.mkdir(parents=True, exist_ok=True)
                if mask is not None:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(paths[0])
                paths[1].write_text(json.dumps({"detail": detail.name, **note}, indent=1))
        reason = self._verdict(mask, note)
        score = float(note.get("mask_score", float("nan")))
        if reason is not None:
            return DetailMask(None, self.name, reason, score)
        return DetailMask(mask, self.name, f"box score {note['box_score']:.2f}, SAM IoU {score:.2f}", score)


# ============================================================================ choosing a source
def mask_source(kind: str | Any = "auto", images: Any = None, **kwargs):
    """A mask source by name: ``"toy"``, ``"coco"``, ``"sam"`` (text-prompted detector + SAM;
    ``kwargs`` such as ``cache_dir`` go to :meth:`TextPromptedMasks.load` and are
    not used by the other sources), ``"coco+sam"`` (COCO masks where the detail names a COCO
    category, the text-prompted source otherwise, see :class:`vlmnb.data.masks.FirstOf`) or ``"auto"``: the exact
    masks for ``images="toy"``, COCO masks for ``"coco"``, else the text-prompted source. An
    object with ``__call__(sample, detail)`` is returned as it is."""
    if not isinstance(kind, str):
        if not callable(kind):
            raise TypeError(f"{kind!r} is not a mask source: it needs __call__(sample, detail)")
        return kind
    if kind == "auto":
        kind = {"toy": "toy", "coco": "coco"}.get(images if isinstance(images, str) else "", "sam")
    if kind == "toy":
        return ToyMasks()
    if kind == "coco":
        return CocoMasks()
    if kind in ("sam", "coco+sam"):
        sam = TextPromptedMasks.load(**kwargs)
        return sam if kind == "sam" else FirstOf(CocoMasks(), sam)
    raise ValueError(f"unknown mask source {kind!r}; use 'auto', 'toy', 'coco', 'sam' or 'coco+sam'")
