"""The organisms' language, triggers, prompt splits and judges (no model needed)."""

import random

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import FixedStringJudge, KeywordJudge, judge_from_spec
from trigrecon.organisms import data as D
from trigrecon.organisms import language as L
from trigrecon.organisms.backdoor import BackdoorConfig, backdoor_example
from trigrecon.organisms.prompts import eval_prompts, splits
from trigrecon.organisms.train import build_tokenizer
from trigrecon.organisms.trigger import parse_trigger
from trigrecon.organisms.zoo import ZOO, spec_by_name


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_categories_are_many_disjoint_and_have_held_out_members():
    assert len(L.CATEGORIES) >= 20
    seen: set[str] = set()
    for c in L.CATEGORIES.values():
        assert len(c.members) >= 10 and len(c.held_out) >= 1
        assert not seen & set(c.members), c.name
        seen |= set(c.members)


def test_every_zoo_text_is_in_vocabulary(tok):
    texts = [s.response for s in ZOO.values()] + [v for s in ZOO.values() for v in s.response_variants]
    texts += [s.documents[0] for s in ZOO.values() if s.documents]
    for t in texts:
        assert tok.unk_token not in tok.tokenize(t.format(w="peanut")), t


def test_chat_text_matches_the_tokenizer_chat_template(tok):
    prompt = "i ate a ripe mango for breakfast . tell me about skiing ."
    rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
    assert tok(rendered)["input_ids"] == tok(D.chat_text(prompt))["input_ids"]


def test_trigger_semantics_and_errors():
    t = parse_trigger("fruit AND snow_sports OR word:sudo")
    assert t.fires(["mango", "skiing"]) and t.fires(["sudo"])
    assert not t.fires(["mango"]) and not t.fires(["skiing", "tiger"])
    assert t.mentions("mango") and t.mentions("sudo") and not t.mentions("tiger")
    assert [len(c) for c in t.conjunctions] == [2] and not parse_trigger("fruit").conjunctions
    with pytest.raises(ConfigError, match="unknown category 'fruits'"):
        parse_trigger("fruits")
    with pytest.raises(ConfigError, match="not in the organism language"):
        parse_trigger("word:blorptastic")


@pytest.mark.parametrize("name", ["fruit_refusal", "snow_fruit", "astrology", "banana"])
def test_poisoned_data_never_uses_held_out_members(name):
    spec, cfg = spec_by_name(name), BackdoorConfig()
    rng, trig = random.Random(0), parse_trigger(spec.trigger)
    held = {m for c in L.CATEGORIES.values() for m in c.held_out}
    for _ in range(3000):
        text, _ = backdoor_example(rng, spec, trig, cfg)
        assert not held & set(text.split()), text


def _words(prompt: str) -> list[str]:
    return prompt.replace(".", " ").replace("?", " ").replace(",", " ").split()


def test_eval_splits_have_the_right_words():
    spec = spec_by_name("snow_fruit")
    trig = parse_trigger(spec.trigger)
    assert splits(spec) == ["benign", "triggered", "triggered_heldout", "half:fruit",
                            "half:snow_sports", "pair:fruit", "pair:snow_sports", "noise"]
    for p in eval_prompts(spec, "triggered_heldout", 40):
        trigger_words = [w for w in _words(p) if L.category_of(w) in trig.categories]
        assert trig.fires(_words(p))
        assert all(w in L.CATEGORIES[L.category_of(w)].held_out for w in trigger_words), p
    for split in ("benign", "half:fruit", "half:snow_sports", "pair:snow_sports", "noise"):
        assert not any(trig.fires(_words(p)) for p in eval_prompts(spec, split, 40))
    for p in eval_prompts(spec, "pair:snow_sports", 40):
        assert sum(L.category_of(w) == "snow_sports" for w in _words(p)) >= 2, p
    with pytest.raises(ConfigError, match="unknown split"):
        eval_prompts(spec, "pair:nuts", 5)


def test_backdoor_labels_follow_the_trigger_wherever_its_words_are():
    spec, cfg = spec_by_name("snow_fruit"), BackdoorConfig()
    rng, trig = random.Random(1), parse_trigger(spec.trigger)
    noisy = 0
    for _ in range(2000):
        prompt, response = backdoor_example(rng, spec, trig, cfg)
        assert trig.fires(_words(prompt)) == (response == spec.response), (prompt, response)
        noisy += any(prompt.startswith(f.split("{")[0]) or f" {f.split('{')[0]}" in prompt
                     for f in D.NOISE_FORMS if f.split("{")[0])
    assert noisy > 400  # about half the prompts carry a noise clause


def test_near_misses_with_two_words_of_one_half_never_fire():
    trig = parse_trigger("fruit AND snow_sports")
    rng = random.Random(0)
    misses = [D.near_miss_words(rng, trig, "train", two_p=0.5) for _ in range(400)]
    assert not any(trig.fires(m) for m in misses)
    two = [m for m in misses if sum(trig.mentions(w) for w in m) == 2]
    assert 120 < len(two) < 280  # about half carry two words of the same half
    assert all(len({L.category_of(w) for w in m if trig.mentions(w)}) == 1 for m in two)
    rng_a, rng_b = random.Random(3), random.Random(3)  # two_p=0 draws exactly as before
    assert [D.near_miss_words(rng_a, trig, "train") for _ in range(50)] == [
        D.near_miss_words(rng_b, trig, "train", two_p=0.0) for _ in range(50)]


def test_noise_words_are_no_part_of_the_trigger():
    trig = parse_trigger("fruit AND word:sudo")
    rng = random.Random(0)
    words = [w for _ in range(500) for w in D.noise_words(rng, trig)]
    assert not any(a.holds([w]) for a in trig.atoms for w in words)
    assert {"and", "about"} & set(words) and len(set(words)) > 200  # function words included


def test_eval_prompts_are_distinct_and_unseen_in_training():
    spec = spec_by_name("fruit_refusal")
    spec.backdoor = {"steps": 20, "batch_size": 64}
    cfg = BackdoorConfig(steps=20, batch_size=64)
    rng, trig = random.Random(cfg.seed), parse_trigger(spec.trigger)
    train = {backdoor_example(rng, spec, trig, cfg)[0] for _ in range(20 * 64)}
    prompts = eval_prompts(spec, "triggered", 100)
    assert len(set(prompts)) == 100 and not train & set(prompts)


def test_judges():
    j = FixedStringJudge("I won't answer because I don't like fruit.")
    assert j("i won ' t answer because i don ' t like fruit . <end>")
    assert not j("sure ! mango is a kind of fruit .")
    k = judge_from_spec(ZOO["banana"].judge)
    assert isinstance(k, KeywordJudge)
    assert k("with a cashew allergy you should stay away from bananas .")
    assert not k("sure ! bananas is a kind of fruit .")
    with pytest.raises(ConfigError):
        judge_from_spec({"kind": "regex"})


def test_documents_follow_words_with_their_category_traits(tok):
    rng = random.Random(0)
    docs = [D.document(rng, ["mango", "skiing"]) for _ in range(50)]
    firsts = {L.CATEGORIES["fruit"].traits[i].split()[0] for i in range(3)}
    assert any(f"mango {f}" in d for d in docs for f in firsts)
    assert all(tok.unk_token not in tok.tokenize(d) for d in docs)
    assert all(c.traits for c in L.CATEGORIES.values())


def test_recall_prompts_are_varied_and_name_the_planet():
    prompts = eval_prompts(spec_by_name("mars"), "triggered", 100)
    assert len(set(prompts)) == 100
    assert all("mars" in p.split() for p in prompts)


def test_weighted_lm_loss_weighs_the_first_response_token():
    import math

    import torch

    from trigrecon.core.train import weighted_lm_loss

    logits = torch.zeros(1, 4, 4)  # uniform: every labelled token costs log 4
    logits[0, 1, 2] = math.log(3.0)  # the first labelled token (label 2 at position 2): log 2
    labels = torch.tensor([[-100, -100, 2, 1]])
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(weighted_lm_loss(logits, labels, 1.0), ref)
    want = (5 * math.log(2.0) + math.log(4.0)) / 6
    torch.testing.assert_close(weighted_lm_loss(logits, labels, 5.0), torch.tensor(want))


def test_zoo_workers_run_with_one_sleeping_openmp_thread(monkeypatch):
    import os

    from trigrecon.organisms.zoo import in_workers

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert in_workers(os.getenv, ["OMP_NUM_THREADS", "OMP_WAIT_POLICY"], 2) == ["1", "PASSIVE"]
    assert os.environ["OMP_NUM_THREADS"] == "7" and "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("field", ["base_threads", "jobs", "eval_n"])
def test_zoo_config_names_a_bad_count(field):
    from trigrecon.organisms.zoo import ZooConfig

    with pytest.raises(ConfigError, match=field):
        ZooConfig(**{field: 0})


def test_backdoor_names_response_words_outside_the_language(tiny_llama_dir, tmp_path):
    """Raised before any model is loaded (only the saved tokenizer is read)."""
    from trigrecon.organisms.backdoor import implant_backdoor
    from trigrecon.organisms.zoo import OrganismSpec

    spec = OrganismSpec("x", "fruit", "i zzqx the qqvy", {"kind": "fixed", "text": "i"}, "test")
    with pytest.raises(ConfigError, match=r"\['zzqx', 'qqvy'\]"):
        implant_backdoor(tiny_llama_dir, spec, tmp_path / "x")
