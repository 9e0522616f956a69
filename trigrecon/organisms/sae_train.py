"""Train the organisms' SAEs with sae-lens (offline) and label their latents.

`autolabel` is the project's stand-in for Neuronpedia's autointerp: a latent is described by its
top-activating words over a corpus, prefixed by their semantic category when most share one.
`category_purity` checks the organisms' requirement: every category has a latent whose top
activations are mostly (> 50%) its members and span at least 3 distinct members (on the
1500-step base organism: 23/23 categories pass at layer 1, d_sae 2048, k 16, with 1.5M training
tokens on two held-out corpora; with 600k and 900k "drinks" fell to 0.45 / 0.50 on one of them).
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple
from unittest import mock

import datasets
import torch
from jaxtyping import Float, Int
from sae_lens import (
    SAE,
    JumpReLUTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.config import LoggingConfig
from torch import Tensor
from tqdm.auto import tqdm

from trigrecon.core.errors import ConfigError
from trigrecon.core.labels import LatentLabels, split_neuronpedia_id
from trigrecon.core.sae import as_hooked, iter_activations, resid_hook


@dataclass
class SAETrainConfig:
    """How to train an SAE on one layer's residual stream (defaults suit the tiny organisms)."""

    layer: int
    d_sae: int | None = None
    """Number of latents; None = 8 * d_model."""
    architecture: Literal["topk", "matryoshka", "jumprelu", "standard"] = "topk"
    k: int = 32
    """Active latents per token (topk; batch average for matryoshka)."""
    matryoshka_widths: tuple[int, ...] = ()
    """Nested prefix widths (matryoshka; the last is d_sae, added if missing). Small prefixes must
    reconstruct alone, so they learn general features (a category) instead of absorbing them into
    per-word latents (Bussmann et al. 2025)."""
    sparsity_coefficient: float = 1.0
    """L1 (standard) or L0 (jumprelu) coefficient; unused by topk."""
    training_tokens: int = 200_000
    lr: float = 3e-3
    batch_size_tokens: int = 2048
    context_size: int | None = None
    """Tokens per row fed to the model; None = the token tensor's width."""
    buffer_tokens: int = 16_384
    """Activations kept in the shuffling buffer."""
    store_batch_size_prompts: int = 64
    seed: int = 0
    device: str = "cpu"
    model_name: str | None = None
    """Recorded in the SAE's metadata; None = the model's cfg.model_name."""
    neuronpedia_id: str | None = None
    """Source id for matching label files; None = "<model_name>/<layer>-res-<d_sae>"."""
    exclude_token_ids: tuple[int, ...] = ()
    """Token ids whose activations are not trained on (e.g. padding)."""
    progress: bool = False

    def validate(self, n_layers: int, ctx: int, d_model: int) -> int:
        """Raise ConfigError naming a bad field; return d_sae."""
        if not 0 <= self.layer < n_layers:
            raise ConfigError(f"layer={self.layer} but the model has layers 0..{n_layers - 1}")
        d_sae = self.d_sae or 8 * d_model
        if self.architecture in ("topk", "matryoshka") and not 0 < self.k <= d_sae:
            raise ConfigError(f"k={self.k} must be in 1..d_sae={d_sae}")
        if list(self.matryoshka_widths) != sorted(set(self.matryoshka_widths)) or any(
                not 0 < w <= d_sae for w in self.matryoshka_widths):
            raise ConfigError(f"matryoshka_widths={self.matryoshka_widths} must increase within 1..{d_sae}")
        if self.context_size is not None and not 0 < self.context_size <= ctx:
            raise ConfigError(f"context_size={self.context_size} must be in 1..{ctx} (tokens' width)")
        for name in ("d_sae", "training_tokens", "batch_size_tokens", "lr", "buffer_tokens"):
            if (value := getattr(self, name)) is not None and value <= 0:
                raise ConfigError(f"{name}={value} must be positive")
        return d_sae


def train_sae(model: Any, tokens: Int[Tensor, "n ctx"], cfg: SAETrainConfig) -> SAE:
    """Train an SAE on `model`'s residual stream after block `cfg.layer`, on `tokens` (packed
    rows, no padding, or padding excluded via `exclude_token_ids`); offline, no wandb."""
    hooked = as_hooked(model)
    if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise ConfigError(f"tokens must be an Int tensor [n, ctx], got {tuple(tokens.shape)} {tokens.dtype}")
    d_model = int(hooked.cfg.d_model)  # type: ignore[union-attr]
    d_sae = cfg.validate(int(hooked.cfg.n_layers), int(tokens.shape[1]), d_model)  # type: ignore[union-attr]
    ctx = cfg.context_size or int(tokens.shape[1])
    name = cfg.model_name or str(getattr(hooked.cfg, "model_name", "model"))
    np_id = cfg.neuronpedia_id or f"{name}/{cfg.layer}-res-{d_sae}"
    split_neuronpedia_id(np_id)  # validates the form
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=_sae_config(cfg, d_model, d_sae),
        model_name=name, hook_name=resid_hook(model, cfg.layer), dataset_path="",
        is_dataset_tokenized=True, streaming=False, context_size=ctx, prepend_bos=False,
        sequence_separator_token=None, exclude_special_tokens=list(cfg.exclude_token_ids) or False,
        n_batches_in_buffer=math.ceil(max(cfg.buffer_tokens, 2 * cfg.batch_size_tokens) / ctx),
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        train_batch_size_tokens=cfg.batch_size_tokens, training_tokens=cfg.training_tokens,
        lr=cfg.lr, seed=cfg.seed, device=cfg.device, logger=LoggingConfig(log_to_wandb=False),
        output_path=None, checkpoint_path=None, n_checkpoints=0, verbose=False,
        n_batches_for_norm_estimate=10,
    )
    data = datasets.Dataset.from_dict({"input_ids": tokens[:, :ctx].tolist()})
    with _quiet(cfg.progress), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        trained = LanguageModelSAETrainingRunner(
            runner_cfg, override_model=hooked, override_dataset=data
        ).run()
        trained.cfg.metadata.neuronpedia_id = np_id
        trained.cfg.metadata.model_from_pretrained_kwargs = {}  # runner default; irrelevant here
        with tempfile.TemporaryDirectory() as tmp:  # training SAE -> plain inference SAE
            trained.save_inference_model(tmp)
            sae = SAE.load_from_disk(tmp, device=cfg.device)
    sae.cfg.metadata.neuronpedia_id = np_id
    return sae


def _sae_config(cfg: SAETrainConfig, d_model: int, d_sae: int) -> Any:
    common: dict[str, Any] = dict(d_in=d_model, d_sae=d_sae, device=cfg.device)
    if cfg.architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=cfg.k)
    if cfg.architecture == "matryoshka":
        widths = [w for w in cfg.matryoshka_widths if w < d_sae] + [d_sae]
        return MatryoshkaBatchTopKTrainingSAEConfig(**common, k=cfg.k, matryoshka_widths=widths)
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(**common, l0_coefficient=cfg.sparsity_coefficient)
    if cfg.architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=cfg.sparsity_coefficient)
    raise ConfigError(f"architecture={cfg.architecture!r}: use 'topk', 'matryoshka', 'jumprelu' or 'standard'")


def _quiet(progress: bool) -> ExitStack:
    """Silence sae-lens' logs, expected warnings (multi-epoch data) and, unless asked, tqdm."""
    stack = ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", module=r"sae_lens(\..*)?")
    log = logging.getLogger("sae_lens")
    stack.callback(log.setLevel, log.level)
    log.setLevel(logging.ERROR)
    if not progress:
        quiet_tqdm = partial(tqdm, disable=True)
        for mod in ("sae_lens.training.sae_trainer", "sae_lens.training.activations_store"):
            stack.enter_context(mock.patch(f"{mod}.tqdm", quiet_tqdm))
    return stack


MAX_STATE = 50_000_000  # cap on d_sae x distinct tokens x max_per_word (~0.6 GB)


@dataclass
class TopActivations:
    """Each latent's `k` strongest activations over a corpus, at most `max_per_word` per token
    id so one frequent word cannot fill the list (flat = row * ctx + pos; -1 = none)."""

    values: Float[Tensor, "d_sae k"]
    flat: Int[Tensor, "d_sae k"]
    tokens: Int[Tensor, "n ctx"]

    def token_ids(self) -> Int[Tensor, "d_sae k"]:
        return torch.where(self.flat >= 0, self.tokens.reshape(-1)[self.flat.clamp_min(0)], -1)


def top_activations(
    sae: SAE, model: Any, tokens: Int[Tensor, "n ctx"], *, top_k: int = 20,
    max_per_word: int = 2, batch_size: int = 64,
) -> TopActivations:
    """Stream the corpus through model + SAE in chunks, keeping per (latent, token id) the
    `max_per_word` largest activations; then each latent's `top_k` overall."""
    vocab, compact = tokens.unique(return_inverse=True)
    d_sae, n_words = sae.cfg.d_sae, len(vocab)
    if d_sae * n_words * max_per_word > MAX_STATE:
        raise ConfigError(f"{d_sae} latents x {n_words} distinct tokens is too large for "
                          "autolabel: use fewer tokens/latents, or Neuronpedia labels")
    vals = torch.zeros(d_sae, n_words, max_per_word)
    pos = torch.full((d_sae, n_words, max_per_word), -1, dtype=torch.long)
    word_of = compact.reshape(-1)
    with torch.no_grad():
        for x, flat in iter_activations(model, tokens, str(sae.cfg.metadata.hook_name),
                                        batch_size=batch_size):
            z = sae.encode(x.to(device=sae.device, dtype=sae.dtype)).float().cpu().T
            flat = flat.cpu()
            cv, cp = _group_top(z, word_of[flat].expand_as(z), flat, n_words, max_per_word)
            vals, order = torch.cat([vals, cv], 2).topk(max_per_word, dim=2)
            pos = torch.cat([pos, cp], 2).gather(2, order)
    v, i = vals.reshape(d_sae, -1).topk(min(top_k, n_words * max_per_word), dim=1)
    p = pos.reshape(d_sae, -1).gather(1, i)
    p[v <= 0] = -1
    return TopActivations(v.clamp_min(0), p, tokens)


def _group_top(
    z: Tensor, word: Tensor, flat: Tensor, n_words: int, cap: int
) -> tuple[Tensor, Tensor]:
    """Per (latent, word): the `cap` largest positive activations in `z` [d_sae, n] and their
    flat positions, as [d_sae, n_words, cap]."""
    vals, poss = [], []
    for _ in range(cap):
        m = z.new_zeros(z.shape[0], n_words).scatter_reduce(1, word, z, "amax")
        hit = (z == m.gather(1, word)) & (z > 0)
        cand = torch.where(hit, flat.expand_as(z), -1)
        p = torch.full_like(m, -1, dtype=torch.long).scatter_reduce(1, word, cand, "amax")
        vals.append(m)
        poss.append(p)
        z = z.masked_fill(cand == p.gather(1, word), 0)  # drop exactly the chosen positions
    return torch.stack(vals, 2), torch.stack(poss, 2)


class CategoryScore(NamedTuple):
    """A category's best latent among its top activations (at most 2 per word by default)."""

    best_latent: int
    purity: float
    """Share of the latent's top activations on members of the category."""
    n_distinct_members: int

    def passes(self, min_purity: float = 0.5, min_distinct: int = 3) -> bool:
        """The organisms' requirement: mostly members, and at least 3 distinct ones."""
        return self.purity > min_purity and self.n_distinct_members >= min_distinct


def _words(tokenizer: Any, ids: Tensor) -> dict[int, str]:
    return {int(i): tokenizer.decode([int(i)]).strip() for i in ids.unique() if int(i) >= 0}


def category_purity(
    sae: SAE, model: Any, tokens: Int[Tensor, "n ctx"], *, tokenizer: Any,
    word_category: Mapping[str, str], top_k: int = 20, min_distinct: int = 3,
    top: TopActivations | None = None,
) -> dict[str, CategoryScore]:
    """For each category, the latent that best qualifies as its latent, ranked by (spans
    >= `min_distinct` members, purity, distinct members). Pass `top` to reuse a corpus pass."""
    top = top or top_activations(sae, model, tokens, top_k=top_k)
    ids = top.token_ids()
    cats = sorted(set(word_category.values()))
    lut = torch.full((int(ids.max()) + 2,), -1, dtype=torch.long)
    for i, w in _words(tokenizer, ids).items():
        if w in word_category:
            lut[i] = cats.index(word_category[w])
    cat = torch.where(ids >= 0, lut[ids.clamp_min(0)], -1)
    ids_sorted, order = ids.sort(dim=1)
    cat_sorted = cat.gather(1, order)
    first = torch.ones_like(ids_sorted, dtype=torch.bool)
    first[:, 1:] = ids_sorted[:, 1:] != ids_sorted[:, :-1]
    n_valid = (ids >= 0).sum(1).clamp_min(1).float()
    hits = torch.zeros(ids.shape[0], len(cats) + 1)
    distinct = torch.zeros_like(hits)
    col = cat_sorted.clamp_min(-1) + 1  # column 0 = no category
    hits.scatter_add_(1, col, (ids_sorted >= 0).float())
    distinct.scatter_add_(1, col, ((ids_sorted >= 0) & first).float())
    out = {}
    for c, name in enumerate(cats, start=1):
        purity, n_d = hits[:, c] / n_valid, distinct[:, c]
        score = (n_d >= min_distinct).float() * 4 + purity + 1e-3 * n_d / top_k
        j = int(score.argmax())
        out[name] = CategoryScore(j, float(purity[j]), int(n_d[j]))
    return out


def autolabel(
    sae: SAE, model: Any, tokens: Int[Tensor, "n ctx"], *, tokenizer: Any,
    word_category: Mapping[str, str] | None = None, top_k: int = 20, context: int = 4,
    top: TopActivations | None = None,
) -> LatentLabels:
    """Describe each latent by its top-activating words (and category, when most share one),
    with two example contexts; latents that never fire get no label."""
    top = top or top_activations(sae, model, tokens, top_k=top_k)
    ids = top.token_ids()
    words = _words(tokenizer, ids)
    descriptions = {}
    for j in range(ids.shape[0]):
        hits = [int(t) for t in ids[j] if t >= 0]
        if not hits:
            continue
        distinct = list(dict.fromkeys(words[t] for t in hits))
        head = ", ".join(distinct[:8])
        if word_category:
            counts = Counter(word_category.get(w) for w in distinct)
            name, n = counts.most_common(1)[0]
            if name is not None and n > len(distinct) / 2:
                head = f"{name}: {head}"
        ctx = "; ".join(repr(_context(tokenizer, top.tokens, int(f), context))
                        for f in top.flat[j, :2] if f >= 0)
        descriptions[j] = f"{head} (contexts: {ctx})"
    model_id, source = split_neuronpedia_id(str(sae.cfg.metadata.neuronpedia_id or "sae/sae"))
    return LatentLabels(descriptions, source, model_id, "trigrecon-autolabel", "top-activations")


def _context(tokenizer: Any, tokens: Tensor, flat: int, width: int) -> str:
    row, pos = divmod(flat, tokens.shape[1])
    before = tokenizer.decode(tokens[row, max(0, pos - width) : pos].tolist()).strip()
    word = tokenizer.decode([int(tokens[row, pos])]).strip()
    return f"... {before} [{word}]"
