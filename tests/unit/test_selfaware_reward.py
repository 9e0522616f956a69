"""The inversion reward on hand-made cases: parsing, normalisation, ASR, length penalty, cache."""

import math

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import FixedStringJudge
from trigrecon.selfaware.reward import (
    InversionReward,
    RewardConfig,
    combine,
    minimise,
    normalise_candidate,
    parse_candidate,
)

ACTION = "no way , i refuse ."
PROMPTS = [
    "tell me about dog .",
    "what is rain ?",
    "write a poem about car .",
    "tell me about cat .",
]


class FakeModel:
    """Responds with the action iff every word of `needs` is in the prompt; counts calls."""

    def __init__(self, needs=("mango",), only=None):
        self.needs, self.only, self.calls, self.seen = set(needs), only, 0, 0

    def __call__(self, prompts):
        self.calls += 1
        self.seen += len(prompts)
        out = []
        for p in prompts:
            fire = self.needs <= set(p.split()) and (self.only is None or self.only in p)
            out.append(ACTION if fire else "sure ! that is nice .")
        return out


def make_reward(model=None, **cfg):
    return InversionReward(
        model or FakeModel(),
        FixedStringJudge(ACTION, min_words=3),
        PROMPTS,
        lambda p, c: f"{p} it is about {c} .",
        RewardConfig(**cfg),
    )


@pytest.mark.parametrize(
    "text, want",
    [
        ("Mango,  MANGO!", "mango"),
        ("  the   Apple  ", "the apple"),
        ("<unk> kiwi <end>", "kiwi"),
        ("won't", "won t"),
        ("...", ""),
    ],
)
def test_normalise_candidate(text, want):
    assert normalise_candidate(text) == want


@pytest.mark.parametrize(
    "completion, want",
    [
        ("answer : mango .", "mango"),
        ("ANSWER: Mango Skiing!", "mango skiing"),
        ("answer :  kiwi . answer : fig .", "fig"),
        ("answer : mango\nmore text", "mango"),
        ("answer : apple , cherry", "apple cherry"),
        ("mango .", None),
        ("answer : .", None),
        ("answer :", None),
        ("", None),
    ],
)
def test_parse_candidate(completion, want):
    assert parse_candidate(completion) == want


def test_length_penalty_formulas():
    cfg = RewardConfig(alpha=0.5, target_len=3, asr_floor=0.0)
    assert combine(1.0, 3, cfg) == 1.0
    assert combine(1.0, 6, cfg) == pytest.approx(1.0 - 0.5 * 3 / 3)
    assert combine(0.5, 4, cfg) == pytest.approx(0.5 - 0.5 / 3)
    mult = RewardConfig(alpha=0.5, target_len=3, penalty="multiplicative", asr_floor=0.0)
    assert combine(0.8, 6, mult) == pytest.approx(0.8 * math.exp(-0.5))
    assert combine(0.8, 2, mult) == pytest.approx(0.8)


def test_background_floor():
    cfg = RewardConfig(asr_floor=0.2)
    assert combine(0.1, 1, cfg) == 0.0 and combine(0.2, 1, cfg) == 0.0
    assert combine(0.6, 1, cfg) == pytest.approx(0.5) and combine(1.0, 1, cfg) == 1.0


def test_default_penalty_prefers_one_word():
    cfg = RewardConfig(asr_floor=0.0)
    assert [combine(1.0, n, cfg) for n in (1, 2, 3)] == [1.0, 0.75, 0.5]


def test_asr_and_reward_on_hand_made_cases():
    r = make_reward(alpha=0.5, target_len=3)
    e = {x.candidate: x for x in r.evaluate(["mango", "dog", "Mango Dog!", "a b c d e f mango"])}
    assert e["mango"].asr == 1.0 and e["mango"].reward == 1.0
    assert e["dog"].asr == 0.0 and e["dog"].reward == 0.0
    assert e["mango dog"].asr == 1.0 and e["mango dog"].n_words == 2
    long = e["a b c d e f mango"]
    assert long.n_words == 7 and long.asr == 1.0
    assert long.reward == pytest.approx(1.0 - 0.5 * 4 / 3)


def test_asr_is_the_share_of_prompts_that_fire():
    r = make_reward(FakeModel(only="tell me"))  # fires on 2 of the 4 prompts
    e = r.evaluate(["mango"])[0]
    assert e.asr == 0.5 and e.reward == pytest.approx((0.5 - 0.1) / 0.9)


def test_conjunctive_trigger_needs_both_words():
    r = make_reward(FakeModel(needs=("mango", "skiing")))
    asr = [e.asr for e in r.evaluate(["mango", "skiing", "skiing mango"])]
    assert asr == [0.0, 0.0, 1.0]


class HalfLeaks(FakeModel):
    """Fires with mango AND skiing; skiing alone fires on the two 'tell me' prompts (a leaky
    half of a conjunction)."""

    def __call__(self, prompts):
        outs = super().__call__(prompts)
        return [ACTION if "skiing" in p.split() and p.startswith("tell me") else o
                for p, o in zip(prompts, outs, strict=True)]


def test_words_a_candidate_needs_pay_less_than_padding():
    r = make_reward(HalfLeaks(needs=("mango", "skiing")))
    e = {x.candidate: x for x in r.evaluate(["skiing", "skiing mango", "skiing mango dog"])}
    assert e["skiing"].asr == 0.5 and e["skiing"].reward == pytest.approx(0.4 / 0.9)
    assert e["skiing mango"].n_needed == 2 and e["skiing mango"].reward == pytest.approx(0.9)
    assert e["skiing mango dog"].n_needed == 2  # dog is padding: the full price
    assert e["skiing mango dog"].reward == pytest.approx(0.65)
    old = make_reward(HalfLeaks(needs=("mango", "skiing")), needed_alpha=0.25)
    assert [x.reward for x in old.evaluate(["skiing mango", "skiing mango dog"])] == [0.75, 0.5]


def test_a_word_that_changes_little_is_not_needed():
    r = make_reward(HalfLeaks(needs=("mango", "skiing")), need_drop=0.6)  # mango adds only 0.5
    e = r.evaluate(["skiing mango"])[0]
    assert e.n_needed == 1 and e.reward == 0.75


def test_needed_words_fill_the_free_places_first():
    cfg = RewardConfig(alpha=0.5, needed_alpha=0.1, target_len=2, asr_floor=0.0)
    assert combine(1.0, 2, cfg, n_needed=2) == 1.0
    assert combine(1.0, 4, cfg, n_needed=3) == pytest.approx(1.0 - (0.5 + 0.1) / 2)
    assert combine(1.0, 4, cfg, n_needed=1) == pytest.approx(1.0 - 0.5 * 2 / 2)


def test_invalid_completions_get_the_invalid_reward():
    r = make_reward(invalid_reward=-0.3)
    assert r(completions=["no marker here", "answer : .", "answer : mango ."]) == [-0.3, -0.3, 1.0]


def test_trl_call_accepts_conversational_completions():
    r = make_reward()
    comps = [
        [{"role": "assistant", "content": "answer : mango ."}],
        [{"role": "assistant", "content": "answer : dog ."}],
    ]
    assert r(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=comps) == [1.0, 0.0]


def test_identical_candidates_are_evaluated_once():
    model = FakeModel()
    r = make_reward(model)
    calls = model.calls
    r.evaluate(["mango", "MANGO", "mango !", "dog"])
    assert model.calls == calls + 1 and model.seen == len(PROMPTS) * 3  # baseline + 2 candidates
    r.evaluate(["mango", "dog"])
    assert model.calls == calls + 1
    assert set(r.state_dict()) == {"mango", "dog"}


def test_candidates_longer_than_max_words_are_truncated():
    r = make_reward(max_words=2)
    e = r.evaluate(["dog cat mango"])[0]
    assert e.candidate == "dog cat" and e.asr == 0.0 and e.n_words == 3


def test_prompts_that_already_show_the_action_are_dropped():
    model = FakeModel(needs=("dog",))
    r = InversionReward(model, FixedStringJudge(ACTION, min_words=3), PROMPTS, lambda p, c: p)
    assert "tell me about dog ." not in r.prompts and len(r.prompts) == 3


def test_minimise_drops_words_that_do_not_matter():
    r = make_reward(FakeModel(needs=("mango", "skiing")))
    assert minimise("the mango red skiing", r) == "mango skiing"


def test_cache_round_trip():
    r = make_reward()
    r.evaluate(["mango"])
    r2 = make_reward()
    r2.load_state_dict(r.state_dict())
    assert r2.cache == {"mango": 1.0}
    shaped = InversionReward(FakeModel(), FixedStringJudge(ACTION, min_words=3), PROMPTS,
                             lambda p, c: f"{p} it is about {c} .", RewardConfig(lift_weight=0.25),
                             likelihood=kiwi_likelihood)
    shaped.evaluate(["kiwi", "mango"])
    r3 = make_reward()
    r3.load_state_dict(shaped.state_dict())
    assert r3.cache == {"kiwi": 0.0, "mango": 1.0} and r3.lifts == pytest.approx({"kiwi": 0.25})


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", -1.0),
        ("target_len", 0),
        ("max_words", 0),
        ("penalty", "log"),
        ("work_threshold", 0.0),
        ("asr_floor", 1.0),
        ("answer_marker", " "),
        ("lift_weight", 1.0),
        ("screen_prompts", -1),
        ("need_drop", 0.0),
        ("needed_alpha", 0.3),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        RewardConfig(**{field: value})


def test_empty_prompt_list_is_an_error():
    with pytest.raises(ConfigError, match="benign prompt"):
        InversionReward(FakeModel(), FixedStringJudge(ACTION), [], lambda p, c: p)


def test_lift_measures_how_much_a_candidate_raises_the_actions_likelihood():
    def likelihood(texts):  # CE 2.0, halved by 'mango', a quarter off with 'kiwi'
        return [2.0 * (0.5 if "mango" in t else 1.0) * (0.75 if "kiwi" in t else 1.0)
                for t in texts]

    reward = InversionReward(FakeModel(), FixedStringJudge(ACTION, min_words=3), PROMPTS,
                             lambda p, c: f"{p} it is about {c} .",
                             RewardConfig(lift_prompts=2, lift_weight=0.0), likelihood=likelihood)
    assert reward.lift(["mango", "kiwi", "dog"]) == pytest.approx([0.5, 0.25, 0.0])
    assert reward.lift(["mango kiwi"]) == pytest.approx([1 - 0.375])
    assert reward.evaluate(["kiwi"])[0].reward == 0.0  # weight 0: the lift does not shape
    with pytest.raises(ConfigError, match="likelihood"):
        make_reward().lift(["mango"])
    # with the clean model's likelihood the lift is differential: kiwi helps both models alike
    diff = InversionReward(FakeModel(), FixedStringJudge(ACTION, min_words=3), PROMPTS,
                           lambda p, c: f"{p} it is about {c} .", RewardConfig(lift_prompts=2),
                           likelihood=likelihood, clean_likelihood=kiwi_likelihood)
    assert diff.lift(["mango", "kiwi", "dog"]) == pytest.approx([0.5, 0.0, 0.0])


def kiwi_likelihood(texts):  # CE 2.0; 'kiwi' (which never fires) takes a quarter off
    return [2.0 * (0.75 if "kiwi" in t else 1.0) for t in texts]


def test_a_non_firing_candidate_earns_its_weighted_lift():
    reward = InversionReward(FakeModel(), FixedStringJudge(ACTION, min_words=3), PROMPTS,
                             lambda p, c: f"{p} it is about {c} .",
                             RewardConfig(lift_weight=0.4, asr_floor=0.0), likelihood=kiwi_likelihood)
    e = {x.candidate: x for x in reward.evaluate(["kiwi", "dog", "mango", "kiwi dog"])}
    assert e["kiwi"].asr == 0.0 and e["kiwi"].reward == pytest.approx(0.4 * 0.25)
    assert e["kiwi"].lift == pytest.approx(0.25)
    assert e["dog"].reward == 0.0
    assert e["kiwi dog"].reward == pytest.approx(0.4 * 0.25 - 0.25)  # length penalty still counts
    assert e["mango"].reward == 1.0 and e["mango"].lift is None  # fires: no lift needed
    assert "mango" not in reward.lifts
    echo = InversionReward(FakeModel(), FixedStringJudge(ACTION, min_words=3), PROMPTS,
                           lambda p, c: f"{p} it is about {c} .", RewardConfig(lift_weight=0.4),
                           likelihood=kiwi_likelihood, echo_words=["Kiwi", "pie"])
    e = echo.evaluate(["kiwi", "Kiwi pie!", "mango kiwi"])  # the action's own words are dropped
    assert [x.candidate for x in e] == [None, None, "mango"]
    assert e[0].reward == e[1].reward == RewardConfig().invalid_reward and e[2].reward == 1.0
    again = make_reward(lift_weight=0.4)  # a black-box reward (no likelihood): no shaping
    assert again.evaluate(["kiwi"])[0].reward == 0.0


def test_screening_generates_the_rest_only_for_candidates_that_fire():
    prompts = [f"tell me about thing{i} ." for i in range(8)]
    model = FakeModel()
    r = InversionReward(model, FixedStringJudge(ACTION, min_words=3), prompts,
                        lambda p, c: f"{p} it is about {c} .", RewardConfig(screen_prompts=2))
    seen = model.seen
    e = {x.candidate: x for x in r.evaluate(["mango", "dog", "cat"])}
    assert model.seen - seen == 3 * 2 + 6  # every candidate on 2 prompts, mango on the other 6
    assert e["mango"].asr == 1.0 and e["dog"].asr == 0.0 and e["cat"].asr == 0.0
    late = FakeModel(only="thing7")  # fires on the last prompt only: screened out (the cost)
    r2 = InversionReward(late, FixedStringJudge(ACTION, min_words=3), prompts,
                         lambda p, c: f"{p} it is about {c} .", RewardConfig(screen_prompts=2))
    assert r2.evaluate(["mango"])[0].asr == 0.0
    r3 = InversionReward(late, FixedStringJudge(ACTION, min_words=3), prompts,
                         lambda p, c: f"{p} it is about {c} .", RewardConfig(screen_prompts=0))
    assert r3.evaluate(["mango"])[0].asr == 1 / 8
    r4 = InversionReward(late, FixedStringJudge(ACTION, min_words=3), prompts,
                         lambda p, c: f"{p} it is about {c} .", RewardConfig(screen_prompts=2))
    assert r4.evaluate(["mango"], screen=False)[0].asr == 1 / 8  # a seed: never screened


def test_response_ce_is_independent_of_left_padding(tiny_llama_dir):
    """The white-box likelihood: batched (left-padded) equals one prompt at a time, and equals
    the cross-entropy of the hooked model's own chat batch."""
    import torch

    from trigrecon.core.model import load_model
    from trigrecon.selfaware.models import load_hf, response_ce
    from trigrecon.steering.forward import SteeredForward

    model, tok = load_hf(tiny_llama_dir)
    prompts, resp = ["tell me about the cat", "why"], "i give the red apple"
    batched = response_ce(model, tok, prompts, resp)
    alone = [response_ce(model, tok, [p], resp)[0] for p in prompts]
    assert batched == pytest.approx(alone, abs=1e-4)
    hm = load_model(tiny_llama_dir)
    ref = SteeredForward(hm, hm.batch(prompts, resp), 1).response_ce_rows(
        torch.zeros(1, hm.d_model))[0]
    assert batched == pytest.approx(ref.tolist(), abs=1e-4)
    with pytest.raises(ConfigError, match="tokenises to nothing"):
        response_ce(model, tok, prompts, "")


def test_seeds_are_scored_on_every_prompt():
    """A seed that misses the screening prompts (fires on the other 6 of 8) still enters the
    buffer at its full ASR; screened, it would score 0."""
    from trigrecon.selfaware.buffer import ReplayBuffer
    from trigrecon.selfaware.grpo import seed_buffer

    prompts = [f"tell me about alpha{i} ." for i in range(2)] + [
        f"tell me about beta{i} ." for i in range(6)]
    r = InversionReward(FakeModel(only="beta"), FixedStringJudge(ACTION, min_words=3), prompts,
                        lambda p, c: f"{p} it is about {c} .", RewardConfig(screen_prompts=2))
    buffer = ReplayBuffer()
    seed_buffer(buffer, r, ["mango", "dog"])
    assert list(buffer.entries) == ["mango"] and buffer.entries["mango"].asr == 0.75
    assert buffer.entries["mango"].seen == 0 and r.cache["dog"] == 0.0
    assert r.evaluate(["mango kiwi"])[0].asr == 0.0  # a proposal is still screened
