"""The invariant suite: every check of :mod:`vlmnb.engine.invariants` on a tiny random model of
every registered family (vlmnb.engine.tiny), offline. One suite, parametrized over the registry:
a new family file is tested by it as soon as it is registered. Below it, tests that each check
can fail (a check that cannot fail proves nothing) and the geometry at the reference sizes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlmnb  # noqa: E402
from vlmnb.engine import families, invariants, tiny  # noqa: E402
from vlmnb.engine.vlm import VLM  # noqa: E402

FAMILIES = list(families.NAMES)
#: the tiny models: every family, and variants such as InternVL2 with a Qwen2 decoder
MODELS = list(tiny.MODELS)


@pytest.fixture(scope="module", params=MODELS)
def family_vlm(request):
    model, processor = tiny.build(request.param)
    return VLM(model, processor, name=f"tiny-{request.param}")


@pytest.mark.parametrize("name", invariants.NAMES)
def test_invariant_holds_for_every_family(family_vlm, name):
    (outcome,) = invariants.check(family_vlm, [name])
    assert outcome.status == "pass", f"{family_vlm.family}: {outcome.detail}"


def _moe_builders():
    """``build_tiny_moe`` of the family modules that have one (a mixture-of-experts variant whose
    model_type the family's entry also covers)."""
    import importlib

    modules = [importlib.import_module(f"vlmnb.engine.families.{name}") for name in FAMILIES]
    return [pytest.param(m.build_tiny_moe, id=m.FAMILY.name) for m in modules if hasattr(m, "build_tiny_moe")]


@pytest.mark.parametrize("build", _moe_builders())
def test_moe_variants_keep_the_family_invariants(build):
    """A family's mixture-of-experts variant is detected as the family and passes every check."""
    model, processor = build(0, tiny.DEFAULT_VIEW)
    vlm = VLM(model, processor, name="tiny-moe")
    model_type = model.config.model_type
    assert model_type != vlm.family and model_type in families.get(vlm.family).model_types
    broken = [(o.name, o.detail) for o in invariants.check(vlm) if not o.passed]
    assert not broken


# ----------------------------------------------------------------------------- the checks can fail


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny.build("llava")
    return VLM(model, processor, name="tiny-llava")


def test_geometry_check_fails_when_tokens_see_beyond_their_patch(llava):
    """Without making the vision layers local, every image token mixes all patches."""
    with pytest.raises(invariants.InvariantBroken, match="away from the paint"):
        invariants.painted_square(llava)


def test_own_generate_check_fails_when_vlmnb_changes_the_output(llava):
    """A fault injected into vlmnb's side (its generate silently blocks the image) is caught."""
    inp = llava.prepare(invariants.noise_image(8))
    blocking = vlmnb.Knockout("image", ("query", "generated"))
    assert llava.generate(inp, 8, knockout=blocking).token_ids != llava.generate(inp, 8).token_ids
    original = llava.generate
    llava.generate = lambda inp, n, **kw: original(inp, n, **{**kw, "knockout": blocking})
    try:
        (outcome,) = invariants.check(llava, ["own_generate"])
    finally:
        del llava.generate
    assert outcome.status == "fail" and "vlmnb generated" in outcome.detail


def test_pixel_independence_check_fails_when_the_knockout_is_lost(llava):
    """A fault injected into vlmnb's forward (knockouts dropped) lets the pixels through."""
    original = llava.forward
    llava.forward = lambda inp, cont=None, knockout=None, record=None: original(inp, cont, record=record)
    try:
        (outcome,) = invariants.check(llava, ["pixel_independence"])
    finally:
        del llava.forward
    assert outcome.status == "fail" and "two pictures" in outcome.detail


def test_unknown_invariant_is_named():
    with pytest.raises(ValueError, match="unknown invariant 'speed'.*own_generate"):
        invariants.check(None, ["speed"])


# ----------------------------------------------------------------------------- reference sizes


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_painted_region_at_the_reference_sizes(family, built):
    """A random model at the reference checkpoint's image sizes (tiny widths)."""
    model, small = built(family)
    entry = families.get(family)
    config, processor = entry.reference_sizes(model.config, small)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        real_sized = type(model)(config).eval()
    entry.init_random(real_sized)
    vlm = VLM(invariants.local_vision_copy(real_sized), processor, name=f"reference-{family}")
    covering, distant = invariants.painted_square(vlm, (500, 360), (40, 200, 300, 330))
    assert covering > 0 and distant > 0


@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("size,rect", [((96, 96), (60, 8, 92, 40)),
                                       pytest.param((40, 72), (24, 40, 40, 72), marks=pytest.mark.slow)])
def test_painted_region_other_shapes(family, size, rect, built):
    model, processor = built(family)
    vlm = VLM(invariants.local_vision_copy(model), processor, name=f"local-{family}")
    covering, distant = invariants.painted_square(vlm, size, rect)  # raises InvariantBroken if they changed wrongly
    assert covering > 0 and distant > 0


def test_images_are_seeded():
    assert np.array_equal(invariants.noise_image(3), invariants.noise_image(3))
    assert invariants.noise_image(3, (10, 20)).shape == (20, 10, 3)
