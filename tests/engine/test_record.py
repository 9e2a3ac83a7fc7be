"""Recording: row convention, trimming at end-of-sequence, helpers and validation."""
from __future__ import annotations

import numpy as np
import pytest

from vlmnb.engine.record import Record, Recording


@pytest.fixture(scope="module")
def vlm(tiny_vlm):
    return tiny_vlm(seed=2)


def test_row_i_is_the_step_that_produced_token_i(vlm, make_input):
    inp = make_input()
    P = inp.input_ids.shape[1]
    out = vlm.generate(inp, 5, record=Record())
    # rows of a teacher-forced forward over the prompt + first k tokens equal the first k rows
    for k in (1, 3):
        _, forced = vlm.forward(inp, out.token_ids[:k], record=Record())
        assert forced.n_steps == k
        np.testing.assert_allclose(forced.fractions, out.recording.fractions[:, :k], atol=1e-5)
    # no continuation: the single row is the last prompt position (it predicts token 0)
    logits, first = vlm.forward(inp, record=Record())
    assert first.n_steps == 1 and logits[0, P - 1].argmax().item() == out.token_ids[0]
    np.testing.assert_allclose(first.fractions[:, 0], out.recording.fractions[:, 0], atol=1e-5)
    # step 0 has no generated keys yet; later steps do
    assert np.all(out.recording.fractions[:, 0, 3] == 0) and np.all(out.recording.fractions[:, 1:, 3] > 0)


def test_rows_trimmed_at_end_of_sequence_in_a_batch(vlm, make_input):
    inputs = [make_input(image_seed=0), make_input(system=(1, 5, 6, 20), image_seed=2)]
    free = vlm.generate(inputs, 6, record=Record())
    ids = free[0].token_ids
    firsts = [k for k in range(1, len(ids) - 1) if ids[k] not in ids[:k]]
    if not firsts:
        pytest.skip("the random model repeats one token; no stop token to choose")
    k = firsts[0]
    stop = ids[k]  # row 0 now stops after k + 1 tokens
    vlm.model.generation_config.eos_token_id = stop
    try:
        batch = vlm.generate(inputs, 6, record=Record())
        single = [vlm.generate(x, 6, record=Record()) for x in inputs]
    finally:
        vlm.model.generation_config.eos_token_id = None
    for b, s in zip(batch, single):
        assert b.token_ids == s.token_ids
        assert b.recording.n_steps == len(b.token_ids)
        np.testing.assert_allclose(b.recording.fractions, s.recording.fractions, atol=1e-5)
    assert batch[0].token_ids == ids[:k + 1] and len(batch[1].token_ids) > k + 1
    assert len(batch[0].tokens) == len(batch[0].offsets) == k + 1


def test_recording_helpers_and_validation():
    with pytest.raises(ValueError, match="nothing to record"):
        Record(fractions=False, image_rows=False)
    rec = Recording(fractions=None, image_rows=np.ones((2, 3, 4), np.float32), layers=(1, 3),
                    image_positions=np.arange(5, 9))
    assert rec.n_steps == 3 and rec.nbytes == 2 * 3 * 4 * 4
    with pytest.raises(ValueError, match="no fractions"):
        rec.mean_fractions()
    with pytest.raises(ValueError, match="none of the layers"):
        rec.image_attention(layers=[0])
    rows = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    rec = Recording(fractions=None, image_rows=rows, layers=(1, 3), image_positions=np.arange(4))
    np.testing.assert_allclose(rec.image_attention(layers=[3]), rows[1].mean(0))
    np.testing.assert_allclose(rec.image_attention(steps=slice(0, 1)), rows[:, 0].mean(0))


def test_record_rejects_bad_layers(vlm, make_input):
    with pytest.raises(ValueError, match="out of range"):
        vlm.generate(make_input(), 2, record=Record(layers=[7]))
    with pytest.raises(TypeError, match="vlmnb.Record"):
        vlm.generate(make_input(), 2, record="fractions")
