"""Benchmark: our MELBO optimiser against a plain reference loop, in the same run.

Task: 16 orthogonal vectors x 100 steps on 32 prompts (unsupervised MELBO objective).
- ours: `trigrecon.methods.melbo` - source-layer residual cached once, only the blocks between
  source and target run, all 16 vectors train jointly in one stacked batch, exact orthogonality
  by differentiable Gram-Schmidt;
- reference (kept here): the original MELBO procedure - vectors one after another, a full
  forward pass from the embeddings on every step, a steering hook at the source layer,
  orthogonality by projecting the gradient and the vector onto the complement of earlier vectors,
  renormalised to R. Modes (`--reference`, default "original,batched"): `original` runs one
  prompt per forward as the original MELBO code (amack315/unsupervised-steering-vectors) does;
  `batched` runs all prompts as one padded batch (a stronger plain loop); `to-target` also stops
  the batched forward at the target layer (the strongest plain baseline).
Both use Adam (amsgrad, betas 0.9/0.98) with the same relative step size, the same norm R and the
same objective. Per reference the benchmark prints both final objectives, the speed ratio for the
same number of steps, and the ratio at equal objective: reference time over the time ours needs
to reach the reference's final mean objective (from a longer run of ours, up to --max-steps).
`--header N` puts an N-word system prompt before every chat, as Llama-3.1's template does
(a ~27-token system block), where the shared-prefix cache of `SteeredForward` pays off.

    python benchmarks/bench_melbo.py [--model PATH] [--header N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from trigrecon.core.hooks import add_to_resid
from trigrecon.core.io import write_json
from trigrecon.methods.common import resolve_target
from trigrecon.methods.melbo import MelboConfig, melbo
from trigrecon.steering.forward import SteeredForward
from trigrecon.steering.losses import melbo_objective
from trigrecon.steering.ortho import max_abs_cos

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = ROOT / "trigrecon" / "organisms" / "zoo" / "base"


def load(model: str | None) -> tuple[Any, str]:
    """The organisms' base model if built (or --model), else a tiny random model."""
    from trigrecon.core.model import load_model

    path = Path(model) if model else DEFAULT_BASE
    if (path / "config.json").exists():
        return load_model(path), str(path)
    from trigrecon.organisms.tiny import tiny_chat_model

    return tiny_chat_model(d_model=128, n_layers=4), "tiny random model (d_model 128, 4 layers)"


def prompts(n: int) -> list[str]:
    import random

    from trigrecon.organisms import data as D

    rng = random.Random(0)
    return [D.render_prompt(rng, D.random_words(rng, "all")) for _ in range(n)]


def header(hm: Any, n: int) -> str:
    """A fixed system prompt of `n` vocabulary words (Llama-3.1's template always writes a system
    block before the user turn)."""
    import random

    words = sorted(w for w in hm.tokenizer.get_vocab() if w.isalpha())
    return " ".join(random.Random(1).choices(words, k=n))


def reference_melbo(hm: Any, texts: list[str], cfg: MelboConfig, layer: int, target: int,
                    mode: str = "batched") -> torch.Tensor:
    """The plain loop: one vector at a time, a forward from the embeddings on every step.

    mode "batched": all prompts in one padded batch through the whole model; "original": one
    prompt per forward/backward, as in the original MELBO code; "to-target": batched, stopping at
    the target layer (the strongest plain baseline)."""
    batches = [hm.batch([t]) for t in texts] if mode == "original" else [hm.batch(texts)]
    fwd = SteeredForward(hm, hm.batch(texts), layer, target)  # only for the scale
    scale, q = fwd.resid_scale(), cfg.q if cfg.q is not None else cfg.p
    radius = cfg.norm * scale
    stop = target + 1 if mode == "to-target" else None
    with torch.no_grad():
        bases = [hm.model(b.tokens, stop_at_layer=target + 1) for b in batches]
    captured: dict[str, torch.Tensor] = {}

    def capture(resid: torch.Tensor, hook: Any) -> None:
        captured["target"] = resid

    gen = torch.Generator().manual_seed(cfg.seed)
    learned: list[torch.Tensor] = []

    def project(x: torch.Tensor) -> torch.Tensor:
        for u in learned:
            x = x - (x @ u) / (u @ u) * u
        return x

    for _ in range(cfg.n_vectors):
        v = project(torch.randn(hm.d_model, generator=gen))
        v = (radius * v / v.norm()).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=cfg.lr * radius, betas=(0.9, 0.98), amsgrad=True)
        for _ in range(cfg.steps):
            opt.zero_grad()
            for batch, base in zip(batches, bases, strict=True):
                hooks = [(hm.hook_name(layer), add_to_resid(v, batch.user_mask)),
                         (hm.hook_name(target), capture)]
                with hm.model.hooks(fwd_hooks=hooks):
                    hm.model(batch.tokens, stop_at_layer=stop)  # right-padded: no mask needed
                obj = melbo_objective(captured["target"][None], base, batch.attention_mask,
                                      cfg.p, q)[0]
                (-obj * len(batch) / len(texts) / scale).backward()
            with torch.no_grad():
                v.grad = project(v.grad)
                v.grad -= (v.grad @ v) * v / radius**2  # tangent to the sphere
            opt.step()
            with torch.no_grad():
                v.copy_(radius * torch.nn.functional.normalize(project(v), dim=0))
        learned.append(v.detach().clone())
    return torch.stack(learned)


def final_objective(hm: Any, texts: list[str], vectors: torch.Tensor, cfg: MelboConfig,
                    layer: int, target: int) -> list[float]:
    fwd = SteeredForward(hm, hm.batch(texts), layer, target)
    q = cfg.q if cfg.q is not None else cfg.p
    with torch.no_grad():
        acts = fwd.target_resid(vectors)
        return melbo_objective(acts, fwd.base_target_resid(), fwd.batch.attention_mask,
                               cfg.p, q).tolist()


def long_run(hm: Any, texts: list[str], cfg: MelboConfig, max_steps: int
             ) -> tuple[list[float], float]:
    """(mean objective after each update, seconds per step) of one longer run of ours (same
    seed: its first `cfg.steps` steps are the timed run's)."""
    t0 = time.perf_counter()
    long = melbo(hm, texts, replace(cfg, steps=max_steps))
    per_step = (time.perf_counter() - t0) / max_steps
    return long.history.mean(-1).tolist()[1:], per_step  # history[i]: before update i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=300,
                    help="longest run of ours when looking for the reference's final objective")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--header", type=int, default=0,
                    help="a system prompt of this many words before every prompt (Llama-3.1's "
                         "template puts a ~27-token system block there)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", default="original,batched",
                    help="comma-separated modes of reference_melbo: original, batched, to-target")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "melbo.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hm, model_name = load(args.model)
    texts = prompts(args.prompts)
    if args.header:
        hm = replace(hm, system=header(hm, args.header))  # every chat carries it
    cfg = MelboConfig(n_vectors=args.vectors, steps=args.steps)
    layer = max(1, hm.n_layers // 4)
    target = resolve_target(hm, layer, None)
    cfg.layer, cfg.target_layer = layer, target

    t0 = time.perf_counter()
    ours = melbo(hm, texts, cfg)
    t_ours = time.perf_counter() - t0
    obj_ours = mean(final_objective(hm, texts, ours.vectors, cfg, layer, target))
    result: dict[str, Any] = {
        "task": f"{args.vectors} orthogonal vectors x {args.steps} steps on {args.prompts} prompts",
        "model": model_name, "layers": [layer, target], "d_model": hm.d_model,
        "header_words": args.header, "threads": args.threads, "torch": torch.__version__,
        "seconds_ours": t_ours, "final_objective_ours": obj_ours,
        "max_abs_cos_ours": max_abs_cos(ours.vectors), "references": {},
    }
    curve, per_step = long_run(hm, texts, cfg, args.max_steps)
    for mode in args.reference.split(","):
        t0 = time.perf_counter()
        ref_vectors = reference_melbo(hm, texts, cfg, layer, target, mode)
        t_ref = time.perf_counter() - t0
        obj_ref = mean(final_objective(hm, texts, ref_vectors, cfg, layer, target))
        reach = next((i + 1 for i, x in enumerate(curve) if x >= obj_ref), None)
        result["references"][mode] = {
            "seconds": t_ref, "final_objective": obj_ref,
            "objective_rel_diff_ours": (obj_ours - obj_ref) / abs(obj_ref),
            "speedup_same_steps": t_ref / t_ours,
            "steps_ours_to_reference_objective": reach,
            "speedup_at_equal_objective": t_ref / (reach * per_step) if reach else None,
            "max_abs_cos": max_abs_cos(ref_vectors),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(json.dumps(result, indent=2))
    for mode, r in result["references"].items():
        eq = r["speedup_at_equal_objective"]
        print(f"vs {mode}: {r['speedup_same_steps']:.1f}x for the same steps; "
              f"{'n/a' if eq is None else f'{eq:.1f}x'} at equal objective "
              f"({r['steps_ours_to_reference_objective']} of our steps reach the reference's "
              f"{r['final_objective']:.3f}); target >= 5x")


if __name__ == "__main__":
    main()
