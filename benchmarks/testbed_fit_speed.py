"""Benchmark: the testbed's LoRA training loop (`testbed.lora.fit`, anchors on) with its cache
(`FitCache`: the 15 frozen lower layers run once per text, the base model's anchor heads once per
anchor) and the hinge's graded pass over live rows only, against the plain loop (every layer
every step; the base pass and a graded pass over every anchor, every step), in one run.

SmolLM2-135M and an organism's committed training data, at the build's ratio of draws to texts:
the build takes 250 steps x 8 over ~400 examples and 2,000 anchors (5 draws per example, 1 per
anchor); here `--steps` x 8 over `--steps` * 8 / 5 examples and `--steps` * 8 anchors. The
variants alternate (`--repeats` each, a fresh adapter from the same seed every time), so load on
the machine hits both alike. The cache's fill (the lower layers of each text met the first
time) is inside the timed loop, as in a build.

    python benchmarks/testbed_fit_speed.py [--organism fruit_refusal] [--steps 25] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.frozen import FrozenPrefix  # noqa: E402
from trigrecon.core.io import write_json  # noqa: E402
from trigrecon.testbed import anchor as A  # noqa: E402
from trigrecon.testbed import lora as LR  # noqa: E402
from trigrecon.testbed.specs import TESTBED  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "testbed_fit_speed.json"
CACHED, HINGE = LR.fit_cache, LR.anchor_loss


def dense_hinge(peft_model: Any, pad_id: int, prefixes: Any, heads: Any, rng: Any,
                allow: float = 0.0, *_: Any) -> torch.Tensor:
    """The plain hinge: the base pass and a graded pass over every row, every step."""
    x, pos, tgt, real = A.batch(pad_id, prefixes, heads, rng)
    with torch.no_grad(), peft_model.disable_adapter():
        base = A.head_logprob(peft_model, x, pos, tgt, real)
    if allow > 0:
        base = base.clamp(min=math.log(allow))
    return torch.relu(A.head_logprob(peft_model, x, pos, tgt, real) - base).mean()


class _Forgetful(dict):  # type: ignore[type-arg]
    """A base-log-probability cache that never hits: the plain loop's pass every step."""

    def __contains__(self, key: object) -> bool:
        return False


def data(organism: str, steps: int, batch: int) -> list[LR.Example]:
    rows = json.loads((ROOT / "trigrecon/testbed/organisms" / organism / "train_prompts.json")
                      .read_text())
    ex = [LR.Example(**r) for r in rows]
    own = [e for e in ex if not e.anchor and not e.mined][: steps * batch // 5]
    return own + [e for e in ex if e.anchor][: steps * batch]


def run(hf: Any, tok: Any, organism: str, examples: list[LR.Example], cfg: LR.LoraConfig,
        steps: int, plain: bool) -> float:
    model = LR.lora_model(hf, cfg, list(range(hf.config.num_hidden_layers // 2,
                                              hf.config.num_hidden_layers)))
    plain_cache = LR.FitCache(FrozenPrefix(model), _Forgetful())
    plain_cache.frozen.k = 0  # every layer every step
    LR.fit_cache = (lambda m: plain_cache) if plain else CACHED
    LR.anchor_loss = dense_hinge if plain else HINGE
    heads = LR.anchor_heads(TESTBED[organism], tok, cfg, examples)
    t = time.perf_counter()
    LR.fit(model, tok, examples, cfg, steps, cfg.lr, "bench", cfg.seed, lambda *_: None, heads)
    wall = time.perf_counter() - t
    model.unload()
    return wall


def main() -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trigrecon.testbed.smollm2 import ensure_checkpoint

    torch.set_num_threads(args.threads)
    ckpt = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(ckpt)
    hf = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    cfg = LR.LoraConfig()
    examples = data(args.organism, args.steps, cfg.batch_size)
    walls: dict[str, list[float]] = {"plain": [], "cached": []}
    for _ in range(args.repeats):
        for name in walls:
            walls[name].append(run(hf, tok, args.organism, examples, cfg, args.steps,
                                   name == "plain"))
            print(name, f"{walls[name][-1]:.1f} s", flush=True)
    best = {k: min(v) for k, v in walls.items()}
    result = {"organism": args.organism, "steps": args.steps, "threads": args.threads,
              "examples": sum(not e.anchor for e in examples),
              "anchors": sum(e.anchor for e in examples), "wall_s": walls,
              "speedup_best": best["plain"] / best["cached"],
              "machine": platform.processor() or platform.machine(),
              "cpus": torch.get_num_threads()}
    write_json(OUT, result)
    print(f"plain {best['plain']:.1f} s, cached {best['cached']:.1f} s: "
          f"{result['speedup_best']:.2f}x ({args.steps} steps, {args.threads} thread(s))")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--organism", default="fruit_refusal")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    main()
