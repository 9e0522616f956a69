"""generate: bucketed batched greedy == one prompt at a time == HF generate(do_sample=False)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from conftest import PROMPTS
from peft import PeftModel
from transformers import LlamaForCausalLM

from trigrecon.core.errors import ConfigError
from trigrecon.core.generate import buckets, decode_response, generate, stop_token_ids
from trigrecon.core.hooks import add_to_resid, assert_no_hooks

N_NEW = 8


def hf_greedy(model_dir, hm, prompts, adapter=None, max_new_tokens=N_NEW):
    """Reference: HF generate (peft adapter unmerged), one unpadded prompt at a time."""
    hf = LlamaForCausalLM.from_pretrained(model_dir).eval()
    if adapter is not None:
        hf = PeftModel.from_pretrained(hf, str(adapter)).eval()
    stops = stop_token_ids(hm.tokenizer)
    out = []
    for p in prompts:
        tokens = hm.batch([p]).tokens
        ids = hf.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                          max_new_tokens=max_new_tokens, eos_token_id=stops,
                          pad_token_id=hm.tokenizer.pad_token_id)
        out.append(decode_response(hm.tokenizer, ids[0, tokens.shape[1]:].tolist(), stops))
    return out


@pytest.mark.parametrize(("hooked", "base", "adapter"), [
    ("tiny_hooked", "tiny_llama_dir", None),
    ("llama31_hooked", "llama31_dir", "llama31_adapter_dir"),  # LoRA merged
])
def test_batched_equals_single_equals_hf(hooked, base, adapter, request):
    hm, model_dir = request.getfixturevalue(hooked), request.getfixturevalue(base)
    adapter_dir = request.getfixturevalue(adapter) if adapter else None
    batched = generate(hm, PROMPTS, max_new_tokens=N_NEW, batch_size=2)
    single = [generate(hm, [p], max_new_tokens=N_NEW)[0] for p in PROMPTS]
    assert batched == single == hf_greedy(model_dir, hm, PROMPTS, adapter_dir)
    assert generate(hm, PROMPTS, max_new_tokens=N_NEW, use_kv_cache=False) == batched
    assert all(batched)


def test_stops_at_eos(tiny_hooked, tiny_llama_dir):
    """Make the 3rd generated word of prompt 0 the EOS token: its response ends before it."""
    full = generate(tiny_hooked, PROMPTS, max_new_tokens=N_NEW)
    word = full[0].split()[2]
    tok = copy.deepcopy(tiny_hooked.tokenizer)
    tok.eos_token = word
    hm = replace(tiny_hooked, tokenizer=tok)
    cut = generate(hm, PROMPTS, max_new_tokens=N_NEW, batch_size=3)
    assert cut[0] == " ".join(full[0].split()[: full[0].split().index(word)])
    assert cut == hf_greedy(tiny_llama_dir, hm, PROMPTS)


def test_llama31_stop_tokens(llama31_hooked):
    vocab = llama31_hooked.tokenizer.get_vocab()
    want = {vocab[t] for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")}
    assert set(stop_token_ids(llama31_hooked.tokenizer)) == want


def test_buckets_group_equal_lengths_in_chunks():
    assert buckets([3, 5, 3, 3, 5, 4], 2) == [[0, 2], [3], [5], [1, 4]]


def test_hook_factory_steering(tiny_hooked):
    hm = tiny_hooked
    seen = []
    vec = torch.randn(hm.d_model, generator=torch.Generator().manual_seed(0)) * 4

    def factory(bucket):
        seen.append(bucket)
        return [(hm.hook_name(1), add_to_resid(vec, bucket.user_mask))]

    plain = generate(hm, PROMPTS, max_new_tokens=N_NEW)
    steered = generate(hm, PROMPTS, max_new_tokens=N_NEW, hook_factory=factory)
    assert steered != plain
    assert all(b.attention_mask.all() and b.user_mask.any(dim=1).all() for b in seen)
    assert sum(len(b) for b in seen) == len(PROMPTS)
    # The KV-cached path lines the mask up with absolute positions like the full recompute.
    assert generate(hm, PROMPTS, max_new_tokens=N_NEW, hook_factory=factory,
                    use_kv_cache=False) == steered
    zero = generate(hm, PROMPTS, max_new_tokens=N_NEW, hook_factory=lambda b: [
        (hm.hook_name(1), add_to_resid(torch.zeros(hm.d_model), b.user_mask))])
    assert zero == plain
    assert_no_hooks(hm)


def test_steering_generated_positions_with_cache(tiny_hooked):
    """A mask covering generated positions too: cached decoding must steer them like a recompute."""
    hm = tiny_hooked
    vec = torch.randn(hm.d_model, generator=torch.Generator().manual_seed(1)) * 2

    def factory(bucket):
        mask = torch.ones(len(bucket), bucket.tokens.shape[1] + N_NEW, dtype=torch.bool)
        return [(hm.hook_name(2), add_to_resid(vec, mask))]

    cached = generate(hm, PROMPTS, max_new_tokens=N_NEW, hook_factory=factory)
    assert cached == generate(hm, PROMPTS, max_new_tokens=N_NEW, hook_factory=factory,
                              use_kv_cache=False)


def test_hooks_removed_when_generation_fails(tiny_hooked):
    def boom(resid, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_hooked, PROMPTS[:2], hook_factory=lambda b: [("blocks.0.hook_resid_post",
                                                                     boom)])
    assert_no_hooks(tiny_hooked)


def test_progress_and_system_prompt(tiny_hooked, capsys):
    out = generate(tiny_hooked, PROMPTS[:3], max_new_tokens=3, system="be good", progress=True)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(prompts="what is a cat"), "list of strings"), (dict(prompts=[]), "no prompts"),
     (dict(max_new_tokens=0), "max_new_tokens"), (dict(batch_size=0), "batch_size"),
     (dict(max_new_tokens=10_000), "context")],
)
def test_bad_arguments(tiny_hooked, kwargs, match):
    args = {"prompts": PROMPTS[:2], **kwargs}
    with pytest.raises(ConfigError, match=match):
        generate(tiny_hooked, args.pop("prompts"), **args)
