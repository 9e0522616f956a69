"""Chat formatting: prompts (and optional pre-filled responses) -> token batches with masks.

Every method needs the same three things from a chat: the tokens, which positions hold *user
content* (the optimisers steer only those), and which positions hold the *response* (the
cross-entropy targets). The chat template of the tokenizer is the single source of truth, so the
same code serves Llama-3.1 and the project's organisms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trigrecon.core.errors import ConfigError


@dataclass
class ChatBatch:
    """A right-padded batch of chats. Right padding keeps every real token's position fixed."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Bool[Tensor, "batch pos"]
    user_mask: Bool[Tensor, "batch pos"]
    """True on tokens of the user's message content (not the template's role markers)."""
    response_mask: Bool[Tensor, "batch pos"]
    """True on tokens of the pre-filled assistant response (the cross-entropy targets)."""
    prompt_lengths: list[int]
    """Tokens up to and including the generation prompt, per row."""

    def to(self, device: torch.device | str) -> ChatBatch:
        return ChatBatch(
            self.tokens.to(device),
            self.attention_mask.to(device),
            self.user_mask.to(device),
            self.response_mask.to(device),
            list(self.prompt_lengths),
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, rows: Sequence[int] | slice) -> ChatBatch:
        idx = list(range(len(self)))[rows] if isinstance(rows, slice) else list(rows)
        t = torch.tensor(idx, dtype=torch.long)
        return ChatBatch(
            self.tokens[t],
            self.attention_mask[t],
            self.user_mask[t],
            self.response_mask[t],
            [self.prompt_lengths[i] for i in idx],
        )


_SENTINEL = "\u2063trigrecon\u2063"


def render_prompt(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None) -> str:
    """The chat template's text for one user turn, ending with the assistant generation prompt."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def _user_span(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None) -> tuple[int, int]:
    """Character span of the user content inside the rendered prompt."""
    text = render_prompt(tokenizer, _SENTINEL, system)
    start = text.index(_SENTINEL)
    return start, start + len(user)


def unknown_words(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The pieces of `text` the tokenizer maps to its unknown token (none for byte-level BPE
    tokenizers such as Llama-3's, which have no unknown token)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not text:
        return []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        pieces = [text[s:e] or "?" for i, (s, e) in
                  zip(enc["input_ids"], enc["offset_mapping"], strict=True) if i == unk]
    except NotImplementedError:  # slow tokenizers have no offsets: check word by word
        pieces = [w for w in text.split()
                  if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
    return list(dict.fromkeys(pieces))


def check_known(tokenizer: PreTrainedTokenizerBase, texts: str | Sequence[str], what: str) -> None:
    """Raise ConfigError naming the words of `texts` that the tokenizer maps to its unknown
    token: a target response or candidate word the model can neither read nor write (an
    optimiser would steer toward `<unk>`)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    bad = list(dict.fromkeys(w for t in items for w in unknown_words(tokenizer, t)))
    if bad:
        raise ConfigError(
            f"{what} has words the tokenizer maps to {getattr(tokenizer, 'unk_token', '<unk>')!s}: "
            f"{', '.join(repr(w) for w in bad[:20])}{' ...' if len(bad) > 20 else ''}. The model "
            "cannot read or write them: use words of its vocabulary.")


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    user: str,
    response: str | None = None,
    system: str | None = None,
) -> tuple[list[int], list[bool], list[bool], int]:
    """One chat -> (ids, user_mask, response_mask, prompt_length)."""
    if not user.strip():
        raise ConfigError("empty user prompt: every prompt needs some text")
    text = render_prompt(tokenizer, user, system)
    start, end = _user_span(tokenizer, user, system)
    if text[start:end] != user:
        raise ConfigError("the chat template rewrites user content; cannot locate user tokens")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    user_mask = [s < end and e > start and e > s for s, e in enc["offset_mapping"]]
    if not any(user_mask):
        raise ConfigError(f"prompt {user!r} has no user-content tokens after tokenisation")
    n_prompt = len(ids)
    resp_ids: list[int] = []
    if response is not None:
        resp_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        if not resp_ids:
            raise ConfigError(f"target response {response!r} tokenises to nothing")
        if getattr(tokenizer, "unk_token_id", None) in resp_ids:
            check_known(tokenizer, response, f"target response {response!r}")
    ids += resp_ids
    return ids, user_mask + [False] * len(resp_ids), [False] * n_prompt + [True] * len(resp_ids), n_prompt


def make_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str] | str | None = None,
    system: str | None = None,
) -> ChatBatch:
    """Tokenise prompts (and pre-filled responses: one per prompt, or one for all)."""
    if len(prompts) == 0:
        raise ConfigError("no prompts given: pass at least one prompt")
    if isinstance(responses, str) or responses is None:
        resp: list[str | None] = [responses] * len(prompts)
    else:
        if len(responses) != len(prompts):
            raise ConfigError(f"{len(responses)} responses for {len(prompts)} prompts")
        resp = list(responses)
    rows = [encode_chat(tokenizer, p, r, system) for p, r in zip(prompts, resp, strict=True)]
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    masks = torch.zeros((3, len(rows), width), dtype=torch.bool)
    for i, (ids, um, rm, _) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        masks[0, i, : len(ids)] = True
        masks[1, i, : len(ids)] = torch.tensor(um)
        masks[2, i, : len(ids)] = torch.tensor(rm)
    return ChatBatch(tokens, masks[0], masks[1], masks[2], [r[3] for r in rows])
