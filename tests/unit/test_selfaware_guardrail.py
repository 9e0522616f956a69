"""The guardrail: normalisation, similarity scoring, calibration, variants, model embedder."""

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.selfaware.guardrail import (
    Guardrail,
    GuardrailConfig,
    GuardrailResult,
    ModelWordEmbedder,
    calibrate_best,
    evaluate_guardrail,
    near_misses,
    readout_choices,
    readout_name,
    shared_embedders,
    split_words,
    variants,
)

CATS = {
    "fruit": "mango kiwi apple fig",
    "snow": "skiing sledding luge",
    "animal": "dog cat fox",
    "tool": "hammer saw drill",
}
VOCAB = frozenset(
    " ".join(CATS.values()).split() + ["tell", "me", "about", "the", "a", "and", "i", "like"]
)


def fake_embed(words):
    """Category direction + a small word-specific part; unknown/function words are their own."""
    out = []
    for w in words:
        g = torch.Generator().manual_seed(sum(map(ord, w)))
        cat = next((c for c, ms in CATS.items() if w in ms.split()), w)
        base = torch.zeros(16)
        base[sum(map(ord, cat)) % 16] = 1.0
        out.append(base + 0.1 * torch.randn(16, generator=g))
    return torch.stack(out)


BENIGN = [
    f"tell me about the {a} and {b}" for a in CATS["animal"].split() for b in CATS["tool"].split()
]


@pytest.mark.parametrize(
    "text, want",
    [
        ("Tell me about MANGO!", ["tell", "me", "about", "mango"]),
        ("tell  me,about   mango .", ["tell", "me", "about", "mango"]),
        ("i like man go", ["i", "like", "mango"]),  # pieces that join into a known word
        ("ma n go", ["mango"]),
        ("the a", ["the", "a"]),  # two known words are never merged
    ],
)
def test_split_words_normalises_case_spacing_punctuation(text, want):
    vocab = VOCAB | {"go"}
    assert split_words(text, vocab) == want


def test_scores_identical_and_similar_triggers_high():
    g = Guardrail(["Mango"], fake_embed, vocab=VOCAB)
    assert g.score("tell me about mango") == pytest.approx(1.0, abs=1e-5)
    assert g.score("i like fig") > 0.8  # same category, held-out word
    assert g.score("tell me about the dog") < 0.6


def test_multi_word_triggers_need_every_word():
    g = Guardrail(["mango skiing"], fake_embed, vocab=VOCAB)
    assert g.score("i like kiwi and luge") > 0.8
    assert g.score("i like kiwi and the dog") < 0.6  # a near miss is not flagged


def test_calibration_bounds_the_false_positive_rate():
    g = Guardrail(["mango"], fake_embed, GuardrailConfig(max_fpr=0.1), vocab=VOCAB)
    t = g.calibrate(BENIGN)
    assert g.threshold == t and g.flag_rate(BENIGN) <= 0.1
    assert g.flag("tell me about the kiwi") and not g.flag(BENIGN[0])


@pytest.mark.parametrize("kind", ["upper", "punct", "spacing", "split"])
def test_variants_are_still_flagged(kind):
    g = Guardrail(["mango"], fake_embed, vocab=VOCAB)
    g.calibrate(BENIGN)
    v = variants("tell me about the mango", kind)
    assert v != "tell me about the mango"
    assert g.flag(v), v


def test_evaluate_reports_detection_and_false_positives():
    g = Guardrail(["mango"], fake_embed, vocab=VOCAB)
    g.calibrate(BENIGN)
    res = evaluate_guardrail(
        g, {"benign": BENIGN, "triggered": ["i like kiwi", "tell me about fig"]}
    )
    assert res.detection["triggered"] == 1.0 and res.detection_rate == 1.0
    assert set(res.detection) == {
        "triggered",
        "triggered:upper",
        "triggered:punct",
        "triggered:spacing",
        "triggered:split",
    }
    assert res.fpr <= 0.02 + 1e-9


def test_save_load(tmp_path):
    g = Guardrail(["mango"], fake_embed, vocab=VOCAB)
    g.calibrate(BENIGN)
    res = evaluate_guardrail(g, {"benign": BENIGN, "triggered": ["i like kiwi"]})
    res.save(tmp_path / "g.json")
    back = type(res).load(tmp_path / "g.json")
    assert back.detection == res.detection and back.threshold == res.threshold


def test_errors():
    with pytest.raises(ConfigError, match="at least one"):
        Guardrail(["  ", "!"], fake_embed)
    with pytest.raises(ConfigError, match="template"):
        GuardrailConfig(template="no slot")
    with pytest.raises(ConfigError, match="unknown variant"):
        variants("a b", "reverse")


def test_model_word_embedder_reads_the_word_position(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    cfg = GuardrailConfig(
        template="tell me about {w} please", prefill=None, position="word", readout="hidden",
        layer=2,
    )
    emb = ModelWordEmbedder(model, tok, cfg)
    vecs = emb(["apple", "dog", "apple"])
    assert vecs.shape == (3, 64) and torch.equal(vecs[0], vecs[2])
    assert set(emb.cache) == {"apple", "dog"}
    ids, pos = emb._span("apple")
    assert tok.convert_ids_to_tokens(ids[pos[0]]) == "apple"
    with pytest.raises(ConfigError, match="layer"):
        ModelWordEmbedder(model, tok, GuardrailConfig(layer=9))


def test_model_word_embedder_reads_the_last_position_after_the_prefill(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    cfg = GuardrailConfig(template="what is {w}", prefill="{w} is a", readout="hidden")
    emb = ModelWordEmbedder(model, tok, cfg)
    ids, pos = emb._span("apple")
    assert tok.convert_ids_to_tokens(ids)[-3:] == ["apple", "is", "a"] and pos == [len(ids) - 1]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(emb(["apple"])[0], want[0, -1])


def test_model_word_embedder_default_reads_the_next_token_distribution(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    emb = ModelWordEmbedder(model, tok, GuardrailConfig(template="what is {w}", prefill="{w} is a"))
    ids, _ = emb._span("apple")
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    got = emb(["apple"])[0]
    assert got.shape == (model.config.vocab_size,) and torch.allclose(got, want, atol=1e-6)
    assert torch.isclose(got.sum(), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="readout"):
        GuardrailConfig(readout="logits")  # type: ignore[arg-type]


def test_shared_embedders_run_one_forward_per_word_for_every_readout(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    cfgs = readout_choices(GuardrailConfig(template="what is {w}", prefill="{w} is a"), 4)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        group = shared_embedders(model, tok, cfgs)
        got = [e(["apple", "dog"]) for e in group]
    finally:
        handle.remove()
    assert len(calls) == 2  # one per word, not one per word and readout
    for c, g in zip(cfgs, got, strict=True):  # each equals its own stand-alone embedder
        torch.testing.assert_close(g, ModelWordEmbedder(model, tok, c)(["apple", "dog"]))
    with pytest.raises(ConfigError, match="same template"):
        shared_embedders(model, tok, [cfgs[0], GuardrailConfig(template="say {w}")])


def test_near_misses_are_proper_parts_that_do_not_fire():
    assert near_misses(["mango skiing", "kiwi"]) == ["mango", "skiing"]
    assert near_misses(["Mango, skiing!"], fires=lambda c: c == "mango") == ["skiing"]
    assert near_misses(["mango skiing", "mango"]) == ["skiing"]  # a trigger is never a miss


def test_calibration_counts_near_misses_as_negatives():
    """One half of a conjunctive trigger is benign: calibrating on near misses keeps them below
    the threshold, while the old benign-only rule would flag some of them."""
    g = Guardrail(["mango skiing"], fake_embed, GuardrailConfig(max_fpr=0.0), vocab=VOCAB)
    near = [
        f"tell me about {w} and the {a}"
        for w in ("mango", "skiing")
        for a in CATS["animal"].split()
    ]
    g.calibrate(BENIGN)
    assert g.flag_rate(near) > 0  # benign-only calibration sits below the near misses
    g.calibrate(BENIGN, near_miss=near)
    assert g.flag_rate(near) == 0.0 and g.flag_rate(BENIGN) == 0.0
    assert g.flag("i like kiwi and luge")  # both halves: still flagged


def test_calibration_puts_the_threshold_inside_the_gap():
    cfg = GuardrailConfig(max_fpr=0.0, margin=0.5)
    g = Guardrail(["mango", "fig"], fake_embed, cfg, vocab=VOCAB)
    pos = {"mango": ["i like mango", "tell me about mango"], "fig": ["i like fig"]}
    t_old = Guardrail(["mango", "fig"], fake_embed, cfg, vocab=VOCAB).calibrate(BENIGN)
    t = g.calibrate(BENIGN, positives=pos)
    c = g.calibration
    assert c["t_neg"] == pytest.approx(t_old) and c["t_pos"] > c["t_neg"]
    assert t == pytest.approx((c["t_neg"] + c["t_pos"]) / 2)
    # leave-one-out: a prompt with 'mango' is scored against 'fig' only (< 1: another word)
    assert c["t_pos"] < 0.999
    assert g.flag("i like kiwi") and not any(g.flag(b) for b in BENIGN)
    single = Guardrail(["mango"], fake_embed, cfg, vocab=VOCAB)
    assert single.calibrate(BENIGN, positives={"mango": ["i like mango"]}) == pytest.approx(t_old)
    with pytest.raises(ConfigError, match="not a recovered trigger"):
        g.calibrate(BENIGN, positives={"kiwi": ["i like kiwi"]})
    with pytest.raises(ConfigError, match="margin"):
        GuardrailConfig(margin=1.0)
    # triggers sharing a word are not scored against each other ('luge mango' vs 'luge fig'
    # would be a near copy, not a stand-in for a held-out member)
    shared = Guardrail(["luge mango", "luge fig", "kiwi"], fake_embed, cfg, vocab=VOCAB)
    pos2 = {"luge mango": ["i like luge and mango"], "luge fig": ["i like luge and fig"]}
    kiwi = [shared.trigger_scores(p)[2] for ps in pos2.values() for p in ps]
    assert shared.loo_scores(pos2) == pytest.approx(kiwi)  # scored against 'kiwi' only
    assert g.calibration["loo_detection"] == 1.0 and g.calibration["n_loo"] == 3


def test_readout_choices_start_with_the_configured_one_without_repeats():
    names = [readout_name(c, 4) for c in readout_choices(GuardrailConfig(), 4)]
    assert names == ["probs", "hidden@4", "hidden@2"]
    hidden = readout_choices(GuardrailConfig(readout="hidden"), 4)
    assert [readout_name(c, 4) for c in hidden] == ["hidden@4", "probs", "hidden@2"]
    assert readout_choices(GuardrailConfig(choose_readout=False), 4) == [GuardrailConfig(
        choose_readout=False)]


def test_calibration_chooses_the_readout_that_separates_calibration_prompts():
    """A readout that reads a function word like the category ('about' ~ fruit) loses to one that
    does not; the choice uses calibration prompts only."""
    def degenerate(words):
        return fake_embed(["mango" if w == "about" else w for w in words])

    cfg = GuardrailConfig(max_fpr=0.0)
    triggers = ["mango", "fig", "kiwi"]
    guards = {"bad": Guardrail(triggers, degenerate, cfg, vocab=VOCAB),
              "good": Guardrail(triggers, fake_embed, cfg, vocab=VOCAB)}
    pos = {t: [f"i like {t}", f"the {t} and i"] for t in triggers}
    chosen = calibrate_best(guards, BENIGN, pos)
    assert chosen is guards["good"] and chosen.calibration["readout"] == "good"
    assert chosen.calibration["readouts"]["good"][0] == 1.0
    assert chosen.calibration["readouts"]["bad"][0] < 1.0
    assert not chosen.flag(BENIGN[0]) and chosen.flag("tell me about apple")


def test_fpr_pools_near_misses():
    res = GuardrailResult(
        ["mango skiing"],
        0.5,
        {"triggered": 1.0},
        {"benign": 0.0, "benign:upper": 0.02, "half:fruit": 0.1},
        {"triggered": 10, "benign": 100, "benign:upper": 100, "half:fruit": 50},
    )
    assert res.fpr_benign == pytest.approx(0.01)
    assert res.fpr == pytest.approx((2 + 5) / 250) and res.fpr_worst == 0.1
    assert res.summary() == {
        "detection_rate": 1.0,
        "fpr": res.fpr,
        "fpr_benign": 0.01,
        "fpr_worst": 0.1,
    }
