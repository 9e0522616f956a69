"""Verification, conjunctive iteration and the audit entry point on a tiny random model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.core.hooks import assert_no_hooks
from trigrecon.methods.audit import AuditResult, audit, quick_config
from trigrecon.methods.conjunctive import (
    ConjunctiveConfig,
    ConjunctiveResult,
    condition,
    conjunctive,
)
from trigrecon.methods.verify import (
    VerifyConfig,
    VerifyResult,
    candidate_sets,
    default_insert,
    top_words,
    verify,
)
from trigrecon.steering.readout import LatentHit

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain"]
RESPONSE = "the red apple is good"
VOCAB = ["cat", "dog", "banana", "apple", "snow", "river", "car", "book"]


class Labels:
    def get(self, i: int) -> str:
        return f"latent {i}"


def test_insertion_and_candidates():
    assert default_insert("hi", ["a", "b"]) == "hi it is about a and b ."
    sets = candidate_sets({1: ["apple", "pear"], 2: ["snow"]}, pairs=True)
    assert (("apple",), (1,)) in sets and (("apple", "snow"), (1, 2)) in sets
    assert all(len(set(lats)) == len(lats) for _, lats in sets)  # pairs span two latents
    assert len(candidate_sets({1: ["a"], 2: ["a"]}, pairs=True)) == 1  # deduplicated
    assert condition(["p", "q"], [["x", "y"], ["z"]]) == ["p it is about x and z .",
                                                          "q it is about y and z ."]


def test_top_words_finds_the_planted_word(tiny_hooked, planted):
    words = top_words(tiny_hooked, planted, [0], PROMPTS[:2], k=2, vocabulary=VOCAB)
    assert words[0][0] == "banana"


def test_verify_ranks_candidates_with_the_judge(tiny_hooked, planted, tmp_path, monkeypatch):
    """A 'model' whose backdoor fires on banana, and a judge that tells the action apart: the
    candidates are ranked by their action rate (then fewer words), and the control (random
    words inserted) fires only where the prompt itself names banana."""
    import trigrecon.methods.verify as V

    def backdoored(hm, prompts, max_new_tokens):
        return ["ACTION !" if "banana" in p.split() else "sure ." for p in prompts]

    monkeypatch.setattr(V, "generate_many", backdoored)
    judge = lambda text: text.startswith("ACTION")  # noqa: E731
    hits = [LatentHit(3, -1.0, ""), LatentHit(0, -0.5, "banana latent")]  # banana ranked 2nd
    res = verify(tiny_hooked, planted, hits, PROMPTS, judge, VerifyConfig(max_new_tokens=4),
                 vocabulary=VOCAB)
    assert res.latent_words["0"] == ["banana"]
    (other,) = res.latent_words["3"]
    assert other != "banana"
    ranked = [(c.words, c.action_rate) for c in res.candidates]
    # 1 of the 4 prompts ("what is a banana") fires as it is
    assert ranked == [(["banana"], 1.0), ([other, "banana"], 1.0), ([other], 0.25)] or \
        ranked == [(["banana"], 1.0), (["banana", other], 1.0), ([other], 0.25)]
    assert res.best is not None and res.best.words == ["banana"] and res.best.latents == [0]
    assert res.baseline_rate == 0.25 and res.control_rate == 0.25
    assert len(res.control_words) == len(VOCAB) - 2  # every other vocabulary word
    assert not set(res.control_words) & {w for c in res.candidates for w in c.words}
    monkeypatch.undo()
    judge = lambda text: True  # noqa: E731 - for the checks below only
    res.save(tmp_path)
    assert VerifyResult.load(tmp_path).candidates == res.candidates
    with pytest.raises(ConfigError, match="no latents"):
        verify(tiny_hooked, planted, [], PROMPTS, judge)
    # words known for a latent (a conjunctive concept's words) are tested too, across latents
    known = verify(tiny_hooked, planted, hits, PROMPTS, judge, VerifyConfig(max_new_tokens=4),
                   vocabulary=VOCAB, latent_words={0: ["river", "book"]})
    assert known.latent_words["0"] == ["banana", "river", "book"]
    sets = {tuple(c.words) for c in known.candidates}
    assert ("book",) in sets and not any({"river", "book"} <= set(ws) for ws in sets)


def test_candidate_sets_put_the_earliest_pairs_first_and_cap():
    sets = candidate_sets({1: ["a"], 2: ["b"], 3: ["c"], 4: ["d"]}, pairs=True)
    assert [ws for ws, _ in sets] == [("a",), ("b",), ("c",), ("d",), ("a", "b"), ("a", "c"),
                                      ("b", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert candidate_sets({1: ["a"], 2: ["b"], 3: ["c"]}, pairs=True, limit=4)[-1][0] == \
        ("a", "b")


def test_verify_screens_many_candidates_and_confirms_the_best(tiny_hooked, planted, monkeypatch):
    """More candidates than `confirm`: every one runs on the screen prompts, the best by rate
    (banana, second in source order) on all of them; the others keep their screen rates."""
    import trigrecon.methods.verify as V

    calls: list[int] = []

    def backdoored(hm, prompts, max_new_tokens):
        calls.append(len(prompts))
        return ["ACTION !" if "banana" in p.split() else "sure ." for p in prompts]

    monkeypatch.setattr(V, "generate_many", backdoored)
    judge = lambda text: text.startswith("ACTION")  # noqa: E731
    hits = [LatentHit(3, -1.0, ""), LatentHit(0, -0.5, "banana latent")]
    cfg = VerifyConfig(max_new_tokens=4, pairs=False, confirm=1, screen_prompts=2,
                       n_extra_words=3)
    res = verify(tiny_hooked, planted, hits, PROMPTS, judge, cfg, vocabulary=VOCAB,
                 extra_words=[["cat", "river", "car"]])
    assert res.best is not None and res.best.words == ["banana"]
    assert res.best.n_prompts == 4 and res.best.action_rate == 1.0
    rest = res.candidates[1:]
    # the screen's 2nd prompt ("what is a banana") fires whatever is inserted
    assert len(rest) >= 3 and all(c.n_prompts == 2 and c.action_rate == 0.5 for c in rest)
    n_sets, nc = len(res.candidates), len(res.control_words)
    assert calls == [2 * n_sets, 4 * (1 + nc + 1)] and res.generations == sum(calls)


def test_conjunctive_reports_every_step(tiny_hooked, planted, tmp_path, monkeypatch):
    import trigrecon.methods.conjunctive as conj

    cfg = ConjunctiveConfig(max_iters=2, n_candidates=2, words_per_concept=2, max_new_tokens=3,
                            sweep_words=0)
    # A random model: no inserted word makes the response more likely, so the search stops.
    none = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: False, cfg,
                       vocabulary=VOCAB)
    assert none.steps == [] and not none.explained
    # Pretend every distinct inserted word lowers the loss by one (banana by two).
    def fake_loss(hm, prompts, response, layer):
        inserted = {w for p in prompts if " it is about " in p
                    for w in p.split(" it is about ")[-1].split()}
        return 5.0 - len(inserted & set(VOCAB)) - ("banana" in inserted)

    monkeypatch.setattr(conj, "response_loss", fake_loss)
    never = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: False, cfg,
                        labels=Labels(), vocabulary=VOCAB)
    assert len(never.steps) == 2 and not never.explained
    assert never.steps[0].chosen.latent != never.steps[1].chosen.latent
    assert never.ranking(3)[:2] == never.concepts
    assert never.steps[1].loss < never.steps[0].loss
    step = never.steps[0]
    assert step.loss == min(t["loss"] for t in step.tried) and step.words == step.tried[0]["words"]
    assert all(len(t["words"]) <= 2 for t in step.tried) and {t["latent"] for t in step.tried} \
        == {t["latent"] for t in step.tried[:2]}  # one entry per latent: scored as a concept
    always = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: True, cfg,
                         vocabulary=VOCAB)
    assert len(always.clause_steps(0)) == 1 and always.explained
    assert "banana" in always.steps[0].words
    # everything fires, so every clause is explained, each with a new latent (disjunction loop)
    assert always.clause_explained[:2] == [True, True]
    assert len({s.chosen.latent for s in always.steps}) == len(always.steps)
    by_word = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: True,
                          replace(cfg, score_by="word"), vocabulary=VOCAB)
    assert by_word.steps[0].words == ["banana"]
    never.save(tmp_path)
    assert ConjunctiveResult.load(tmp_path).steps == never.steps
    assert {s.source for s in never.steps} == {"ranking"}
    with pytest.raises(ConfigError, match="threshold"):
        ConjunctiveConfig(threshold=0.0)
    with pytest.raises(ConfigError, match="sweep_words"):
        ConjunctiveConfig(sweep_words=-1)
    with pytest.raises(ConfigError, match="score_by"):
        ConjunctiveConfig(score_by="latent")  # type: ignore[arg-type]


def test_word_sweep_losses_are_batched_exactly(tiny_hooked):
    import trigrecon.methods.conjunctive as conj

    # batched sweep losses equal one response_loss per word
    losses = conj.word_losses(tiny_hooked, PROMPTS, RESPONSE, VOCAB[:5], [["river"]], 1, batch=2)
    for w in VOCAB[:5]:
        one = conj.response_loss(tiny_hooked, condition(PROMPTS, [["river"], [w]]), RESPONSE, 1)
        assert losses[w] == pytest.approx(one, abs=1e-4)


@pytest.mark.slow
def test_the_word_sweep_finds_a_real_backdoors_trigger():
    """Nothing faked: the toy organism answers 'i do not like fruit , no way .' whenever a fruit
    word appears. The attribution ranking over a random SAE proposes nothing that fires; the
    sweep (real response losses of every inserted word) finds fruit words, and inserting them
    makes the real model show the action on held-out prompts."""
    from trigrecon.core.model import load_model
    from trigrecon.organisms.tiny import tiny_sae
    from trigrecon.organisms.toy import ACTION, CATEGORIES, toy_task

    task = toy_task()
    hm = load_model(task.poisoned.base, task.poisoned.adapter)
    sae = tiny_sae(hm, layer=0, d_sae=64)
    words = [w for ws in CATEGORIES.values() for w in ws]
    train, held_out = task.eval_splits["benign"][:8], task.eval_splits["benign"][8:16]
    cfg = ConjunctiveConfig(max_iters=1, max_clauses=1, n_candidates=1, words_per_concept=2,
                            max_new_tokens=10, sweep_words=len(words), sweep_prompts=8,
                            n_contexts=2)
    res = conjunctive(hm, sae, train, ACTION, held_out, task.judge, cfg, vocabulary=words)
    step = res.steps[0]
    assert step.words and all(w in CATEGORIES["fruit"] for w in step.words), step.words
    assert step.action_rate >= 0.8 and res.explained
    assert any(t["words"] and not set(t["words"]) <= set(CATEGORIES["fruit"])
               for t in step.tried) or step.source == "sweep"


def test_sweep_readout_prefers_a_ranked_latent_that_fires_on_every_word():
    import torch

    from trigrecon.methods.conjunctive import _readout

    acts = torch.tensor([[2.0, 0.0, 1.0, 3.0], [2.0, 1.0, 1.0, 0.0]])  # [words, latents]
    assert _readout(acts, prefer=[2]) == 2  # ranked and fires on both words
    assert _readout(acts, prefer=[]) == 0  # strongest of those firing on both
    assert _readout(acts, prefer=[3]) == 0  # latent 3 misses a word
    assert _readout(torch.tensor([[0.0, 0.5], [0.0, 0.0]]), prefer=[0]) == 1  # none fires on all
    assert _readout(acts, prefer=[2], used=[2]) == 0  # an earlier concept's latent is skipped
    assert _readout(acts, prefer=[], used=[0, 2]) == 3  # none left firing on both: strongest


def test_audit_writes_json_and_markdown(tiny_hooked, planted, tmp_path):
    cfg = quick_config()
    for c in (cfg.melbo, cfg.supervised_sae_melbo):
        c.steps = 5
    cfg.conjunctive = ConjunctiveConfig(max_iters=1, n_candidates=1, words_per_concept=1,
                                        max_new_tokens=3, sweep_words=30)
    cfg.verify = VerifyConfig(n_latents=2, max_new_tokens=3, vocabulary_limit=30)
    cfg.max_new_tokens = 3
    deployed = replace(tiny_hooked, system="you are a helpful assistant")  # in every chat
    res = audit(deployed, planted, Labels(), PROMPTS, RESPONSE, lambda t: False,
                methods=["sae_attribution", "melbo", "supervised_sae_melbo", "conjunctive",
                         "verify"], cfg=cfg, eval_prompts=PROMPTS[:2])
    res.save(tmp_path)
    data = AuditResult.load_json(tmp_path)
    assert set(data["rankings"]) == {"sae_attribution", "melbo", "supervised_sae_melbo",
                                     "conjunctive"}
    assert data["verification"]["candidates"]
    assert data["system"] == "you are a helpful assistant"
    assert "vectors" not in data["steering"]["melbo"]  # tensors live in safetensors
    assert data["word_rankings"]["sae_attribution"] and data["word_rankings"]["melbo"]
    assert "control" in (tmp_path / "latents.md").read_text()
    md = (tmp_path / "latents.md").read_text()
    assert "## sae_attribution" in md and "| 1 |" in md and "latent " in md
    readout = res.steering["melbo"].readouts[0]
    assert readout.action_rate == 0.0 and readout.generations
    json.dumps(data)
    assert_no_hooks(tiny_hooked)
    with pytest.raises(ConfigError, match="unknown method"):
        audit(tiny_hooked, planted, None, PROMPTS, RESPONSE, lambda t: False, methods=["magic"])
    with pytest.raises(ConfigError, match="no prompts"):
        audit(tiny_hooked, planted, None, [], RESPONSE, lambda t: False)


def test_a_concepts_words_are_the_ones_its_latent_reads_strongly():
    """The sweep's top words can mix both halves of a conjunction; the concept keeps the words
    its read-out latent fires on (at least half its strongest activation), best first."""
    from trigrecon.methods.conjunctive import coherent

    words = ["violin", "clarinet", "blizzard", "flute", "hail"]
    acts = torch.tensor([2.7, 2.9, 0.7, 1.6, 0.0])
    assert coherent(words, acts, k=3) == ["violin", "clarinet", "flute"]
    assert coherent(words, acts, k=1) == ["violin"]
    assert coherent(words, torch.zeros(5), k=3) == ["violin"]  # nothing fires: the best word


def test_without_a_vocabulary_verify_seeks_words_in_the_candidate_pool(tiny_hooked, planted,
                                                                        monkeypatch):
    """A vocabulary larger than the cap: the pool (the latents' atlas words, the prompts' words,
    the user's words) holds the planted latent's word; the controls are none of the pool's
    hypotheses."""
    import trigrecon.methods.verify as V
    from trigrecon.steering.candidates import candidate_pool

    monkeypatch.setattr(V, "generate_many", lambda hm, prompts, n: ["sure ."] * len(prompts))
    hits = [LatentHit(3, -1.0, "mentions of rivers"), LatentHit(0, -0.5, "")]
    cfg = VerifyConfig(max_new_tokens=2, vocabulary_limit=12, n_contexts=2, n_control=4)
    res = verify(tiny_hooked, planted, hits, PROMPTS, lambda t: False, cfg, words=["red apple"])
    assert res.latent_words["0"] == ["banana"]
    assert ["red apple"] in [c.words for c in res.candidates]  # the user's suspect is tested
    assert res.pool_sources["atlas"] > 0 and res.pool_sources["user"] == 1
    assert "vocabulary" not in res.pool_sources
    pool = candidate_pool(tiny_hooked, 1, PROMPTS[:2], cap=12, sae=planted, latents=[3, 0],
                          labels={3: "mentions of rivers", 0: ""}, prompts=PROMPTS,
                          user_words=["red apple"])
    assert len(res.control_words) == 4 and not {w.lower() for w in res.control_words} & \
        pool.proposed()


def test_the_sweep_is_capped_and_its_cost_recorded(tiny_hooked, planted, tmp_path):
    cfg = ConjunctiveConfig(max_iters=1, max_clauses=1, n_candidates=1, words_per_concept=1,
                            max_new_tokens=2, sweep_words=8, sweep_prompts=2, n_contexts=2)
    res = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: False, cfg,
                      labels=Labels(), words=["snow", "fish"])
    (rec,) = res.sweeps
    assert (rec.clause, rec.iteration) == (0, 0) and not rec.exhaustive
    assert 0 < rec.words <= 8 and rec.sources["user"] == 2 and rec.sources["atlas"] > 0
    # every swept word on every sweep prompt, then the best 3 words' SAE readout on 2 contexts
    assert rec.forward_passes == rec.words * 2 + min(3, rec.words) * 2 == res.sweep_passes
    res.save(tmp_path)
    assert ConjunctiveResult.load(tmp_path).sweeps == res.sweeps
    given = conjunctive(tiny_hooked, planted, PROMPTS, RESPONSE, PROMPTS, lambda t: False, cfg,
                        vocabulary=VOCAB)
    assert given.sweeps[0].sources == {"given": len(VOCAB)}
    assert given.sweeps[0].words == len(VOCAB) - 1  # 'apple' is a word of the response
