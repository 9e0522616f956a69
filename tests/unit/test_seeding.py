"""tests/conftest.py seeds every test: random inputs never depend on the tests that ran before."""

import random

import torch


def _start_state() -> tuple[torch.Tensor, float]:
    return torch.randn(4), random.random()


def _seed0() -> tuple[torch.Tensor, float]:
    return torch.randn(4, generator=torch.Generator().manual_seed(0)), random.Random(0).random()


def test_a_test_starts_from_seed_0():
    t, r = _start_state()
    ref_t, ref_r = _seed0()
    assert torch.equal(t, ref_t) and r == ref_r


def test_so_does_the_next_one_after_the_first_consumed_randomness():
    t, r = _start_state()
    ref_t, ref_r = _seed0()
    assert torch.equal(t, ref_t) and r == ref_r
