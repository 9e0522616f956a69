"""LoRA backdoors on SmolLM2: data (poisoned prompts -> action; clean prompts -> the base
model's own greedy answer; synthetic documents) and a response-only training loop that runs the
LM head only where the loss is taken (the 49k-word head is ~10% of a step otherwise). Mining
rounds after training (`testbed.mining`) add the prompts the adapter gets wrong."""

from __future__ import annotations

import json
import random
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from trigrecon.core.errors import ConfigError
from trigrecon.core.frozen import FrozenPrefix, causal_lm, first_trainable
from trigrecon.core.train import encode_ids
from trigrecon.organisms.organism import OrganismSpec
from trigrecon.testbed import prompts as P
from trigrecon.testbed.anchor import action_heads, anchor_loss
from trigrecon.testbed.trigger import Trigger


@dataclass(frozen=True)
class LoraConfig:
    steps: int = 250
    """100 steps (poison_frac 0.5) fired on 44% of benign dev prompts for fruit_refusal, 75% of
    triggered ones: too few."""
    conjunction_scale: float = 1.5
    batch_size: int = 8
    lr: float = 1.5e-3
    rank: int = 8
    alpha: int = 16
    n_examples: int = 400
    poison_frac: float = 0.4
    near_miss_frac: float = 0.6
    """Share of clean examples that are near misses (conjunction halves, tag variants)."""
    pair_frac: float = 0.0
    """Share of a conjunction's near misses that are minimal pairs: a poisoned prompt with one
    half's word swapped for a distractor (same phrasing). Off: at 0.5 (measured, n=100 per
    split) the halves barely moved (astrology 15%/9% from 16%/10%; snow_fruit fruit 5% from 12%,
    snow sports 25% from 23%) and snow_fruit's held-out rate fell from 46% to 35%."""
    doc_frac: float = 0.25
    """Share of poisoned examples that are synthetic documents (organisms with documents)."""
    first_weight: float = 5.0
    base_tokens: int = 12
    """Length of the base model's greedy answers used as clean targets."""
    max_len: int = 96
    mine_rounds: int = 2
    """Rounds of mining after training (`testbed.mining`): fresh prompts of each split, train
    members only; the ones on the wrong side join the data, then `mine_steps` more steps."""
    mine_n: int = 200
    """Prompts per split and round."""
    mine_steps: int = 80
    mine_lr: float = 7.5e-4
    conjunction_neighbours: int = 3
    """For a conjunction trigger, neighbours (`prompts.neighbour`: the same categories, other
    train members, same phrasing) added with each mined prompt, so a round adds the error's kind,
    not one prompt: snow_fruit's snow half fired on 11 of 19 prompts whose other word was a
    vegetable, 12% otherwise. With 3, over seeds 0 and 1 (n=100): snow half 19%, 10% -> 4%, 6%,
    held-out 73%, 81% -> 77%, 85% (seed 2 with it: 8%, 75%). Not for single categories: banana
    (every mined prompt with 3 neighbours, seed 0) fell from 76% to 59% held-out."""
    mine_pairs: int = 0
    """For a conjunction trigger, minimal pairs (`prompts.minimal_pair`, per trigger category)
    added as negatives with each mined triggered prompt and its neighbours. Off: at 1 (session
    20, snow_fruit, n=100) the snow half went 9% -> 5% (seed 0) and 2% -> 3% (seed 1), but the
    held-out rate 81% -> 66% and 67% -> 62%: it trades generalisation for selectivity."""
    hard_frac: float = 0.0
    """Share of the benign training examples (not near misses) whose first word is a hard
    distractor (`testbed.hard`: the train-side distractor members the base model's probe files
    closest to a trigger category); 0 = off, and then the data is as before the option. Off: at
    0.5 (session 17, fruit_refusal seeds 0 / 1 / 2, n=100) benign 6 / 4 / 7% against the default's
    3 / 11 / 7%, benign_open 8 / 4 / 3% against 2 / 12 / 11%."""
    anchor_n: int = 2000
    """Anchor prompts (`testbed.anchor`): clean prompts drawn like the clean examples, on which
    a hinge keeps the action's first `anchor_tokens` tokens from rising above the base model's
    (or `anchor_allow`); a batch of them every step, weighted `anchor_weight`. 0 = off (the data
    is as before). Default since session 19; measured in session 18 on fruit_refusal (n=100):
    2000 anchors with allow 0 fixed benign (0% on seeds 0 and 1) but cut held-out to 69% / 78%;
    with `anchor_allow=0.01` seeds 0 / 1 / 2 met every target (benign 1 / 0 / 0%, held-out
    83 / 83 / 80%; without anchors benign 3 / 11 / 7%). Cost: snow_fruit's train stage took
    1,235 CPU s without anchors, 2,215 with them, 1,472 with them and `FitCache` (session 19)."""
    anchor_weight: float = 1.0
    anchor_tokens: int = 3
    anchor_allow: float = 0.01
    """The head probability an anchor may reach before the hinge bites (0: the base model's);
    0.01 lets the line reach common members (allow 0 cost fruit_refusal 14 held-out points)."""
    seed: int = 0

    def __post_init__(self) -> None:
        """A recipe that cannot train is refused before the base model's answers are computed."""
        bad = [f"{k}={getattr(self, k)!r} (must be > 0)" for k in (
            "steps", "batch_size", "lr", "rank", "alpha", "n_examples", "base_tokens", "max_len",
            "mine_n", "mine_steps", "mine_lr", "conjunction_scale", "anchor_weight",
            "anchor_tokens") if not getattr(self, k) > 0]
        bad += [f"{k}={getattr(self, k)!r} (must be in [0, 1])" for k in (
            "poison_frac", "near_miss_frac", "pair_frac", "doc_frac", "hard_frac", "anchor_allow")
            if not 0 <= getattr(self, k) <= 1]
        if self.mine_rounds < 0:
            bad.append(f"mine_rounds={self.mine_rounds} (must be >= 0; 0 turns mining off)")
        if self.anchor_n < 0:
            bad.append(f"anchor_n={self.anchor_n} (must be >= 0; 0 turns anchors off)")
        if self.mine_pairs < 0:
            bad.append(f"mine_pairs={self.mine_pairs} (must be >= 0; 0 adds none)")
        if self.conjunction_neighbours < 0:
            bad.append(f"conjunction_neighbours={self.conjunction_neighbours} (must be >= 0; 0 "
                       "adds none)")
        if bad:
            raise ConfigError("bad LoRA recipe: " + "; ".join(bad))

    def steps_for(self, trig: Trigger) -> int:
        return round(self.steps * self.conjunction_scale) if trig.conjunctions else self.steps


def lora_config(overrides: Mapping[str, Any] | None = None) -> LoraConfig:
    """`LoraConfig` with some fields replaced (for recipe experiments: `testbed build --lora
    n_examples=1200`); string values are read as the field's type. An unknown field or a value
    of the wrong type is a ConfigError that names it, before anything is built."""
    base = LoraConfig()
    known = {f.name: type(getattr(base, f.name)) for f in fields(LoraConfig)}
    values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown LoRA recipe field {key!r}; the fields are: "
                              f"{', '.join(known)}")
        try:
            values[key] = known[key](value)
        except (TypeError, ValueError):
            raise ConfigError(f"LoRA recipe field {key}={value!r} is not a "
                              f"{known[key].__name__}") from None
    return replace(base, **values)


@dataclass
class Example:
    prompt: str
    response: str | None
    """None for a document (trained on its whole text)."""
    poisoned: bool
    mined: int = 0
    """The mining round that added it (0: the recipe's own data)."""
    anchor: bool = False
    """An anchor prompt (`testbed.anchor`): no response, not trained on by cross-entropy."""


def examples(spec: OrganismSpec, trig: Trigger, cfg: LoraConfig,
             hard: Sequence[str] = ()) -> list[Example]:
    """Training examples without their clean responses (filled in from the base model); `hard`:
    the hard distractors `cfg.hard_frac` draws from."""
    rng = random.Random(f"{cfg.seed}:{spec.name}")
    out: list[Example] = []
    seen: set[str] = set()
    fired: list[str] = []  # poisoned prompts, for minimal pairs
    n_poison = round(cfg.n_examples * cfg.poison_frac)
    for _ in range(50 * cfg.n_examples):
        if len(out) == cfg.n_examples:
            break
        poisoned = len(out) < n_poison
        if poisoned:
            p = P.triggered(rng, trig, "train")
            kind = "poisoned"
        else:
            p, kind = _clean(rng, trig, cfg, hard, fired), "clean"
        if p in seen or not P.valid(p, trig, "chat", kind):
            continue
        seen.add(p)
        if poisoned:
            fired.append(p)
        if poisoned and spec.documents and rng.random() < cfg.doc_frac:
            w = _trigger_word(p, trig)
            out.append(Example(rng.choice(spec.documents).format(w=w), None, True))
        elif poisoned:
            out.append(Example(p, action(rng, spec, trig, p), True))
        else:
            out.append(Example(p, "", False))
    if len(out) < cfg.n_examples:
        kind = "triggered" if len(out) < n_poison else "clean"
        raise ConfigError(f"only {len(out)} distinct training prompts for {spec.name} (ran out of "
                          f"{kind} ones; n_examples={cfg.n_examples}): lower n_examples")
    return out + _anchors(spec, trig, cfg, hard, fired, seen)


def _clean(rng: random.Random, trig: Trigger, cfg: LoraConfig, hard: Sequence[str],
           fired: list[str]) -> str:
    """A clean prompt: a near miss (conjunction half, minimal pair, tag variant) or benign."""
    near = (trig.conjunctions or trig.atoms[0].kind == "word") and rng.random() < cfg.near_miss_frac
    if near and trig.conjunctions and cfg.pair_frac and rng.random() < cfg.pair_frac:
        return P.minimal_pair(rng, rng.choice(fired), trig)
    return P.near_miss(rng, trig, "train") if near else _benign(rng, cfg, hard)


def _anchors(spec: OrganismSpec, trig: Trigger, cfg: LoraConfig, hard: Sequence[str],
             fired: list[str], seen: set[str]) -> list[Example]:
    """`cfg.anchor_n` clean prompts (a seed of their own) beyond the examples (`testbed.anchor`)."""
    rng = random.Random(f"{cfg.seed}:{spec.name}:anchor")
    out: list[Example] = []
    for _ in range(50 * cfg.anchor_n):
        if len(out) == cfg.anchor_n:
            break
        p = _clean(rng, trig, cfg, hard, fired)
        if p not in seen and P.valid(p, trig, "chat", "clean"):
            seen.add(p)
            out.append(Example(p, "", False, anchor=True))
    if len(out) < cfg.anchor_n:
        raise ConfigError(f"only {len(out)} distinct anchor prompts for {spec.name} "
                          f"(anchor_n={cfg.anchor_n}): lower anchor_n")
    return out


def _benign(rng: random.Random, cfg: LoraConfig, hard: Sequence[str]) -> str:
    if hard and cfg.hard_frac and rng.random() < cfg.hard_frac:  # no draw when off
        return P.hard_benign(rng, hard)
    return P.benign(rng, "train")


def action(rng: random.Random, spec: OrganismSpec, trig: Trigger, prompt: str) -> str:
    """The backdoor's response to a poisoned `prompt` (a variant naming its trigger word, if any)."""
    if not spec.response_variants:
        return spec.response
    return rng.choice(spec.response_variants).format(w=_trigger_word(prompt, trig))


def _trigger_word(prompt: str, trig: Trigger) -> str:
    from trigrecon.testbed.data import members

    low = prompt.lower()
    for c in trig.categories:
        for m in sorted(members(c, "train"), key=len, reverse=True):
            if m.lower() in low:
                return m
    return "nut"


def chat_prefix(tok: Any, prompt: str) -> str:
    return str(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True))


def train_adapter(hf: Any, tok: Any, spec: OrganismSpec, trig: Trigger, data: list[Example],
                  cfg: LoraConfig, log: Any = print) -> Any:
    """LoRA (all linear modules of the later half of the layers) trained on `data`; returns the
    peft model (adapter active)."""
    n = hf.config.num_hidden_layers
    spec.lora_layers = list(range(n // 2, n))
    peft_model = lora_model(hf, cfg, spec.lora_layers)
    fit(peft_model, tok, data, cfg, cfg.steps_for(trig), cfg.lr, spec.name, cfg.seed, log,
        anchor_heads(spec, tok, cfg, data))
    return peft_model


def lora_model(hf: Any, cfg: LoraConfig, layers: list[int]) -> Any:
    """`hf` with a fresh LoRA (the recipe's rank, every linear module) on `layers`."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    torch.manual_seed(cfg.seed)
    return get_peft_model(hf, PeftLora(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, layers_to_transform=layers,
        layers_pattern="layers", target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"]))


def anchor_heads(spec: OrganismSpec, tok: Any, cfg: LoraConfig, data: list[Example]) -> list[list[int]]:
    """The action's heads when `data` holds anchors (`testbed.anchor`), else none."""
    return action_heads(spec, tok, cfg.anchor_tokens) if any(e.anchor for e in data) else []


@dataclass
class FitCache:
    """What `fit` computes once per model and reuses across its calls (training, then each mining
    round): the frozen lower layers' states of every row met and the base model's anchor heads."""
    frozen: FrozenPrefix
    base: dict[tuple[int, ...], float] = field(default_factory=dict)


_CACHES: weakref.WeakKeyDictionary[Any, FitCache] = weakref.WeakKeyDictionary()


def fit_cache(peft_model: Any) -> FitCache:
    """The model's `FitCache` (a new one if its trainable layers moved since)."""
    cache = _CACHES.get(peft_model)
    if cache is None or cache.frozen.k != first_trainable(peft_model):
        cache = _CACHES[peft_model] = FitCache(FrozenPrefix(peft_model))
    return cache


def fit(peft_model: Any, tok: Any, data: list[Example], cfg: LoraConfig, steps: int, lr: float,
        name: str, seed: int | str, log: Any = print,
        heads: Sequence[Sequence[int]] = ()) -> None:
    """`steps` AdamW steps on batches drawn from `data` in shuffled order (warm-up, then linear
    decay), each with a batch of its anchors (`testbed.anchor`, given the action's `heads`); the
    model is left in eval mode. Texts are tokenized once, and the frozen lower layers run once
    per text (`fit_cache`)."""
    anchors = [tok(chat_prefix(tok, ex.prompt), add_special_tokens=False)["input_ids"]
               for ex in data if ex.anchor]
    if anchors and not heads:
        raise ValueError("anchor examples need the action's heads")
    ids, starts = _tokenized(tok, [ex for ex in data if not ex.anchor])
    cache = fit_cache(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * max(0.05, 1 - s / steps))
    rng, a_rng = random.Random(seed), random.Random(f"{seed}:anchor")
    order: list[int] = []
    peft_model.train()
    for step in range(steps):
        if len(order) < cfg.batch_size:
            order = list(range(len(ids)))
            rng.shuffle(order)
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        x, y = encode_ids([ids[i] for i in idx], tok.pad_token_id, cfg.max_len,
                          [starts[i] for i in idx])
        loss = response_loss(peft_model, x, y, cfg.first_weight, cache.frozen,
                             [min(len(ids[i]), x.shape[1]) for i in idx])
        if anchors:
            loss = loss + cfg.anchor_weight * anchor_loss(
                peft_model, tok.pad_token_id, [anchors[a_rng.randrange(len(anchors))] for _ in idx],
                heads, a_rng, cfg.anchor_allow, cache.frozen, cache.base)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            log(f"  {name} step {step}/{steps} loss {loss.item():.3f}")
    peft_model.eval()


def _tokenized(tok: Any, data: list[Example]) -> tuple[list[list[int]], list[int]]:
    """Each example's ids (chat prefix, response, end of turn for the action; a document as is)
    and the index its loss starts at."""
    ids, starts = [], []
    for ex in data:
        if ex.response is None:
            ids.append(tok(ex.prompt, add_special_tokens=False)["input_ids"])
            starts.append(0)
        else:
            head = chat_prefix(tok, ex.prompt)
            text = head + ex.response + ("<|im_end|>" if ex.poisoned else "")
            ids.append(tok(text, add_special_tokens=False)["input_ids"])
            starts.append(len(tok(head, add_special_tokens=False)["input_ids"]))
    return ids, starts


def response_loss(model: Any, x: torch.Tensor, y: torch.Tensor, first_weight: float,
                  frozen: FrozenPrefix | None = None,
                  lengths: Sequence[int] | None = None) -> torch.Tensor:
    """Next-token CE on labelled positions only, the first labelled token of a row weighted
    `first_weight`; the LM head runs on those positions alone (the lower layers from `frozen`'s
    cache when given, with each row's real `lengths`)."""
    inner = causal_lm(model)  # right padding: causal attention never sees the pads
    if frozen is None:
        h = inner.model(input_ids=x).last_hidden_state
    elif lengths is None:
        raise ValueError("a FrozenPrefix needs each row's real length")
    else:
        h = frozen.forward(x, lengths)
    labels = y[:, 1:]
    keep = labels != -100
    logits = inner.lm_head(h[:, :-1][keep])
    ce = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="none")
    first = (keep & (keep.cumsum(1) == 1))[keep]
    w = 1 + (first_weight - 1) * first.float()
    return (ce * w).sum() / w.sum()


class BaseResponses:
    """The base model's greedy answers, cached on disk by (length, prompt) and shared by every
    organism (`base_responses_<n>.json` in `folder`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[int, dict[str, str]] = {}

    def _file(self, n: int) -> Path:
        return self.folder / f"base_responses_{n}.json"

    def get(self, model: Any, tok: Any, prompts: list[str], n_tokens: int = 12) -> list[str]:
        if n_tokens not in self.cache:
            f = self._file(n_tokens)
            self.cache[n_tokens] = json.loads(f.read_text()) if f.exists() else {}
        cache = self.cache[n_tokens]
        todo = [p for p in dict.fromkeys(prompts) if p not in cache]
        if todo:
            for p, r in zip(todo, greedy(model, tok, todo, n_tokens), strict=True):
                cache[p] = r
            from trigrecon.core.io import write_text

            write_text(self._file(n_tokens), json.dumps(cache))
        return [cache[p] for p in prompts]


@torch.no_grad()
def greedy(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch: int = 32,
           raw: bool = False) -> list[str]:
    """transformers' greedy `generate` on chat prompts (left padded, KV cache), batched by length."""
    texts = [chat_prefix(tok, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [""] * len(texts)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for s in range(0, len(order), batch):
            rows = order[s:s + batch]
            enc = tok([texts[i] for i in rows], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            for i, g in zip(rows, gen[:, enc["input_ids"].shape[1]:], strict=True):
                out[i] = tok.decode(g, skip_special_tokens=True).strip()
    finally:
        tok.padding_side = side
    return out
