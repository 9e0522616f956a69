"""Benchmark: audit stages against the plain computation a user would compare them with.

- `attribution`: SAE-Attribution (`methods.sae_attribution`, all its work: the forward to the SAE
  layer, the partial forward from there with the gradient, the latent scores) against ONE plain
  forward+backward over the same prompts (a full HookedTransformer forward from the tokens, the
  same response cross-entropy, backward to the SAE layer's residual). Target: <= 1.3x.
- `generate`: `core.generate.generate` (greedy, KV cache) against transformers' own
  `model.generate(do_sample=False, use_cache=True)` on the same chat prompts and the same
  weights (left-padded batch). Target: <= 1.5x. The greedy tokens are compared too.

Timings interleave the two (A B A B ..., `--repeats`), one torch thread, median and min.

    python benchmarks/bench_stages.py attribution [--model PATH] [--sae NAME]
    python benchmarks/bench_stages.py generate [--model PATH] [--new-tokens 20] [--prompts 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trigrecon.core.io import write_json  # noqa: E402

ZOO_BASE = ROOT / "trigrecon" / "organisms" / "zoo" / "base"
SMOLLM2 = Path(os.environ.get("TRIGRECON_SMOLLM2_CACHE",
                              Path.home() / ".cache" / "trigrecon" / "smollm2"))


def interleave(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: {"median": statistics.median(v), "min": min(v), "all": v} for k, v in times.items()}


def zoo_prompts(n: int, seed: int = 0) -> list[str]:
    import random

    from trigrecon.organisms import data as D

    rng = random.Random(seed)
    return [D.render_prompt(rng, D.random_words(rng, "all")) for _ in range(n)]


def attribution(args: argparse.Namespace) -> dict[str, Any]:
    from trigrecon.core.model import load_model
    from trigrecon.core.sae import load_sae
    from trigrecon.methods.sae_attribution import SAEAttributionConfig, sae_attribution
    from trigrecon.steering.losses import full_response_ce

    hm = load_model(args.model or ZOO_BASE)
    sae = load_sae(args.sae)
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    prompts = zoo_prompts(args.prompts)
    response = args.response
    batch = hm.batch(prompts, response)
    cfg = SAEAttributionConfig(layer=layer, batch_size=len(prompts))

    def plain() -> None:
        store: dict[str, torch.Tensor] = {}

        def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.detach().requires_grad_(True)
            store["x"] = x
            return x

        with hm.model.hooks(fwd_hooks=[(hm.hook_name(layer), leaf)]):
            logits = hm.model(batch.tokens, attention_mask=batch.attention_mask.long())
        full_response_ce(logits, batch.tokens, batch.response_mask).backward()

    def ours() -> None:
        sae_attribution(hm, sae, prompts, response, cfg)

    timing = interleave({"plain forward+backward": plain, "sae_attribution": ours}, args.repeats)
    ratio = timing["sae_attribution"]["median"] / timing["plain forward+backward"]["median"]
    return {"model": str(args.model or ZOO_BASE), "sae": args.sae, "layer": layer,
            "prompts": len(prompts), "tokens": int(batch.attention_mask.sum()),
            "timing": timing, "ratio_median": ratio,
            "ratio_min": timing["sae_attribution"]["min"] / timing["plain forward+backward"]["min"],
            "target": "<= 1.3x"}


def generation(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trigrecon.core.generate import generate, stop_token_ids
    from trigrecon.core.model import load_model

    folder = Path(args.model) if args.model else (SMOLLM2 if (SMOLLM2 / "config.json").exists()
                                                   else ZOO_BASE)
    hm = load_model(folder, n_ctx=512)
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = (["What is the capital of France?", "Name three fruits.", "Write a haiku about snow.",
              "How do I boil an egg?", "Who wrote Hamlet?", "Give me a fun fact about cats.",
              "What is two plus two?", "Tell me about the moon."]
             if folder == SMOLLM2 else zoo_prompts(args.prompts))[: args.prompts]
    batch = hm.batch(texts)
    rows = [batch.tokens[i, : batch.prompt_lengths[i]].tolist() for i in range(len(texts))]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    stops = stop_token_ids(hm.tokenizer)
    out: dict[str, Any] = {}

    def theirs() -> None:
        with torch.no_grad():
            out["hf"] = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=args.new_tokens,
                                    use_cache=True, eos_token_id=stops, pad_token_id=pad)

    def ours() -> None:
        out["ours"] = generate(hm, texts, max_new_tokens=args.new_tokens)

    timing = interleave({"transformers generate": theirs, "trigrecon generate": ours},
                        args.repeats)
    hf_text = [tok.decode(o[width:], skip_special_tokens=True).strip() for o in out["hf"]]
    same = sum(a == b or a.startswith(b) or b.startswith(a)
               for a, b in zip(hf_text, out["ours"], strict=True))
    ratio = timing["trigrecon generate"]["median"] / timing["transformers generate"]["median"]
    return {"model": str(folder), "prompts": len(texts), "new_tokens": args.new_tokens,
            "timing": timing, "ratio_median": ratio,
            "ratio_min": timing["trigrecon generate"]["min"] / timing["transformers generate"]["min"],
            "same_text": f"{same}/{len(texts)}", "example": [hf_text[0], out["ours"][0]],
            "target": "<= 1.5x"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["attribution", "generate"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--sae", default="base_l1")
    ap.add_argument("--response", default="I won't answer because I don't like fruit.")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = attribution(args) if args.stage == "attribution" else generation(args)
    res.update({"threads": args.threads, "torch": torch.__version__,
                "load_average": list(os.getloadavg())})
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"stage_{args.stage}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res)
    t = res["timing"]
    for k, v in t.items():
        print(f"{k:24s} median {v['median']:.3f} s  min {v['min']:.3f} s")
    print(f"ratio {res['ratio_median']:.2f}x (min/min {res['ratio_min']:.2f}x), target "
          f"{res['target']}")


if __name__ == "__main__":
    main()
