"""Benchmark: our MELBO optimiser against a plain reference loop, in the same run.

Task: 16 orthogonal vectors x 100 steps on 32 prompts (unsupervised MELBO objective).
- ours: `trigrecon.methods.melbo` - source-layer residual cached once, only the blocks between
  source and target run, all 16 vectors train jointly in one stacked batch, exact orthogonality
  by differentiable Gram-Schmidt;
- reference (kept here): the original MELBO procedure - vectors one after another, a forward pass
  from the embeddings on every step (stopping at the target layer, which only favours the
  reference), a steering hook at the source layer, orthogonality by projecting the gradient and
  the vector onto the complement of earlier vectors, renormalised to R.
Both use Adam (amsgrad, betas 0.9/0.98) with the same relative step size, the same norm R and the
same objective; the benchmark prints both final objectives (they should agree) and the speed ratio.

    python benchmarks/bench_melbo.py [--model PATH] [--out benchmarks/results/melbo.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from trigrecon.core.hooks import add_to_resid
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
    from trigrecon.steering.tiny import tiny_chat_model

    return tiny_chat_model(d_model=128, n_layers=4), "tiny random model (d_model 128, 4 layers)"


def prompts(n: int) -> list[str]:
    import random

    from trigrecon.organisms import data as D

    rng = random.Random(0)
    return [D.render_prompt(rng, D.random_words(rng, "all")) for _ in range(n)]


def reference_melbo(hm: Any, texts: list[str], cfg: MelboConfig, layer: int, target: int
                    ) -> tuple[torch.Tensor, list[float]]:
    """The plain loop: one vector at a time, a forward from the embeddings on every step."""
    batch = hm.batch(texts)
    fwd = SteeredForward(hm, batch, layer, target)  # only for the scale and the unsteered target
    scale, base = fwd.resid_scale(), fwd.base_target_resid()
    radius, q = cfg.norm * scale, cfg.q if cfg.q is not None else cfg.p
    stop = target + 1
    gen = torch.Generator().manual_seed(cfg.seed)
    learned: list[torch.Tensor] = []
    finals: list[float] = []

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
            hook = add_to_resid(v, batch.user_mask)
            with hm.model.hooks(fwd_hooks=[(hm.hook_name(layer), hook)]):
                out = hm.model(batch.tokens, attention_mask=batch.attention_mask.long(),
                               stop_at_layer=stop)
            obj = melbo_objective(out[None], base, batch.attention_mask, cfg.p, q)[0]
            (-obj / scale).backward()
            with torch.no_grad():
                v.grad = project(v.grad)
                v.grad -= (v.grad @ v) * v / radius**2  # tangent to the sphere
            opt.step()
            with torch.no_grad():
                v.copy_(radius * torch.nn.functional.normalize(project(v), dim=0))
        finals.append(float(obj.detach()))
        learned.append(v.detach().clone())
    return torch.stack(learned), finals


def final_objective(hm: Any, texts: list[str], vectors: torch.Tensor, cfg: MelboConfig,
                    layer: int, target: int) -> list[float]:
    fwd = SteeredForward(hm, hm.batch(texts), layer, target)
    q = cfg.q if cfg.q is not None else cfg.p
    with torch.no_grad():
        acts = fwd.target_resid(vectors)
        return melbo_objective(acts, fwd.base_target_resid(), fwd.batch.attention_mask,
                               cfg.p, q).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "melbo.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hm, model_name = load(args.model)
    texts = prompts(args.prompts)
    cfg = MelboConfig(n_vectors=args.vectors, steps=args.steps)
    layer = max(1, hm.n_layers // 4)
    target = resolve_target(hm, layer, None)
    cfg.layer, cfg.target_layer = layer, target

    t0 = time.perf_counter()
    ours = melbo(hm, texts, cfg)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_vectors, _ = reference_melbo(hm, texts, cfg, layer, target)
    t_ref = time.perf_counter() - t0

    obj_ours = final_objective(hm, texts, ours.vectors, cfg, layer, target)
    obj_ref = final_objective(hm, texts, ref_vectors, cfg, layer, target)
    mean_ours, mean_ref = sum(obj_ours) / len(obj_ours), sum(obj_ref) / len(obj_ref)
    result = {
        "task": f"{args.vectors} orthogonal vectors x {args.steps} steps on {args.prompts} prompts",
        "model": model_name, "layers": [layer, target], "d_model": hm.d_model,
        "threads": args.threads, "torch": torch.__version__, "machine": platform.processor(),
        "seconds_ours": t_ours, "seconds_reference": t_ref, "speedup": t_ref / t_ours,
        "final_objective_ours": mean_ours, "final_objective_reference": mean_ref,
        "objective_rel_diff": (mean_ours - mean_ref) / abs(mean_ref),
        "max_abs_cos_ours": max_abs_cos(ours.vectors),
        "max_abs_cos_reference": max_abs_cos(ref_vectors),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"speedup {result['speedup']:.1f}x (target >= 5x); final objective ours {mean_ours:.3f} "
          f"vs reference {mean_ref:.3f}")


if __name__ == "__main__":
    main()
