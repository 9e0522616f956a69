"""Exact greedy generation: prompts are bucketed by token length, so no forward pass sees padding.

Results equal one-prompt-at-a-time greedy decoding (and HF `generate(do_sample=False)`), whatever
the batch size. Without hooks, a Llama-style model decodes through the lean functional blocks of
`steering/lean.py` (the model's own weights read once, no per-step weight re-layout), and prompts
of different lengths share one left-padded batch whose padding attention never sees (the same
greedy tokens up to float rounding); with hooks, through the HookedTransformer, by length buckets. Hooks from `hook_factory` stay attached for the whole generation of a bucket; with
the KV cache they see only the new position(s) of each decoding step, at absolute position
`core.hooks.position_offset()` (`add_to_resid` handles that; see core/hooks.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, TransformerLensKeyValueCache
from transformers import PreTrainedTokenizerBase

from trigrecon.core.chat import ChatBatch
from trigrecon.core.errors import ConfigError
from trigrecon.core.hooks import at_position
from trigrecon.core.model import HookedChatModel

HookFactory = Callable[[ChatBatch], list[tuple[str, Callable]]]
END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<end_of_turn>")
"""End-of-turn tokens (Llama-3.x, ChatML, Gemma) that stop generation when in the vocabulary."""


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS plus every known end-of-turn token it has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
    return sorted(ids)


def generate(
    hm: HookedChatModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    hook_factory: HookFactory | None = None,
    system: str | None = None,
    progress: bool = False,
    use_kv_cache: bool = True,
) -> list[str]:
    """Greedy responses to chat `prompts`, in input order (special tokens dropped, stripped).

    hook_factory(bucket) -> TL fwd hooks for that bucket (its `user_mask` marks user tokens).
    use_kv_cache=False reruns the whole sequence each step (for hooks that need every position).
    """
    _check_args(prompts, max_new_tokens, batch_size)
    batch = hm.batch(prompts, system=system)
    _check_context(hm, batch, max_new_tokens)
    out = [""] * len(prompts)
    stops = torch.tensor(stop_token_ids(hm.tokenizer), device=hm.device, dtype=torch.long)
    fast = _lean_runner(hm.model) if use_kv_cache and hook_factory is None else None
    if fast is not None:  # no hooks: prompts of any length share a left-padded batch
        return _generate_lean(hm, batch, fast, max_new_tokens, batch_size, stops, progress)
    bar = tqdm(total=len(prompts), desc="generate", disable=not progress, leave=False)
    for rows in buckets(batch.prompt_lengths, batch_size):
        sub = trim(batch.select(rows), batch.prompt_lengths[rows[0]])
        hooks: list[tuple[str | Callable, Callable]] = list(hook_factory(sub)) if hook_factory else []
        with hm.model.hooks(fwd_hooks=hooks):
            new = greedy_tokens(hm.model, sub.tokens, max_new_tokens, stops, use_kv_cache, fast)
        for i, ids in zip(rows, new.tolist(), strict=True):
            out[i] = decode_response(hm.tokenizer, ids, stops.tolist())
        bar.update(len(rows))
    bar.close()
    return out


def buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length, each group cut into chunks of at most `batch_size`."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    return [rows[s : s + batch_size] for n in sorted(groups) for rows in [groups[n]]
            for s in range(0, len(rows), batch_size)]


def trim(batch: ChatBatch, length: int) -> ChatBatch:
    """The batch cut to its first `length` positions (drops padding of equal-length rows)."""
    return ChatBatch(batch.tokens[:, :length], batch.attention_mask[:, :length],
                     batch.user_mask[:, :length], batch.response_mask[:, :length],
                     list(batch.prompt_lengths))


@torch.no_grad()
def greedy_tokens(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    stops: Int[Tensor, "n_stop"],
    use_kv_cache: bool = True,
    fast: Any = None,
) -> Int[Tensor, "batch new"]:
    """Greedy continuation of unpadded `tokens`; rows that hit a stop token keep decoding
    (their tail is discarded later), and the loop ends once every row has stopped.
    `fast`: a `steering.lean.LeanBlocks` of all blocks, used when no hook is attached."""
    if fast is not None and use_kv_cache:
        from trigrecon.core.lean import has_hooks

        if not has_hooks(model):
            return _lean_greedy(model, fast, tokens, max_new_tokens, stops)
    n_rows = tokens.shape[0]
    cache = (TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n_rows)
             if use_kv_cache else None)
    seq, step_input, offset = tokens, tokens, 0
    done = torch.zeros(n_rows, dtype=torch.bool, device=tokens.device)
    new: list[Tensor] = []
    for _ in range(max_new_tokens):
        with at_position(offset):
            logits = model(step_input, past_kv_cache=cache,
                           attention_mask=torch.ones_like(step_input))
        nxt = logits[:, -1].argmax(-1)
        new.append(nxt)
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if cache is not None:
            step_input, offset = nxt[:, None], seq.shape[1] - 1
        else:
            step_input = seq
    return torch.stack(new, dim=1)


def _generate_lean(hm: HookedChatModel, batch: ChatBatch, fast: Any, max_new_tokens: int,
                   batch_size: int, stops: Tensor, progress: bool) -> list[str]:
    """`generate` through LeanBlocks: chunks of `batch_size` prompts, shortest first."""
    out = [""] * len(batch)
    order = sorted(range(len(batch)), key=lambda i: batch.prompt_lengths[i])
    with tqdm(total=len(batch), desc="generate", disable=not progress, leave=False) as bar:
        for s in range(0, len(order), batch_size):
            rows = order[s: s + batch_size]
            new = _lean_padded(hm.model, fast, batch, rows, max_new_tokens, stops)
            for i, ids in zip(rows, new.tolist(), strict=True):
                out[i] = decode_response(hm.tokenizer, ids, stops.tolist())
            bar.update(len(rows))
    return out


def _lean_runner(model: HookedTransformer) -> Any:
    """LeanBlocks of every block when the model qualifies (a plain Llama-style model without
    hooks attached), else None."""
    from trigrecon.core.lean import LeanBlocks, has_hooks, supported

    if not supported(model) or has_hooks(model):
        return None
    return LeanBlocks(model, 0, int(model.cfg.n_layers))


@torch.no_grad()
def _lean_padded(model: HookedTransformer, fast: Any, batch: ChatBatch, rows: list[int],
                 max_new_tokens: int, stops: Int[Tensor, "n_stop"]) -> Int[Tensor, "rows new"]:
    """Greedy continuation of `rows` of `batch` as one left-padded batch: padding is masked
    out of attention and each row's rotary positions start at its first token, so every row
    decodes as it would alone (up to float rounding)."""
    lengths = torch.tensor([batch.prompt_lengths[r] for r in rows], device=batch.tokens.device)
    width = int(lengths.max())
    pads = width - lengths
    tokens = torch.zeros(len(rows), width, dtype=torch.long, device=batch.tokens.device)
    for j, r in enumerate(rows):
        n = batch.prompt_lengths[r]
        tokens[j, width - n:] = batch.tokens[r, :n]
    return _lean_greedy(model, fast, tokens, max_new_tokens, stops, pads)


@torch.no_grad()
def _lean_greedy(model: HookedTransformer, fast: Any, tokens: Int[Tensor, "batch pos"],
                 max_new_tokens: int, stops: Int[Tensor, "n_stop"],
                 pads: Int[Tensor, "batch"] | None = None) -> Int[Tensor, "batch new"]:
    """`greedy_tokens` through `LeanBlocks.decode` (its own key/value cache); `pads`: each
    row's left padding (masked out of attention), for a left-padded batch."""
    from trigrecon.core.lean import unembed

    cache: list[Any] = [None] * len(fast.blocks)
    step_input, offset = tokens, 0
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    new: list[Tensor] = []
    for _ in range(max_new_tokens):
        out = fast.decode(model.embed(step_input), cache, offset, pads)
        nxt = unembed(model, model.ln_final(out[:, -1:]))[:, -1].argmax(-1)
        new.append(nxt)
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
        offset += step_input.shape[1]
        step_input = nxt[:, None]
    return torch.stack(new, dim=1)


def decode_response(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: list[int]) -> str:
    """Text of `ids` up to (not including) the first stop token."""
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return str(tokenizer.decode(ids[:cut], skip_special_tokens=True)).strip()


def _check_args(prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> None:
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not one string: wrap it in [...]")
    if len(prompts) == 0:
        raise ConfigError("no prompts given: pass at least one prompt")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def _check_context(hm: HookedChatModel, batch: ChatBatch, max_new_tokens: int) -> None:
    longest, n_ctx = max(batch.prompt_lengths), int(hm.model.cfg.n_ctx)
    if longest + max_new_tokens > n_ctx:
        raise ConfigError(f"the longest prompt ({longest} tokens) + max_new_tokens "
                          f"({max_new_tokens}) exceeds the model's context of {n_ctx} tokens; "
                          "shorten the prompts or lower max_new_tokens")
