"""Fitting an audit's step counts to the model and the machine (methods/budget.py)."""

from __future__ import annotations

import dataclasses

import pytest

from trigrecon.methods.audit import DEFAULT_METHODS, AuditConfig
from trigrecon.methods.budget import FLOORS, estimate, fit_budget, shape_of

PROMPTS = ["tell me about the sea", "what is a good name for a dog", "write a poem on rain"] * 4
METHODS = list(DEFAULT_METHODS)


def _fit(hm, cfg, clean=True):
    return fit_budget(cfg, hm, METHODS, PROMPTS, "i will not answer", 16, 1, clean)


def test_a_tiny_model_keeps_the_defaults(tiny_hooked):
    cfg = AuditConfig()
    fitted, report = _fit(tiny_hooked, cfg)
    assert fitted is cfg and report.changes == {}
    assert 0 < sum(report.estimate_minutes.values()) < cfg.budget_minutes
    assert "defaults kept" in report.summary()


def test_a_small_budget_scales_the_costly_sizes_to_their_floors_and_reports_it(tiny_hooked):
    cfg = dataclasses.replace(AuditConfig(), budget_minutes=1e-9)
    fitted, report = _fit(tiny_hooked, cfg)
    sm = fitted.supervised_sae_melbo
    assert (sm.steps, sm.n_vectors) == (FLOORS["steps"], FLOORS["n_vectors"])
    assert fitted.conjunctive.sweep_words == FLOORS["sweep_words"]
    assert fitted.verify.n_latents == FLOORS["n_latents"]
    assert fitted.verify.max_candidates == FLOORS["max_candidates"]
    c = fitted.conjunctive
    assert (c.clean_sweep, c.sweep_prompts) == (FLOORS["clean_sweep"], FLOORS["sweep_prompts"])
    assert c.max_clauses == FLOORS["max_clauses"] == 2
    assert report.changes["supervised_sae_melbo.steps"] == [150, FLOORS["steps"]]
    assert cfg.supervised_sae_melbo.steps == 150  # the caller's config is not modified
    assert sum(report.fitted_minutes.values()) < sum(report.estimate_minutes.values()) / 4
    assert "fitted to" in report.summary()
    again, _ = _fit(tiny_hooked, cfg)
    assert again == fitted  # deterministic: no timing enters the estimate


def test_a_moderate_budget_lands_between_floors_and_defaults(tiny_hooked):
    full = sum(_fit(tiny_hooked, AuditConfig())[1].estimate_minutes.values())
    cfg = dataclasses.replace(AuditConfig(), budget_minutes=full / 3)
    fitted, report = _fit(tiny_hooked, cfg)
    assert FLOORS["steps"] < fitted.supervised_sae_melbo.steps < 150
    assert sum(report.fitted_minutes.values()) <= full / 3


def test_the_estimate_grows_with_what_costs(tiny_hooked):
    s = shape_of(tiny_hooked, PROMPTS, "i will not answer")
    base = estimate(AuditConfig(), METHODS, s, 1, 12, 16, clean=False)
    more = AuditConfig()
    more.supervised_sae_melbo.steps *= 2
    doubled = estimate(more, METHODS, s, 1, 12, 16, clean=False)
    assert doubled["supervised_sae_melbo"] > 1.9 * base["supervised_sae_melbo"]
    with_clean = estimate(AuditConfig(), METHODS, s, 1, 12, 16, clean=True)
    assert with_clean["verify"] == 2 * base["verify"]


def test_verification_cost_is_bounded_by_its_candidate_cap(tiny_hooked):
    """Rows = every eval prompt for the baseline, controls and `confirm` best, plus the screen
    for up to `max_candidates`: linear in the cap, whatever the number of latents."""
    s = shape_of(tiny_hooked, PROMPTS, "i will not answer")

    def verify_cost(**kw):
        cfg = AuditConfig()
        cfg.verify = dataclasses.replace(cfg.verify, **kw)
        return estimate(cfg, METHODS, s, 1, 12, 32, clean=False)["verify"]

    assert verify_cost(n_latents=64) == verify_cost(n_latents=4)
    one = verify_cost(max_candidates=1, confirm=1)
    per_row = one / (32 * (1 + 8 + 1))
    assert verify_cost(max_candidates=64) == pytest.approx(per_row * (32 * (1 + 8 + 16) + 8 * 64))


def test_reduced_mode_leaves_the_disabled_scoring_alone(tiny_hooked):
    """Reduced mode turns candidate scoring off: shrinking its top_k would report a saving
    that does not exist."""
    from trigrecon.methods.audit import REDUCED_METHODS, reduced_config

    cfg = dataclasses.replace(reduced_config(), budget_minutes=1e-9)
    fitted, report = fit_budget(cfg, tiny_hooked, list(REDUCED_METHODS), PROMPTS,
                                "i will not answer", 16, 1, True)
    assert not fitted.scoring.enabled
    assert fitted.scoring.top_k == cfg.scoring.top_k
    assert not any(k.startswith("scoring.") for k in report.changes)
    assert "candidate scoring" not in report.estimate_minutes
    assert fitted.verify.max_candidates == FLOORS["max_candidates"]  # the rest still shrinks
