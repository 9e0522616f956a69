"""Llama-3.1-8B shapes with random weights: every method for a few steps, memory and time.

The model is a random HookedTransformer with Llama-3.1-8B's shapes (d_model 4096, 32 query / 8
key-value heads of 128, d_mlp 14336, vocabulary 128,256, rope theta 5e5 with llama3 scaling) and
`--layers` blocks (32 for the real depth); the SAE is a random JumpReLU SAE in the Llama Scope
format (sae-lens `JumpReLUSAE`, 131,072 latents, bfloat16 config, no b_dec on the input, a scalar
threshold, hook `blocks.L.hook_resid_post`). The tokenizer is a word-level one with 128,256
entries and a Llama-3-style header template (the chat template's shape matters, not its words).

Each method runs a few optimisation steps (`--steps`) on `--prompts` prompts: SAE-Attribution
(one forward+backward), MELBO, supervised MELBO, SAE-MELBO (unsupervised and supervised). The
script prints seconds per step and peak memory (CUDA: `max_memory_allocated`; CPU: the process's
peak resident set, so run one configuration per process: `--sweep` does that). On a GPU it also
prints the MFU of supervised SAE-MELBO's steered forward/backward.

    # CPU, full width, a few layers (this box: 24 GiB RAM, bf16 to fit):
    python benchmarks/bench_8b_shapes.py --layers 4 --dtype bfloat16
    # CPU, linear growth in latents and vocabulary (one subprocess per point):
    python benchmarks/bench_8b_shapes.py --sweep --layers 2 --dtype bfloat16
    # GPU, all 32 layers (peak memory, per-step time, MFU; H100/H200 bf16 dense peak ~989 TFLOP/s):
    python benchmarks/bench_8b_shapes.py --device cuda --layers 32 --dtype bfloat16 \\
        --prompts 32 --vectors 8 --steps 5 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA3_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|> "
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|> {% endif %}")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<unk>"]


def tokenizer(vocab: int, out: Path) -> Any:
    """A word-level tokenizer of `vocab` entries (w0, w1, ...) with a Llama-3-style template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = SPECIALS + [f"w{i}" for i in range(vocab - len(SPECIALS))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   eos_token="<|eot_id|>", pad_token="<|end_of_text|>",
                                   additional_special_tokens=SPECIALS[:4])
    fast.chat_template = LLAMA3_TEMPLATE
    fast.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def model(layers: int, vocab: int, dtype: torch.dtype, device: str) -> Any:
    """A random HookedTransformer with Llama-3.1-8B's shapes and `layers` blocks."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        model_name="llama-3.1-8b-shapes", d_model=4096, d_head=128, n_heads=32,
        n_key_value_heads=8, d_mlp=14336, n_layers=layers, n_ctx=256, d_vocab=vocab, eps=1e-5,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=128, rotary_base=500000.0, rotary_adjacent_pairs=False, final_rms=True,
        gated_mlp=True, original_architecture="LlamaForCausalLM", init_weights=False,
        dtype=dtype, device=device, use_NTK_by_parts_rope=True, NTK_by_parts_factor=8.0,
        NTK_by_parts_low_freq_factor=1.0, NTK_by_parts_high_freq_factor=4.0,
        NTK_original_ctx_len=8192)
    m = HookedTransformer(cfg, move_to_device=True)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".w"):  # RMSNorm gains
                p.fill_(1.0)
            elif p.ndim >= 2:
                fan_in = p.shape[-2] if name.endswith(("W_Q", "W_K", "W_V", "W_in", "W_gate",
                                                       "W_out", "W_U", "W_O")) else 1
                std = 1.0 if fan_in == 1 else fan_in ** -0.5
                p.normal_(0.0, std, generator=gen)
            else:
                p.zero_()
    m.requires_grad_(False)
    return m.eval()


def llama_scope_sae(d_sae: int, layer: int, dtype: torch.dtype, device: str) -> Any:
    """A random JumpReLU SAE in the Llama Scope format (as sae-lens loads Llama Scope)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    cfg = JumpReLUSAEConfig(d_in=4096, d_sae=d_sae, dtype=str(dtype).replace("torch.", ""),
                            device=device, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    cfg.metadata.model_name = "meta-llama/Llama-3.1-8B"
    sae = JumpReLUSAE(cfg)
    gen = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        w = torch.randn(d_sae, 4096, generator=gen, device=device, dtype=torch.float32)
        w = torch.nn.functional.normalize(w, dim=-1)
        sae.W_dec.copy_(w.to(sae.W_dec.dtype))
        sae.W_enc.copy_(w.T.to(sae.W_enc.dtype))
        del w
        sae.threshold.fill_(0.5)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.requires_grad_(False)
    return sae.eval()


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from trigrecon.core.model import HookedChatModel
    from trigrecon.methods.melbo import MelboConfig, melbo
    from trigrecon.methods.sae_attribution import SAEAttributionConfig, sae_attribution
    from trigrecon.methods.sae_melbo import SAEMelboConfig, sae_melbo
    from trigrecon.methods.supervised_melbo import SupervisedMelboConfig, supervised_melbo

    dtype = getattr(torch, args.dtype)
    dev = args.device
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tok = tokenizer(args.vocab, Path(d))
    m = model(args.layers, args.vocab, dtype, dev)
    layer = args.layer if args.layer is not None else max(1, args.layers // 4)
    sae = llama_scope_sae(args.d_sae, layer, dtype, dev)
    hm = HookedChatModel(m, tok, "llama-3.1-8b-shapes (random)")
    built = time.perf_counter() - t0
    after_build = peak_bytes(dev)
    import random

    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(5000)}" for _ in range(args.prompt_words))
               for _ in range(args.prompts)]
    response = " ".join(f"w{i}" for i in range(100, 100 + args.response_words))
    target = min(args.layers - 1, layer + max(1, args.layers // 2))
    k, s = args.vectors, args.steps
    jobs = {
        "sae_attribution": lambda: sae_attribution(hm, sae, prompts, response,
                                                   SAEAttributionConfig(layer=layer)),
        "melbo": lambda: melbo(hm, prompts, MelboConfig(layer=layer, target_layer=target,
                                                        n_vectors=k, steps=s)),
        "supervised_melbo": lambda: supervised_melbo(hm, prompts, response, SupervisedMelboConfig(
            layer=layer, n_vectors=k, steps=s)),
        "sae_melbo": lambda: sae_melbo(hm, sae, prompts, None, SAEMelboConfig(
            objective="unsupervised", layer=layer, target_layer=target, n_vectors=k, steps=s,
            effect_top=2)),
        "supervised_sae_melbo": lambda: sae_melbo(hm, sae, prompts, response, SAEMelboConfig(
            layer=layer, n_vectors=k, steps=s, effect_top=2)),
    }
    methods = list(jobs) if args.methods == "all" else args.methods.split(",")
    out: dict[str, Any] = {
        "layers": args.layers, "layer": layer, "target_layer": target, "dtype": args.dtype,
        "device": dev, "vocab": args.vocab, "d_sae": args.d_sae, "prompts": args.prompts,
        "prompt_words": args.prompt_words, "response_words": args.response_words,
        "vectors": k, "steps": s, "threads": torch.get_num_threads(),
        "build_seconds": built, "peak_bytes_after_build": after_build, "methods": {}}
    for name in methods:
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(dev)
        t = time.perf_counter()
        jobs[name]()
        sync(dev)
        sec = time.perf_counter() - t
        steps = 1 if name == "sae_attribution" else s
        out["methods"][name] = {"seconds": sec, "seconds_per_step": sec / steps,
                                "peak_bytes": peak_bytes(dev)}
        print(f"{name:22s} {sec / steps:8.3f} s/step   peak {peak_bytes(dev) / 2**30:6.2f} GiB",
              flush=True)
    if dev.startswith("cuda") and "supervised_sae_melbo" in out["methods"]:
        out["mfu_supervised_sae_melbo"] = mfu(hm, layer, args, out)
        print(f"MFU (supervised SAE-MELBO steered forward/backward): "
              f"{out['mfu_supervised_sae_melbo']:.1%}")
    return out


def mfu(hm: Any, layer: int, args: argparse.Namespace, out: dict[str, Any]) -> float:
    """Model FLOPs of one supervised SAE-MELBO step / (seconds per step x peak FLOP/s).

    Per step: blocks layer+1..end run forward (2 FLOP per weight per token) and backward to the
    vector (input gradients only: another 2), the unembedding only on response positions, and
    z @ W_dec for the codes (negligible). Tokens: every prompt's positions after the shared
    prefix, for each of the vectors."""
    cfg = hm.model.cfg
    per_block = (cfg.d_model * (cfg.n_heads + 2 * cfg.n_key_value_heads) * cfg.d_head
                 + cfg.n_heads * cfg.d_head * cfg.d_model + 3 * cfg.d_model * cfg.d_mlp)
    blocks = cfg.n_layers - (layer + 1)
    tokens = args.vectors * args.prompts * (args.prompt_words + args.response_words + 3)
    resp = args.vectors * args.prompts * args.response_words
    flops = 4 * (per_block * blocks * tokens + cfg.d_model * cfg.d_vocab * resp)
    sec = out["methods"]["supervised_sae_melbo"]["seconds_per_step"]
    return flops / sec / (args.peak_tflops * 1e12)


def sweep(args: argparse.Namespace) -> None:
    """Supervised SAE-MELBO at several widths, one subprocess each (peak RSS per process)."""
    points = [("d_sae", int(d), args.vocab) for d in args.sweep_d_sae.split(",") if d]
    points += [("vocab", args.d_sae, int(v)) for v in args.sweep_vocab.split(",") if v]
    rows = []
    for what, d_sae, vocab in points:
        cmd = [sys.executable, __file__, "--layers", str(args.layers), "--dtype", args.dtype,
               "--threads", str(args.threads), "--prompt-words", str(args.prompt_words),
               "--response-words", str(args.response_words),
               *([] if args.layer is None else ["--layer", str(args.layer)]),
               "--d-sae", str(d_sae), "--vocab", str(vocab), "--steps", str(args.steps),
               "--prompts", str(args.prompts), "--vectors", str(args.vectors),
               "--methods", "supervised_sae_melbo", "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            raise SystemExit(res.returncode)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        m = r["methods"]["supervised_sae_melbo"]
        rows.append({"vary": what, "d_sae": d_sae, "vocab": vocab,
                     "peak_gib": m["peak_bytes"] / 2**30,
                     "after_build_gib": r["peak_bytes_after_build"] / 2**30,
                     "seconds_per_step": m["seconds_per_step"]})
        print(f"{what:6s} d_sae {d_sae:7d} vocab {vocab:7d}: peak {rows[-1]['peak_gib']:.2f} GiB "
              f"(built {rows[-1]['after_build_gib']:.2f}), {m['seconds_per_step']:.3f} s/step",
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"sweep": rows, "layers": args.layers,
                                              "dtype": args.dtype}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer", type=int, default=None, help="steering layer (default layers//4)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--d-sae", type=int, default=131072)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=16)
    ap.add_argument("--response-words", type=int, default=8)
    ap.add_argument("--vectors", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="accelerator's dense peak for the dtype (H100/H200 SXM bf16: 989)")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-d-sae", default="32768,65536,131072")
    ap.add_argument("--sweep-vocab", default="32064,64128,128256")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        sweep(args)
        return
    res = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
