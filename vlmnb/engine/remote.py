"""Checkpoints that ship their own modelling code (``trust_remote_code``), run like transformers' own.

Some checkpoints (OpenGVLab/InternVL2-*) bring a model class written for transformers 4: a vision
encoder and projector of their own around one of transformers' causal language models. Three
things keep the engine from running it as it is: its ``__init__`` never calls ``post_init()``,
which transformers 5's ``from_pretrained`` relies on; its config does not answer
``get_text_config()`` with the language model's config, which generation asks for (cache,
vocabulary); and its ``forward`` / ``generate`` are not the image-text-to-text interface the
engine calls (a training forward that needs per-tile flags; a ``generate`` that feeds the image
through the first step only, so an uncached run loses it).

:func:`completed_class` derives, from the checkpoint's own class, a class that adds what is
missing: the same modules, weights and code (the vision encoder, projector and language model are
the checkpoint's, nothing of it is changed), an ``__init__`` that completes the config
(:func:`complete_config`) and ends with ``post_init()``, and an :class:`ImageTokenModel` interface
on top: ``forward`` embeds the prompt, writes the image features (the family's
:class:`ImageTokenModel`'s ``image_features``) at the image-token positions and calls the language model
with them; ``generate`` is transformers' own over that ``forward``. Knockouts, recording and
compressed contexts act on the language model, which dispatches attention through transformers'
``AttentionInterface`` like every other family's decoder.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings

from vlmnb.core.errors import MissingExtra, OneLineError


class RemoteCodeMissing(OneLineError, FileNotFoundError):
    """The checkpoints' own code that a family's tiny model is built from is not on this machine
    (it is a test fixture beside the repository, not part of the package)."""


class ImageFeaturesMismatch(OneLineError, ValueError):
    """The prompt holds a different number of image tokens than the pictures give features."""


class ImageTokenModel:
    """Mixin: transformers' image-text-to-text interface over a model whose ``language_model`` is a
    transformers causal LM and whose image features go where the prompt holds
    ``config.image_token_id``.

    A family subclasses it and defines ``image_features(pixel_values)``: the ``(pictures, tokens,
    hidden)`` language-model inputs for ``pixel_values`` (one picture per row: tiles, thumbnails),
    in the order the prompt's image tokens take them. :func:`completed_class` puts the subclass in
    front of the checkpoint's class.
    """

    #: generation starts from the prompt's token ids (the checkpoint's class names its pictures)
    main_input_name = "input_ids"
    #: the attribute of the config that holds the language model's config
    text_config_name = "llm_config"

    def get_decoder(self):
        """The text decoder (the module holding the decoder layers)."""
        return self.language_model.get_decoder()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def embed(self, input_ids, pixel_values=None):
        """Input embeddings of ``input_ids`` with the image features at the image-token positions.

        Only ids that hold image tokens need ``pixel_values`` (decoding steps after a cached
        prompt do not), and then all of them: one feature per image token, in order.
        """
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.image_token_id
        n_slots = int(slots.sum())
        if n_slots == 0:
            return embeds
        if pixel_values is None:
            raise ImageFeaturesMismatch(f"the input holds {n_slots} image tokens but no pixel_values")
        features = self.image_features(pixel_values.to(self.dtype))
        features = features.reshape(-1, features.shape[-1])
        if features.shape[0] != n_slots:
            raise ImageFeaturesMismatch(f"the input holds {n_slots} image tokens but its pictures give "
                                        f"{features.shape[0]} image features")
        mask = slots.unsqueeze(-1).to(embeds.device)
        return embeds.masked_scatter(mask, features.to(embeds.device, embeds.dtype))

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, logits_to_keep=0, **kwargs):
        """The language model's output (logits, cache, hidden states, attentions) for the prompt
        ``input_ids`` with the features of ``pixel_values`` at its image tokens. ``cache`` is the
        language model's KV cache (its older name ``past_key_values`` is passed on as well)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        if cache is not None:
            kwargs[_cache_argument(self.language_model)] = cache
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache, logits_to_keep=logits_to_keep,
                                   **kwargs)


def _cache_argument(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


_CONFIGS: dict[tuple[type, str], type] = {}


def complete_config(config, text_config_name: str):
    """``config`` (an instance of the checkpoint's own config class) with transformers 5's
    ``get_text_config()`` answering the language model's config (``config.<text_config_name>``),
    which generation asks for its cache, vocabulary size and token ids. Its class becomes a
    subclass of its own with that one method (same name and module, so it is saved as before)."""
    cls = type(config)
    if getattr(cls, "_vlmnb_text_config", None) == text_config_name:
        return config
    key = (cls, text_config_name)
    if key not in _CONFIGS:
        def get_text_config(self, decoder=None, encoder=None):
            return getattr(self, text_config_name)

        namespace = {"get_text_config": get_text_config, "_vlmnb_text_config": text_config_name,
                     "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        _CONFIGS[key] = type(cls.__name__, (cls,), namespace)
    config.__class__ = _CONFIGS[key]
    return config


_COMPLETED: dict[tuple[type, type], type] = {}


def completed_class(remote_class: type, interface: type) -> type:
    """The checkpoint's class ``remote_class`` completed for the engine (see the module docstring):
    ``interface`` (an :class:`ImageTokenModel` subclass) and transformers' ``GenerationMixin`` in
    front of it, and an ``__init__`` that completes the config (:func:`complete_config`) and ends
    with ``post_init()``.

    The class keeps the checkpoint class's name and module, so ``save_pretrained`` writes the
    checkpoint's own code and ``auto_map`` beside the weights, as the checkpoint itself does.
    """
    from transformers import GenerationMixin

    key = (remote_class, interface)
    if key not in _COMPLETED:
        def __init__(self, config, *args, **kwargs):
            remote_class.__init__(self, complete_config(config, interface.text_config_name), *args, **kwargs)
            if "all_tied_weights_keys" not in self.__dict__:  # (set by post_init, if the code called it)
                self.post_init()

        # (saved like AutoModel saves a class of a checkpoint's own code: the code files beside the weights)
        namespace = {"__init__": __init__, "__module__": remote_class.__module__,
                     "__qualname__": remote_class.__qualname__, "__doc__": remote_class.__doc__,
                     "_auto_class": remote_class._auto_class or "AutoModel"}
        _COMPLETED[key] = type(remote_class.__name__, (interface, GenerationMixin, remote_class), namespace)
    return _COMPLETED[key]


def remote_class(config, source: str | os.PathLike, auto: str = "AutoModel", **hub_kwargs) -> type:
    """The class the checkpoint at ``source`` names for ``auto`` in its config's ``auto_map`` (its
    code is imported from there, as ``trust_remote_code=True`` does)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    reference = (getattr(config, "auto_map", None) or {}).get(auto)
    if reference is None:
        raise ValueError(f"the config of {str(source)!r} names no {auto} class in its auto_map")
    allowed = {k: v for k, v in hub_kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token")}
    try:
        # importing the checkpoint's code prints its own notices ("FlashAttention2 is not installed.")
        # and timm's deprecation of the module path it uses: neither concerns the caller
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
            return get_class_from_dynamic_module(reference, str(source), **allowed)
    except ImportError as exc:  # transformers names the packages the code imports that are missing
        raise MissingExtra(f"{str(source)!r}: {' '.join(str(exc).split())}") from None
