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


def test_soft_capped_layers_attend_like_their_own_eager_attention():
    """SDPA cannot soft-cap attention logits (Gemma 2, PaliGemma 2): such a layer runs its modelling
    module's eager attention, on a boolean mask made additive, and causally when there is no mask;
    the result is bit-identical to what transformers computes eagerly."""
    from transformers import Gemma2Config
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.gemma2 import modeling_gemma2

    config = Gemma2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                          attn_logit_softcapping=2.0, layer_types=["full_attention"], num_hidden_layers=1)
    module = modeling_gemma2.Gemma2Attention(config, layer_idx=0).eval()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 5, 8, generator=g) * 3 for h in (4, 2, 2))
    kwargs = dict(dropout=0.0, scaling=module.scaling, softcap=2.0)
    keep = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    additive = torch.zeros(1, 1, 5, 5).masked_fill(~keep, torch.finfo(torch.float32).min)
    expected, _ = modeling_gemma2.eager_attention_forward(module, q, k, v, additive, **kwargs)
    assert torch.equal(attention.stock_attention(module, q, k, v, keep, **kwargs)[0], expected)
    assert torch.equal(attention.stock_attention(module, q, k, v, None, **kwargs)[0], expected)
    uncapped, _ = modeling_gemma2.eager_attention_forward(module, q, k, v, additive, dropout=0.0, scaling=module.scaling)
    assert (uncapped - expected).abs().max() > 1e-3  # the cap matters here
    with pytest.raises(ValueError, match="softcap"):
        sdpa_attention_forward(module, q, k, v, keep, **kwargs)
