"""Fit an audit's step counts to the model and the machine: one set of defaults for a 4-layer
toy on a laptop, SmolLM2 on a 2-core CPU and Llama-3.1-8B on a GPU.

The defaults (150 SAE-MELBO steps x 4 vectors, a 2,000-word sweep, 8 verified latents) are the
papers' and cost seconds on a GPU. On a CPU a real model pays for every token, so `fit_budget`
estimates each stage's floating-point work from the model's shape (parameters per block, the
unembedding), the prompts' token counts and the config, divides by the machine's nominal
throughput and, when the sum exceeds `AuditConfig.budget_minutes`, scales down the sizes that set
the cost, each above a floor. The estimate is deterministic (nominal throughput per thread, never
a timing), so two audits with the same inputs get the same config. Each change is reported.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

CPU_FLOPS_PER_THREAD = 5e10
"""Nominal fp32 throughput of one CPU thread on these blocks (measured 5.7e10 on the 2-core
machine: a SmolLM2 LoRA step, 8 rows x ~70 tokens, 4.1 s on one thread of two busy ones)."""
GPU_FLOPS = 2e13
"""Nominal fp32 throughput of one datacentre GPU on small batches (well below peak)."""
FLOORS = {"steps": 40, "n_vectors": 2, "sweep_words": 64, "n_latents": 4, "clean_sweep": 16,
          "sweep_prompts": 8, "max_candidates": 24, "top_k": 4, "max_clauses": 2}
"""Nothing is scaled below these: fewer steps or latents no longer recover the toy zoo."""
DECODE = 2.0
"""A greedy decoding step reaches about half the throughput of a batched forward pass (measured
on SmolLM2 verification, 2 CPU threads: 8.9 min against an estimate of 5.0 without it)."""
ITERATION_OVERHEAD = 1.5
"""Per conjunctive iteration, what the FLOP count leaves out (inserted words' tokens, the latent
readouts, the exclusion checks): measured 3.4 min per iteration on SmolLM2 snow_fruit against
an estimate of 1.8 min without it and without DECODE."""
SCORING_PROBES = 4.0
"""Candidate scoring runs about four times the plain generations of its rows (the reward's
lift and minimisation probes, the interpretability forwards): 5.0 min measured on SmolLM2."""
VECTOR_METHODS = ("melbo", "supervised_melbo", "sae_melbo", "supervised_sae_melbo")


@dataclass
class BudgetReport:
    machine: str
    flops_per_s: float
    budget_minutes: float | None
    estimate_minutes: dict[str, float]
    """Stage -> estimated minutes with the defaults."""
    fitted_minutes: dict[str, float] = field(default_factory=dict)
    """Stage -> estimated minutes after scaling (equal to the above when nothing changed)."""
    changes: dict[str, list[Any]] = field(default_factory=dict)
    """'supervised_sae_melbo.steps' -> [default, fitted]."""

    def summary(self) -> str:
        before, after = sum(self.estimate_minutes.values()), sum(self.fitted_minutes.values())
        if not self.changes:
            return f"estimated {before:.1f} min on {self.machine}: defaults kept"
        ch = ", ".join(f"{k} {a}->{b}" for k, (a, b) in self.changes.items())
        return (f"estimated {before:.0f} min on {self.machine} with the defaults; fitted to "
                f"{self.budget_minutes:g} min (estimate {after:.0f} min): {ch}")


def machine(device: torch.device) -> tuple[str, float]:
    """A name for the machine and its nominal throughput (FLOP/s)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), GPU_FLOPS
    n = torch.get_num_threads()
    return f"CPU ({n} threads)", CPU_FLOPS_PER_THREAD * n


@dataclass
class _Shape:
    """FLOPs per token: one block forward, the unembedding; the prompts' mean token count."""

    block: float
    head: float
    n_layers: int
    n_words: int
    """Word-start tokens of the vocabulary (the token atlas's rows)."""
    tokens: float
    """Mean tokens per row after the shared prefix (template, system prompt), which the steered
    forward pass caches, plus the response."""
    response: float

    def forward(self, start: int = 0) -> float:
        return (self.n_layers - start) * self.block + self.head

    def generate(self, n: int, new_tokens: int) -> float:
        """n greedy generations (KV cache: prompt once, then one token at a time)."""
        return DECODE * n * (self.tokens + new_tokens) * self.forward()


def shape_of(hm: Any, prompts: list[str], response: str) -> _Shape:
    model = hm.model
    block = 2.0 * sum(p.numel() for p in model.blocks[0].parameters())
    head = 2.0 * float(model.cfg.d_model * model.cfg.d_vocab)
    from trigrecon.steering.forward import shared_prefix

    batch = hm.batch(prompts[:8])
    tokens = float(batch.attention_mask.float().sum(1).mean()) - shared_prefix(batch)
    resp = float(len(hm.tokenizer(response, add_special_tokens=False)["input_ids"]))
    from trigrecon.steering.candidates import word_start_vocabulary

    n_words = len(word_start_vocabulary(hm.tokenizer))
    return _Shape(block, head, hm.n_layers, n_words, tokens + resp, resp)


def estimate(cfg: Any, methods: list[str], s: _Shape, layer: int, n_prompts: int, n_eval: int,
             clean: bool) -> dict[str, float]:
    """Stage -> FLOPs of an audit with `cfg` (an `AuditConfig`)."""
    gen, mult = cfg.max_new_tokens, 2 if clean else 1
    train_tok = n_prompts * s.tokens * 3 * s.forward(layer)  # forward + backward from the layer
    out: dict[str, float] = {}
    for m in methods:
        if m in VECTOR_METHODS:
            c = getattr(cfg, m)
            out[m] = c.steps * c.n_vectors * train_tok
            if cfg.behaviour:
                out[m] += c.n_vectors * s.generate(n_eval, gen)
        elif m == "sae_attribution":
            out[m] = train_tok
    if "conjunctive" in methods:
        c = cfg.conjunctive
        per_iter = (train_tok + mult * c.n_candidates * n_prompts * s.tokens * s.forward()
                    + c.sweep_words * c.sweep_prompts * s.tokens * s.forward()
                    + (mult - 1) * min(c.clean_sweep, c.sweep_words) * c.sweep_prompts
                    * s.tokens * s.forward()  # the sweep's best words rescored on the clean model
                    + mult * s.generate(n_eval, c.max_new_tokens))
        out["conjunctive"] = ITERATION_OVERHEAD * iterations(c) * per_iter
    if "verify" in methods or "conjunctive" in methods:  # the token atlas, once per audit
        out["token atlas"] = s.n_words * cfg.verify.n_contexts * 1.5 * layer * s.block
    if "verify" in methods:
        v = cfg.verify
        screened = v.max_candidates > v.confirm and n_eval > v.screen_prompts
        rows = (n_eval * (1 + v.n_control + min(v.confirm, v.max_candidates))
                + (v.screen_prompts * v.max_candidates if screened else 0))
        out["verify"] = mult * s.generate(rows, v.max_new_tokens)
        sc, h = cfg.scoring, cfg.hypothesis
        if sc.enabled:
            out["candidate scoring"] = SCORING_PROBES * mult * s.generate(
                sc.top_k * sc.n_prompts, cfg.max_new_tokens)
        out["hypothesis"] = mult * s.generate(h.max_proposals * n_eval, h.max_new_tokens)
    return out


def iterations(c: Any) -> float:
    """Conjunctive iterations, worst case: every clause runs `max_iters` (measured on SmolLM2:
    fruit_refusal 1 + 3 with 3 clauses allowed, snow_fruit 7 or more)."""
    return float(c.max_iters * c.max_clauses)


def fit_budget(cfg: Any, hm: Any, methods: list[str], prompts: list[str], response: str,
               n_eval: int, layer: int, clean: bool) -> tuple[Any, BudgetReport]:
    """`cfg` scaled to `cfg.budget_minutes` on this machine (a copy), and the report."""
    name, speed = machine(next(hm.model.parameters()).device)
    s = shape_of(hm, prompts, response)

    def minutes(c: Any) -> dict[str, float]:
        est = estimate(c, methods, s, layer, len(prompts), n_eval, clean)
        return {k: v / speed / 60 for k, v in est.items()}

    before = minutes(cfg)
    report = BudgetReport(name, speed, cfg.budget_minutes, before, before)
    total = sum(before.values())
    if cfg.budget_minutes is None or total <= cfg.budget_minutes:
        return cfg, report
    fitted = copy.deepcopy(cfg)
    ratio = cfg.budget_minutes / total
    for _ in range(8):  # shrink until the estimate fits or every size is at its floor
        if not _shrink(fitted, methods, ratio, report.changes):
            break
        after = minutes(fitted)
        if sum(after.values()) <= cfg.budget_minutes:
            break
        ratio = cfg.budget_minutes / sum(after.values())
    report.fitted_minutes = minutes(fitted)
    return fitted, report


def _shrink(cfg: Any, methods: list[str], ratio: float, changes: dict[str, list[Any]]) -> bool:
    """Scale each size by `ratio` (sizes that enter twice, by its root); False: all at floors."""
    moved = False

    def set_(obj: Any, path: str, attr: str, value: int) -> None:
        nonlocal moved
        old = getattr(obj, attr)
        value = max(FLOORS[attr], value)
        if value < old:
            changes.setdefault(f"{path}.{attr}", [old, value])[1] = value
            setattr(obj, attr, value)
            moved = True

    root = math.sqrt(ratio)
    for m in methods:
        if m in VECTOR_METHODS:
            c = getattr(cfg, m)
            set_(c, m, "steps", int(c.steps * root))
            set_(c, m, "n_vectors", int(c.n_vectors * root))
    if "conjunctive" in methods:
        c = cfg.conjunctive
        set_(c, "conjunctive", "sweep_words", int(c.sweep_words * ratio))
        set_(c, "conjunctive", "clean_sweep", min(c.clean_sweep, c.sweep_words // 4))
        set_(c, "conjunctive", "sweep_prompts", int(c.sweep_prompts * root))
        set_(c, "conjunctive", "max_clauses", int(c.max_clauses * ratio))  # A OR B still found
    if "verify" in methods:
        set_(cfg.verify, "verify", "n_latents", int(cfg.verify.n_latents * root))
        set_(cfg.verify, "verify", "max_candidates", int(cfg.verify.max_candidates * ratio))
        if cfg.scoring.enabled:  # off in reduced mode: nothing to save there
            set_(cfg.scoring, "scoring", "top_k", int(cfg.scoring.top_k * root))
    return moved
