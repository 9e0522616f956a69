"""Steering hooks: exact no-ops, causal locality, per-row vectors, mask windows, no leaks."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS

from trigrecon.core.errors import ConfigError
from trigrecon.core.hooks import (
    add_to_resid,
    assert_no_hooks,
    at_position,
    position_offset,
    steering,
    window,
)

LAYER = 1


@pytest.fixture(scope="module")
def batch(tiny_hooked):
    return tiny_hooked.batch(PROMPTS[:4])


def logits(hm, batch):
    with torch.no_grad():
        return hm.model(batch.tokens, attention_mask=batch.attention_mask.long())


def rand_vec(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_zero_vector_leaves_logits_unchanged(tiny_hooked, batch):
    base = logits(tiny_hooked, batch)
    with steering(tiny_hooked, LAYER, torch.zeros(tiny_hooked.d_model), batch.user_mask):
        assert torch.equal(logits(tiny_hooked, batch), base)


def test_steering_changes_only_from_first_masked_position(tiny_hooked, batch):
    base = logits(tiny_hooked, batch)
    first = 5
    mask = torch.zeros_like(batch.user_mask)
    mask[:, first] = True
    with steering(tiny_hooked, LAYER, rand_vec(tiny_hooked.d_model), mask):
        steered = logits(tiny_hooked, batch)
    assert torch.equal(steered[:, :first], base[:, :first])
    assert ((steered[:, first:] - base[:, first:]).abs().amax(-1) > 1e-3).all()


def test_user_mask_steering_starts_at_first_user_token(tiny_hooked, batch):
    base = logits(tiny_hooked, batch)
    with steering(tiny_hooked, LAYER, rand_vec(tiny_hooked.d_model), batch.user_mask):
        steered = logits(tiny_hooked, batch)
    for row in range(len(batch)):
        first = int(batch.user_mask[row].nonzero()[0])
        assert torch.equal(steered[row, :first], base[row, :first])
        assert (steered[row, first] - base[row, first]).abs().max() > 1e-3


def test_per_row_vectors_equal_rows_steered_alone(tiny_hooked, batch):
    vecs = rand_vec(len(batch), tiny_hooked.d_model, seed=1)
    with steering(tiny_hooked, LAYER, vecs, batch.user_mask):
        together = logits(tiny_hooked, batch)
    for row in range(len(batch)):
        one = batch.select([row])
        with steering(tiny_hooked, LAYER, vecs[row], one.user_mask):
            alone = logits(tiny_hooked, one)
        n = int(one.attention_mask.sum())
        torch.testing.assert_close(together[row, :n], alone[0, :n], atol=1e-5, rtol=0)


def test_short_and_long_masks_are_padded_and_sliced(tiny_hooked, batch):
    vec, width = rand_vec(tiny_hooked.d_model, seed=2), batch.tokens.shape[1]
    with steering(tiny_hooked, LAYER, vec, batch.user_mask):
        want = logits(tiny_hooked, batch)
    last = int(batch.user_mask.nonzero()[:, 1].max()) + 1
    longer = torch.cat([batch.user_mask, torch.zeros(len(batch), 7, dtype=torch.bool)], dim=1)
    for mask in (batch.user_mask[:, :last], longer):
        with steering(tiny_hooked, LAYER, vec, mask):
            assert torch.equal(logits(tiny_hooked, batch), want), mask.shape
    assert longer.shape[1] == width + 7


def test_window_and_position_offset():
    mask = torch.tensor([[True, False, True]])
    assert window(mask, 0, 2).tolist() == [[True, False]]
    assert window(mask, 2, 3).tolist() == [[True, False, False]]
    assert window(mask, 5, 1).tolist() == [[False]]
    assert position_offset() == 0
    with at_position(2):
        assert position_offset() == 2
        hook = add_to_resid(torch.ones(4), mask)
        out = hook(torch.zeros(1, 1, 4))
    assert out.tolist() == [[[1.0] * 4]] and position_offset() == 0


def test_gradient_reaches_vector(tiny_hooked, batch):
    vec = torch.zeros(tiny_hooked.d_model, requires_grad=True)
    with steering(tiny_hooked, LAYER, vec, batch.user_mask):
        loss = tiny_hooked.model(batch.tokens, attention_mask=batch.attention_mask.long()).sum()
    loss.backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_hooked.model.parameters())  # weights are frozen


def test_no_hook_survives_an_exception(tiny_hooked, batch):
    with pytest.raises(RuntimeError, match="inside"), steering(
            tiny_hooked, LAYER, rand_vec(tiny_hooked.d_model), batch.user_mask):
        logits(tiny_hooked, batch)
        raise RuntimeError("inside the block")
    assert_no_hooks(tiny_hooked)
    with pytest.raises(ConfigError, match="rows"), steering(
            tiny_hooked, LAYER, rand_vec(tiny_hooked.d_model), batch.user_mask[:1]):
        logits(tiny_hooked, batch)  # the hook itself raises mid-forward
    assert_no_hooks(tiny_hooked)


def test_assert_no_hooks_detects_a_leak(tiny_hooked):
    tiny_hooked.model.add_hook("blocks.0.hook_resid_post", lambda x, hook: x)
    try:
        with pytest.raises(AssertionError, match=r"blocks\.0\.hook_resid_post"):
            assert_no_hooks(tiny_hooked)
    finally:
        tiny_hooked.model.reset_hooks()
    assert_no_hooks(tiny_hooked)


def test_steering_accepts_a_bare_hooked_transformer(tiny_hooked, batch):
    vec = rand_vec(tiny_hooked.d_model, seed=3)
    with steering(tiny_hooked, LAYER, vec, batch.user_mask):
        want = logits(tiny_hooked, batch)
    with steering(tiny_hooked.model, LAYER, vec, batch.user_mask) as model:
        assert model is tiny_hooked.model
        assert torch.equal(logits(tiny_hooked, batch), want)
    with pytest.raises(ConfigError, match=r"0\.\.3"), steering(tiny_hooked.model, 9, vec,
                                                               batch.user_mask):
        pass


@pytest.mark.parametrize(
    ("vector", "mask", "match"),
    [(torch.zeros(5), torch.ones(1, 3, dtype=torch.bool), "d_model"),
     (torch.zeros(2, 2, 64), torch.ones(1, 3, dtype=torch.bool), r"\[d_model\]"),
     (torch.zeros(3, 64), torch.ones(2, 3, dtype=torch.bool), "3 steering vectors"),
     (torch.zeros(64), torch.ones(2, 3), "bool")],
)
def test_bad_inputs(tiny_hooked, vector, mask, match):
    with pytest.raises(ConfigError, match=match), steering(tiny_hooked, LAYER, vector, mask):
        pass
    assert_no_hooks(tiny_hooked)
