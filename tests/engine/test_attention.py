"""The one swap/restore context for vlmnb's registered attention (interventions and compressed
contexts both use it): routing, nesting, exact restoration, also on an exception."""
from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface

from vlmnb.engine import attention
from vlmnb.engine.attention import AttentionSwap


class Recorder:
    """A handler that counts its calls and attends like plain SDPA."""

    def __init__(self):
        self.layers = []

    def attend(self, layer, module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self.layers.append(layer)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _impls(vlm):
    return [(id(c), c.__dict__.get("_attn_implementation_internal", "absent")) for c in vlm.all_configs()]


@pytest.fixture(scope="module")
def vlm(tiny_vlm):
    return tiny_vlm(seed=3, layers=2)


def test_swap_routes_every_layer_and_restores_exactly(vlm, make_input):
    inp = make_input()
    inputs = vlm.to_device(dict(inp.inputs))
    before = _impls(vlm)
    with torch.no_grad():
        plain = vlm.model(**inputs).logits
    outer, inner = Recorder(), Recorder()
    with AttentionSwap(vlm, "test_outer", outer):
        assert vlm.text_config._attn_implementation == "test_outer"
        with AttentionSwap(vlm, "test_inner", inner):
            with torch.no_grad():
                routed = vlm.model(**inputs).logits
        assert set(attention.handlers().values()) == {(outer, 0), (outer, 1)}
    assert inner.layers == [0, 1] and outer.layers == []
    assert torch.equal(routed, plain)
    assert _impls(vlm) == before and attention.handlers() == {}
    assert "test_outer" not in AttentionInterface._global_mapping
    with pytest.raises(KeyError):
        with AttentionSwap(vlm, "test_outer", outer):
            raise KeyError("boom")
    assert _impls(vlm) == before and attention.handlers() == {}
    assert "test_outer" not in AttentionInterface._global_mapping
