"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.steering.losses import melbo_objective, response_ce, response_ce_rows


def test_response_ce_weighs_prompts_equally():
    # two prompts: row 0 has one response token, row 1 has two; uniform logits over 4 tokens
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(target=2) = 3/6 = 0.5 for row 0's token
    rows, targets = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    per_row = response_ce_rows(logits, targets, rows, 2)
    torch.testing.assert_close(per_row, torch.tensor([[math.log(2.0), math.log(4.0)]]))
    torch.testing.assert_close(response_ce(logits, targets, rows, 2),
                               torch.tensor([(math.log(2.0) + math.log(4.0)) / 2]))


def test_response_ce_rejects_missing_targets():
    with pytest.raises(ConfigError, match="no tokens"):
        response_ce(torch.zeros(1, 0, 4), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long), 1)
    with pytest.raises(ConfigError, match="no tokens"):
        response_ce(torch.zeros(1, 1, 4), torch.tensor([0]), torch.tensor([0]), 2)


def test_melbo_objective_by_hand():
    base = torch.zeros(2, 3, 2)
    steered = torch.zeros(1, 2, 3, 2)
    steered[0, 0, 0] = torch.tensor([3.0, 4.0])  # |d| = 5
    steered[0, 0, 1] = torch.tensor([0.0, 1.0])  # |d| = 1
    steered[0, 1, 2] = torch.tensor([0.0, 2.0])  # masked out below
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # prompt 0: (25 + 1)^(1/2); prompt 1: nothing unmasked moved -> ~0
    got = melbo_objective(steered, base, mask, p=2, q=2)
    torch.testing.assert_close(got, torch.tensor([math.sqrt(26) / 2]), atol=1e-5, rtol=1e-5)
    got1 = melbo_objective(steered, base, mask, p=2, q=1)
    torch.testing.assert_close(got1, torch.tensor([26 / 2]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="positive"):
        melbo_objective(steered, base, mask, p=0)
