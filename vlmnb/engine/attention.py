"""The attention function vlmnb registers with transformers, and the one way it is swapped in.

The engine never edits transformers. :class:`AttentionSwap` registers :func:`dispatch` under a
name in transformers' ``AttentionInterface`` (and the standard SDPA mask builder under the same
name in ``AttentionMaskInterface``, without which the model would build no causal or padding
mask), selects that name for the text decoder of a :class:`~vlmnb.engine.vlm.VLM`, and routes
every decoder layer's attention module to a *handler*: an
:class:`~vlmnb.engine.intervention.Intervention` (name ``"vlmnb"``: knockouts and recording) or
a compressed context's per-ask state (``"vlmnb_compressed"``). Leaving the swap restores the
attention implementation of every config exactly (an attribute that was absent is removed
again), the routing table and the registration, also on an exception.

A handler has one method, ``attend(layer, module, query, key, value, attention_mask, **kwargs)``,
returning what a transformers attention function returns: ``(output, weights)``.
"""
from __future__ import annotations

import sys
from typing import Any

#: the name knockouts and recording run under
ATTENTION_NAME = "vlmnb"

_REGISTERED: dict[str, int] = {}  # attention name -> open swaps relying on its registration
# attention module -> (handler, decoder layer index); filled only inside swaps
_HANDLERS: dict[Any, tuple[Any, int]] = {}
_MISSING = object()
_IMPL = "_attn_implementation_internal"  # where a transformers config keeps its attention implementation


def register_attention(name: str, function) -> None:
    """Register ``function`` under ``name`` in transformers' ``AttentionInterface`` (and the
    standard SDPA mask builder under the same name, without which the model builds no causal
    or padding mask); counted, so nested contexts register once."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if _REGISTERED.get(name, 0) == 0:
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sdpa_mask)
    _REGISTERED[name] = _REGISTERED.get(name, 0) + 1


def unregister_attention(name: str) -> None:
    """Undo one :func:`register_attention`; the last one removes the entries again."""
    from transformers import AttentionInterface, AttentionMaskInterface

    _REGISTERED[name] -= 1
    if _REGISTERED[name] == 0:
        del _REGISTERED[name]
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def handlers() -> dict[Any, tuple[Any, int]]:
    """A copy of the routing table: attention module -> (handler, layer) of the open swaps."""
    return dict(_HANDLERS)


def stock_attention(module, query, key, value, attention_mask, **kwargs):
    """What transformers itself computes for one layer: the stock ``"sdpa"`` implementation, or, for
    a layer with attention-logit soft-capping (Gemma 2, which SDPA cannot run and transformers runs
    eagerly), the eager attention of the layer's own modelling module, on the same mask made
    additive as transformers' eager mask builder makes it. Returns ``(output, weights or None)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(f"{type(module).__name__} soft-caps its attention logits but its module has no "
                                  "eager_attention_forward to run that with")
    q_len, kv_len = query.shape[2], key.shape[2]
    mask = attention_mask
    if mask is None and q_len > 1 and getattr(module, "is_causal", True):  # plain causal, the new rows last
        q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
        mask = (torch.arange(kv_len, device=query.device)[None, :] <= q_pos[:, None])[None, None]
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.where(mask, torch.zeros((), device=mask.device, dtype=query.dtype), torch.finfo(query.dtype).min)
    kwargs.pop("is_causal", None)
    return eager(module, query, key, value, mask, **kwargs)


def dispatch(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: the handler of ``module``, or :func:`stock_attention`
    (exactly transformers' own implementation) for a module no open swap covers."""
    entry = _HANDLERS.get(module)
    if entry is None:
        if hasattr(key, "materialize"):  # a shared-prefix cache outside an intervention
            key, value = key.materialize(), value.materialize()
        return stock_attention(module, query, key, value, attention_mask, **kwargs)
    handler, layer = entry
    return handler.attend(layer, module, query, key, value, attention_mask, **kwargs)


class AttentionSwap:
    """Context manager: ``vlm``'s text decoder attends through :func:`dispatch` registered as
    ``name``, every decoder layer's attention module routed to ``handler``.

    Swaps nest (an inner one saves and restores the outer one's state). ``restore()`` may be
    called instead of leaving the ``with`` block; it is idempotent.
    """

    def __init__(self, vlm, name: str, handler):
        self.vlm, self.name, self.handler = vlm, name, handler
        self._saved_impls: list[tuple[Any, Any]] = []
        self._saved_handlers: dict = {}
        self._registered = False

    def __enter__(self) -> "AttentionSwap":
        vlm = self.vlm
        modules = vlm.attention_modules()
        if not vlm.decoder._can_set_attn_implementation():
            raise NotImplementedError(
                f"{type(vlm.decoder).__name__} does not dispatch attention through transformers' "
                "AttentionInterface (remote code?), so knockouts and recording cannot be applied to it")
        register_attention(self.name, dispatch)
        self._registered = True
        try:
            self._saved_impls = [(cfg, cfg.__dict__.get(_IMPL, _MISSING)) for cfg in vlm.all_configs()]
            vlm.decoder.set_attn_implementation(self.name)
            for layer, module in enumerate(modules):
                self._saved_handlers[module] = _HANDLERS.get(module)
                _HANDLERS[module] = (self.handler, layer)
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the routing table, every config's attention implementation and the registration."""
        for module, previous in self._saved_handlers.items():
            if previous is None:
                _HANDLERS.pop(module, None)
            else:
                _HANDLERS[module] = previous
        self._saved_handlers = {}
        for cfg, value in self._saved_impls:
            if value is _MISSING:
                cfg.__dict__.pop(_IMPL, None)
            else:
                cfg.__dict__[_IMPL] = value
        self._saved_impls = []
        if self._registered:
            unregister_attention(self.name)
            self._registered = False
