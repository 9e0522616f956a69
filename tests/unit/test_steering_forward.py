"""The cached partial steered forward against a plain full forward with the shared hook."""

from __future__ import annotations

import pytest
import torch

from trigrecon.core.errors import ConfigError
from trigrecon.core.hooks import assert_no_hooks
from trigrecon.steering.forward import SteeredForward, add_to_user_tokens, full_forward_with_vector
from trigrecon.steering.losses import full_response_ce

PROMPTS = ["tell me a story about the cat", "what is a banana", "why is the sky blue",
           "write a poem about snow and the mountain"]
RESPONSE = "my red apple is big"


@pytest.fixture(scope="module")
def batch(tiny_hooked):
    return tiny_hooked.batch(PROMPTS, RESPONSE)


@pytest.mark.parametrize("model", ["tiny_hooked", "llama31_hooked"])
def test_partial_forward_equals_full_forward(model, request):
    hm = request.getfixturevalue(model)
    b = hm.batch(PROMPTS, RESPONSE)
    torch.manual_seed(0)
    v = torch.randn(3, hm.d_model)
    fwd = SteeredForward(hm, b, source=1, target=2)
    logits, target = fwd.logits(v), fwd.target_resid(v)
    ce = fwd.response_ce(v)
    for k in range(3):
        ref = full_forward_with_vector(hm, b, 1, v[k])
        ref_t = full_forward_with_vector(hm, b, 1, v[k], stop_at_layer=3)
        real = b.attention_mask
        torch.testing.assert_close(logits[k][real], ref[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(target[k][real], ref_t[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ce[k], full_response_ce(ref, b.tokens, b.response_mask),
                                   atol=1e-5, rtol=1e-5)
    assert_no_hooks(hm)


def test_zero_vector_changes_nothing(tiny_hooked, batch):
    fwd = SteeredForward(tiny_hooked, batch, source=1, target=3)
    zero = torch.zeros(2, tiny_hooked.d_model)
    plain = tiny_hooked.model(batch.tokens, attention_mask=batch.attention_mask.long())
    real = batch.attention_mask
    for k in range(2):
        torch.testing.assert_close(fwd.logits(zero)[k][real], plain[real])
        torch.testing.assert_close(fwd.target_resid(zero)[k], fwd.base_target_resid())


def test_steering_touches_only_user_tokens(tiny_hooked, batch):
    resid = torch.zeros(len(batch), batch.tokens.shape[1], tiny_hooked.d_model)
    out = add_to_user_tokens(resid, torch.ones(1, tiny_hooked.d_model), batch.user_mask)[0]
    assert torch.equal(out[..., 0].bool(), batch.user_mask)
    fwd = SteeredForward(tiny_hooked, batch, source=1, target=2)
    first_user = int(batch.user_mask[0].float().argmax())
    delta = fwd.target_resid(10 * torch.ones(1, tiny_hooked.d_model))[0] - fwd.base_target_resid()
    assert delta[0, :first_user].abs().max() == 0  # causal: nothing before the user text moves
    assert delta[0, first_user:].abs().max() > 0


def test_response_logits_only_at_response_positions(tiny_hooked, batch):
    fwd = SteeredForward(tiny_hooked, batch, source=0)
    v = torch.randn(2, tiny_hooked.d_model)
    full = fwd.logits(v)[:, :, :-1][:, fwd.resp_rows, fwd.resp_pos]
    torch.testing.assert_close(fwd.response_logits(v), full, atol=1e-5, rtol=1e-5)
    assert len(fwd.resp_targets) == int(batch.response_mask.sum())


def test_gradient_reaches_vectors(tiny_hooked, batch):
    fwd = SteeredForward(tiny_hooked, batch, source=1)
    v = torch.zeros(2, tiny_hooked.d_model, requires_grad=True)
    fwd.response_ce(v).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_no_hook_left_after_exception(tiny_hooked, batch):
    with pytest.raises(ConfigError):
        full_forward_with_vector(tiny_hooked, batch, 1, torch.ones(tiny_hooked.d_model + 1))
    assert_no_hooks(tiny_hooked)


def test_bad_inputs(tiny_hooked, batch):
    with pytest.raises(ConfigError, match="out of range"):
        SteeredForward(tiny_hooked, batch, source=tiny_hooked.n_layers)
    with pytest.raises(ConfigError, match="out of range"):
        SteeredForward(tiny_hooked, batch, source=-1)
    with pytest.raises(ConfigError, match="after"):
        SteeredForward(tiny_hooked, batch, source=2, target=1)
    fwd = SteeredForward(tiny_hooked, batch, source=1)
    with pytest.raises(ConfigError, match="vectors must be"):
        fwd.logits(torch.zeros(tiny_hooked.d_model))
    with pytest.raises(ConfigError, match="target layer"):
        fwd.target_resid(torch.zeros(1, tiny_hooked.d_model))
    no_resp = SteeredForward(tiny_hooked, tiny_hooked.batch(PROMPTS), source=1)
    with pytest.raises(ConfigError, match="no tokens"):
        no_resp.response_ce(torch.zeros(1, tiny_hooked.d_model))


@pytest.mark.parametrize("buckets", [1, 2, 4])
def test_bucketed_melbo_objective_equals_reference(tiny_hooked, batch, buckets):
    from trigrecon.steering.losses import melbo_objective

    v = torch.randn(3, tiny_hooked.d_model)
    fwd = SteeredForward(tiny_hooked, batch, source=1, target=2, max_buckets=buckets)
    plain = tiny_hooked.model(batch.tokens, attention_mask=batch.attention_mask.long(),
                              stop_at_layer=3)
    ref = torch.stack([
        melbo_objective(full_forward_with_vector(tiny_hooked, batch, 1, v[k], 3)[None], plain,
                        batch.attention_mask, p=2, q=1)[0] for k in range(3)])
    torch.testing.assert_close(fwd.melbo_objective(v, p=2, q=1), ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        melbo_objective(fwd.target_resid(v), fwd.base_target_resid(), batch.attention_mask),
        fwd.melbo_objective(v), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("model", ["tiny_hooked", "llama31_hooked"])
def test_prefix_cache_changes_no_number(model, request):
    """Keys/values of the shared template prefix are computed once; results and gradients agree
    with running every position (a system prompt makes the prefix long)."""
    hm = request.getfixturevalue(model)
    b = hm.batch(PROMPTS, RESPONSE, system="you are a helpful assistant")
    cached = SteeredForward(hm, b, source=1, target=2)
    plain = SteeredForward(hm, b, source=1, target=2, cache_prefix=False)
    assert cached.prefix >= 5 and plain.prefix == 0
    v = torch.randn(3, hm.d_model, generator=torch.Generator().manual_seed(0))
    for loss in ("melbo_objective", "response_ce"):
        xs = [v.clone().requires_grad_(True) for _ in range(2)]
        outs = [getattr(f, loss)(x) for f, x in zip((cached, plain), xs, strict=True)]
        torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-5)
        for out in outs:
            out.sum().backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-4, rtol=1e-4)
    real = b.attention_mask
    torch.testing.assert_close(cached.target_resid(v)[:, real], plain.target_resid(v)[:, real],
                               atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(cached.logits(v)[:, real], plain.logits(v)[:, real],
                               atol=1e-4, rtol=1e-5)


def test_prefix_cache_ignores_the_pad_id(tiny_hooked):
    """A prefix ending in a token that shares the pad id is still attended to (TransformerLens
    would mask it as trailing padding; Llama-3.1 pads with an eos that its template also uses)."""
    b = tiny_hooked.batch(PROMPTS, RESPONSE, system="you are a helpful assistant")
    tok = tiny_hooked.model.tokenizer
    old = tok.pad_token
    last = int(b.user_mask[0].float().argmax()) - 1  # the prefix's last token: '<user>'
    tok.pad_token = tok.convert_ids_to_tokens(int(b.tokens[0, last]))
    try:
        v = torch.randn(2, tiny_hooked.d_model, generator=torch.Generator().manual_seed(1))
        cached = SteeredForward(tiny_hooked, b, source=1).response_ce(v)
        plain = SteeredForward(tiny_hooked, b, source=1, cache_prefix=False).response_ce(v)
    finally:
        tok.pad_token = old
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=1e-5)


def test_shared_prefix_needs_identical_heads(tiny_hooked):
    from trigrecon.steering.forward import shared_prefix

    b = tiny_hooked.batch(PROMPTS, system="you are a helpful assistant")
    first_user = int(b.user_mask[0].float().argmax())
    assert shared_prefix(b) == first_user > 1
    b.tokens[1, 1] = b.tokens[1, 2]  # one prompt's header differs: nothing is shared
    assert shared_prefix(b) == 0


@pytest.mark.parametrize("model", ["tiny_hooked", "llama31_hooked"])
@pytest.mark.parametrize("system", [None, "you are a helpful assistant"])
def test_lean_blocks_match_the_hooked_blocks(model, system, request):
    """The fast path (steering/lean.py) against TransformerLens's own blocks: values and
    gradients of both losses, full logits and target residuals (GQA, llama3 rope, a prefix)."""
    hm = request.getfixturevalue(model)
    b = hm.batch(PROMPTS, RESPONSE, system=system)
    fast = SteeredForward(hm, b, source=1, target=2)
    plain = SteeredForward(hm, b, source=1, target=2, lean=False)
    assert fast.lean and not plain.lean
    v = torch.randn(3, hm.d_model, generator=torch.Generator().manual_seed(2))
    for loss in ("melbo_objective", "response_ce"):
        xs = [v.clone().requires_grad_(True) for _ in range(2)]
        outs = [getattr(f, loss)(x) for f, x in zip((fast, plain), xs, strict=True)]
        torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-5)
        for out in outs:
            out.sum().backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-4, rtol=1e-4)
    real = b.attention_mask
    torch.testing.assert_close(fast.logits(v)[:, real], plain.logits(v)[:, real],
                               atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.target_resid(v), plain.target_resid(v), atol=1e-4, rtol=1e-5)


def test_compiled_lean_blocks_match_the_hooked_blocks(llama31_hooked):
    """compile=True (torch.compile of the lean blocks) keeps values and gradients within 1e-4."""
    from torch._dynamo.utils import counters

    hm = llama31_hooked
    b = hm.batch(PROMPTS, RESPONSE, system="you are a helpful assistant")
    fast = SteeredForward(hm, b, source=1, target=2, compile=True)
    plain = SteeredForward(hm, b, source=1, target=2, lean=False)
    v = torch.randn(3, hm.d_model, generator=torch.Generator().manual_seed(2))
    before = counters["stats"]["unique_graphs"]
    xs = [v.clone().requires_grad_(True) for _ in range(2)]
    outs = [f.melbo_objective(x) for f, x in zip((fast, plain), xs, strict=True)]
    assert counters["stats"]["unique_graphs"] > before  # the blocks were compiled
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-5)
    for out in outs:
        out.sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-4, rtol=1e-4)
    w = hm.model.blocks[2].mlp.W_in
    old = w.detach().clone()
    try:  # other weights, same shapes: the compiled code must read them, not reuse the old
        with torch.no_grad():
            w.mul_(1.5)
        again = SteeredForward(hm, b, source=1, target=2, compile=True)
        plain = SteeredForward(hm, b, source=1, target=2, lean=False)
        torch.testing.assert_close(again.melbo_objective(v), plain.melbo_objective(v),
                                   atol=1e-4, rtol=1e-5)
    finally:
        with torch.no_grad():
            w.copy_(old)


def test_compile_needs_the_lean_blocks_and_a_compiler(tiny_hooked, batch, monkeypatch):
    with pytest.raises(ConfigError, match="needs the lean blocks"):
        SteeredForward(tiny_hooked, batch, source=1, target=2, lean=False, compile=True)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(ConfigError, match="'no-such-compiler-xyz' not found"):
        SteeredForward(tiny_hooked, batch, source=1, target=2, compile=True)


def test_hooks_take_the_hooked_path(tiny_hooked, batch):
    """A hook attached to the model sees its activation: the lean path steps aside."""
    fwd = SteeredForward(tiny_hooked, batch, source=1, target=2)
    seen: list[tuple[int, ...]] = []

    def look(x, hook):
        seen.append(tuple(x.shape))

    with tiny_hooked.model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", look)]):
        fwd.target_resid(torch.zeros(1, tiny_hooked.d_model))
    assert seen
    assert_no_hooks(tiny_hooked)


def test_equal_lengths_make_one_bucket():
    from trigrecon.steering.forward import length_buckets

    assert length_buckets([16] * 8, 4) == [list(range(8))]
    assert length_buckets([3, 9, 3, 9], 4) == [[0, 2], [1, 3]]


@pytest.mark.parametrize("model", ["tiny_hooked", "llama31_hooked"])
def test_lean_decoding_matches_the_hooked_model(model, request):
    """Greedy decoding through LeanBlocks.decode (its own KV cache) == TransformerLens's."""
    from trigrecon.core.generate import _lean_runner, greedy_tokens

    hm = request.getfixturevalue(model)
    tokens = hm.batch(PROMPTS[:1]).tokens
    stops = torch.tensor([-1])  # never stop: compare all 6 tokens
    plain = greedy_tokens(hm.model, tokens, 6, stops)
    fast = greedy_tokens(hm.model, tokens, 6, stops, fast=_lean_runner(hm.model))
    assert torch.equal(plain, fast)
