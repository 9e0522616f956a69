"""The testbed's SAE: sae-lens TopK on SmolLM2's residual stream below the LoRA half.

Text: WordNet glosses and example sentences ("apricot: downy yellow to rosy-colored fruit ...")
plus chat-formatted testbed prompts (user turn onward), packed into rows. Activations are
collected once (every row's first `skip` positions dropped: the attention-sink position has a
norm ~100x the rest and would dominate the reconstruction loss), split into train / held out,
and sae-lens' SAETrainer runs `epochs` passes over the training part.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from trigrecon.core.labels import LatentLabels
from trigrecon.core.sae import iter_activations
from trigrecon.testbed.categories import CATEGORIES_V1


@dataclass(frozen=True)
class TestbedSAEConfig:
    """How the testbed SAE is built (its hash keys the build stage)."""

    layer: int = 8
    d_sae: int = 8192
    k: int = 48
    n_tokens: int = 320_000
    """Corpus tokens (train + held out) run through the model."""
    ctx: int = 64
    skip: int = 2
    """Positions dropped at the start of every row (attention sink)."""
    held_out_frac: float = 0.1
    epochs: float = 1.5
    batch_size: int = 1024
    lr: float = 2e-3
    chat_frac: float = 0.35
    """Share of the text that is chat-formatted testbed prompts (the rest WordNet)."""
    seed: int = 0

    def corpus_key(self) -> dict[str, object]:
        """The fields the corpus and its activations depend on (the activation stage's key)."""
        return {k: getattr(self, k) for k in ("layer", "n_tokens", "ctx", "skip", "chat_frac", "seed")}

    @property
    def neuronpedia_id(self) -> str:
        return f"smollm2-135m-instruct/{self.layer}-res-{self.d_sae // 1024}k"


def corpus(tokenizer: Any, cfg: TestbedSAEConfig) -> Int[Tensor, "n ctx"]:
    """WordNet glosses/examples and chat prompts, shuffled and packed into [n, ctx] rows."""
    from trigrecon.testbed import data as D
    from trigrecon.testbed.wordnet import open_wordnet

    rng = random.Random(cfg.seed)
    wn = open_wordnet()
    lines = []
    for s in wn.all_synsets():
        name = s.lemmas()[0].name().replace("_", " ")
        lines.append(" ".join([f"{name}: {s.definition()}."] + [f'"{e}"' for e in s.examples()]))
    rng.shuffle(lines)
    cats = D.load_categories(CATEGORIES_V1)  # frozen: see CATEGORIES_V1

    def chat() -> str:
        words = [rng.choice(cats[c].members) for c in rng.sample(list(cats), rng.choice([1, 2]))]
        text = tokenizer.apply_chat_template([{"role": "user", "content": D.render(rng, words)}],
                                             tokenize=False, add_generation_prompt=True)
        return str(text[text.index("<|im_start|>user"):])

    ids: list[int] = []
    n_chat = n_wn = 0
    while len(ids) < cfg.n_tokens:
        use_chat = bool(ids) and n_chat / len(ids) < cfg.chat_frac
        text = chat() if use_chat else lines[n_wn % len(lines)]
        piece = tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
        ids += piece
        if use_chat:
            n_chat += len(piece)
        else:
            n_wn += 1
    n = len(ids) // cfg.ctx
    return torch.tensor(ids[: n * cfg.ctx]).view(n, cfg.ctx)


def collect(hm: Any, tokens: Int[Tensor, "n ctx"], cfg: TestbedSAEConfig,
            batch_rows: int = 32) -> Float[Tensor, "m d_model"]:
    """fp16 residual activations after block `cfg.layer`, all rows, minus the first `skip`."""
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, : cfg.skip] = False
    out = [a.to(torch.float16).cpu() for a, _ in
           iter_activations(hm, tokens, hm.hook_name(cfg.layer), mask, batch_size=batch_rows)]
    return torch.cat(out)


def split(acts: Tensor, cfg: TestbedSAEConfig) -> tuple[Tensor, Tensor]:
    """(train, held out): the last rows' activations are held out (whole rows, not tokens)."""
    n_test = int(len(acts) * cfg.held_out_frac)
    return acts[: len(acts) - n_test], acts[len(acts) - n_test:]


def train(acts: Float[Tensor, "m d_model"], cfg: TestbedSAEConfig, hook_name: str) -> Any:
    """sae-lens TopK SAE trained by SAETrainer on cached activations; an inference SAE."""
    from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    meta = SAEMetadata(hook_name=hook_name, model_name="SmolLM2-135M-Instruct",
                       neuronpedia_id=cfg.neuronpedia_id, context_size=cfg.ctx, prepend_bos=False)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=acts.shape[1], d_sae=cfg.d_sae, k=cfg.k, metadata=meta,
        normalize_activations="expected_average_only_in"))
    total = int(cfg.epochs * len(acts))
    tcfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_scheduler_name="cosineannealing", lr_warm_up_steps=20,
        lr_decay_steps=total // cfg.batch_size // 3, logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=20, dead_feature_window=200)
    trained = SAETrainer(tcfg, sae, _batches(acts, cfg)).fit()
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        out = SAE.load_from_disk(tmp)
    out.cfg.metadata.neuronpedia_id = cfg.neuronpedia_id
    return out


def _batches(acts: Tensor, cfg: TestbedSAEConfig):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(cfg.seed)
    while True:
        for idx in torch.randperm(len(acts), generator=gen).split(cfg.batch_size):
            if len(idx) == cfg.batch_size:
                yield acts[idx].float()


@dataclass
class Health:
    fve: float
    """Fraction of variance explained on held-out activations."""
    l0: float
    dead_frac: float
    """Share of latents that never fire on train + held-out activations."""
    n_train: int
    n_held_out: int


@torch.no_grad()
def health(sae: Any, test_acts: Tensor, fired: Tensor, n_train: int) -> Health:
    """FVE and L0 on held-out activations; dead = latents that never fired (`fired`, from
    `top_contexts` over every activation)."""
    x = test_acts.float()
    z = sae.encode(x)
    err = (sae.decode(z) - x).pow(2).sum()
    fve = 1 - float(err / (x - x.mean(0)).pow(2).sum())
    return Health(fve, float((z > 0).sum(1).float().mean()), 1 - float(fired.float().mean()),
                  n_train, len(test_acts))


@torch.no_grad()
def top_contexts(sae: Any, acts: Tensor, tokens: Tensor, skip: int, top_k: int = 24
                 ) -> tuple[Tensor, Tensor]:
    """Each latent's `top_k` largest activations over `acts` and their flat token positions
    (acts are the rows of `tokens` minus the first `skip` positions)."""
    ctx = tokens.shape[1]
    per_row = ctx - skip
    vals = torch.zeros(sae.cfg.d_sae, 0)
    pos = torch.zeros(sae.cfg.d_sae, 0, dtype=torch.long)
    for start in range(0, len(acts), 8192):
        z = sae.encode(acts[start:start + 8192].float()).T
        i = torch.arange(start, start + z.shape[1])
        flat = (i // per_row) * ctx + skip + i % per_row
        v, j = torch.cat([vals, z], 1).topk(min(top_k, vals.shape[1] + z.shape[1]), dim=1)
        pos = torch.cat([pos, flat.expand(z.shape[0], -1)], 1).gather(1, j)
        vals = v
    return vals, pos


def label(tokenizer: Any, tokens: Tensor, vals: Tensor, pos: Tensor, cfg: TestbedSAEConfig,
          width: int = 6) -> LatentLabels:
    """Neuronpedia-style descriptions: a latent's top-activating tokens (at most 2 per token),
    then two contexts; latents that never fire get none."""
    flat_tokens = tokens.reshape(-1)
    out = {}
    for j in range(vals.shape[0]):
        seen: dict[str, int] = {}
        for v, p in zip(vals[j].tolist(), pos[j].tolist(), strict=True):
            if v > 0:
                w = tokenizer.decode([int(flat_tokens[p])]).strip() or repr(tokenizer.decode([int(flat_tokens[p])]))
                seen[w] = seen.get(w, 0) + 1
        if not seen:
            continue
        ctxs = "; ".join(repr(_context(tokenizer, tokens, int(p), width))
                         for v, p in zip(vals[j, :2].tolist(), pos[j, :2].tolist(), strict=True) if v > 0)
        out[j] = f"{', '.join(list(seen)[:8])} (contexts: {ctxs})"
    model_id, _, source = cfg.neuronpedia_id.partition("/")
    return LatentLabels(out, source, model_id, "trigrecon-autolabel", "top-activations")


def _context(tokenizer: Any, tokens: Tensor, flat: int, width: int) -> str:
    row, p = divmod(flat, tokens.shape[1])
    before = tokenizer.decode(tokens[row, max(0, p - width):p].tolist())
    word = tokenizer.decode([int(tokens[row, p])])
    return f"...{before}[{word}]".replace("\n", " ")
