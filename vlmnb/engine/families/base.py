"""The registry entry of a model family: everything vlmnb knows about it, in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable


def no_markers(config, processor) -> Iterable[Any]:
    """Families whose image span holds only image tokens (no begin/end markers)."""
    return ()


def image_token_placeholder(processor) -> str:
    """The usual placeholder: the processor's ``image_token``."""
    return processor.image_token


def no_init(model) -> None:
    """Families whose random initialisation lets the image through."""


def placeholder_line(placeholder: str, prompt: str) -> str:
    """The usual prompt without a chat template: the image placeholder on a line of its own, then the text."""
    return f"{placeholder}\n{prompt}"


@dataclass(frozen=True)
class Family:
    """One supported model family (an entry of :data:`vlmnb.engine.families.REGISTRY`).

    Attributes:
        name: the family's name (``vlm.family``), e.g. ``"llava"``.
        geometry: ``(config, processor, image_size, inputs) -> entries``: one entry per image
            feature, in the model's feature order: ``(grid, row, col)`` of a
            :class:`~vlmnb.engine.geometry.Grid`, or None for a feature that sees no patch
            (see :func:`vlmnb.engine.geometry.lay_out`).
        build_tiny: ``(seed, view) -> (model, processor)``: a tiny random model of the family
            whose vision encoder sees ``view x view`` pictures (:mod:`vlmnb.engine.tiny`);
            ``(seed, view, variant)`` for one of ``tiny_variants``.
        model_types: the ``config.model_type`` values of the family (default: ``(name,)``).
        markers: ``(config, processor) -> ids``: the image-structure tokens (begin/end of image)
            that delimit the image span besides the image tokens; None entries are ignored.
        placeholder: ``processor -> str``: the string a prompt must contain for the processor
            to insert the image.
        prefix_sharing: whether rows may continue from one cached image prefix
            (:mod:`vlmnb.engine.batched`; checked for every family by tests/engine/test_batched.py).
        mrope: whether text positions are 3-D (Qwen2-VL's M-RoPE): new tokens after a
            compressed context then take the model's ``rope_deltas`` offset.
        crops: whether the picture is center-cropped to the vision encoder's square (LLaVA-1.5), so
            that pixels near the long sides are seen by no image token.
        hub_ids: example checkpoints on the Hugging Face hub (the book's "Supported models").
        knockout_note: what a knockout means where image tokens attend non-causally (image
            blocks attending both ways, a bidirectional prefix); empty when attention is causal.
        reference_sizes: ``(config, processor) -> (config, processor)``: copies of a tiny
            model's config and processor with the reference checkpoint's image settings (vision
            input size, patch size, tiling limits, tokens per image) and tiny widths; the
            geometry tests run every family at these sizes.
        init_random: ``model -> None``: re-draws weights that transformers initialises so that
            the image is invisible (a zero projection, say) in a randomly initialised model.
        untemplated: ``(placeholder, prompt) -> text``: the prompt a processor without a chat
            template receives (default :func:`placeholder_line`).
        generated_token_type: the ``token_type_ids`` value of tokens after the prompt (generated or
            teacher-forced), as the model's ``generate`` appends it: 0 (text) in most families.
        position_offset: the position id of a sequence's first token (0; PaliGemma counts from 1);
            tokens fed after a compressed context continue from the prompt length plus this.
        load_remote: for checkpoints that ship their own modelling code (loaded only with
            ``trust_remote_code=True``): ``(source, config, **from_pretrained_kwargs) -> (model,
            processor)``, raising a one-line error before any weight is read for a variant the
            engine cannot run; None for families transformers implements.
        tiny_variants: names of further tiny models of the family (another text decoder, say):
            ``build_tiny(seed, view, variant)`` builds them, and the tests run them as well
            (:data:`vlmnb.engine.tiny.MODELS`).
    """

    name: str
    geometry: Callable[..., list]
    build_tiny: Callable[[int, int], tuple]
    model_types: tuple[str, ...] = ()
    markers: Callable[[Any, Any], Iterable[Any]] = no_markers
    placeholder: Callable[[Any], str] = image_token_placeholder
    prefix_sharing: bool = True
    mrope: bool = False
    crops: bool = False
    hub_ids: tuple[str, ...] = ()
    knockout_note: str = ""
    reference_sizes: Callable[[Any, Any], tuple] | None = None
    init_random: Callable[[Any], None] = no_init
    untemplated: Callable[[str, str], str] = placeholder_line
    generated_token_type: int = 0
    position_offset: int = 0
    load_remote: Callable[..., tuple] | None = None
    tiny_variants: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.model_types:
            object.__setattr__(self, "model_types", (self.name,))

    def marker_ids(self, config, processor) -> set[int]:
        """Ids of the image-structure tokens that delimit the image span (never ``<unk>``)."""
        tok = processor.tokenizer
        ids = set(self.markers(config, processor))
        unk = getattr(tok, "unk_token_id", None)
        return {int(i) for i in ids if i is not None and i != unk}

    def image_placeholder(self, processor) -> str:
        """The string a prompt must contain for the processor to insert the image."""
        return self.placeholder(processor)
