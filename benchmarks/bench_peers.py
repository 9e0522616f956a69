"""Benchmark: trigrecon's MELBO beside batched-melbo (the peer a user would pick), in one run.

Same model, prompts, layers, norm, exponents and step count for every implementation:
- `trigrecon`: `trigrecon.methods.melbo` (cached source residual, only blocks source+1..target,
  the lean functional blocks of `steering/lean.py`, exact Gram-Schmidt orthogonality);
- `trigrecon-tl`: the same with the HookedTransformer's own blocks (the path before issue 16);
- `trigrecon-compiled`: `trigrecon` with `compile=True` (the lean blocks through torch.compile;
  compiled once before the timings);
- `batched-melbo-head`: batched-melbo's sliced variant (GitHub HEAD: it runs only blocks
  source+1..target+1), vendored under `benchmarks/vendor/` (Apache-2.0, see its header);
- `batched-melbo-0.1.1`: the PyPI release (a full forward every step), if installed
  (`pip install --no-deps batched-melbo==0.1.1`, or `make bench`).

The model is `peer_model.build`'s random Llama (6 layers, d_model 256, 8 query / 2 KV heads,
d_mlp 896): its chat template writes the prompt and nothing else, so every one of the 16 tokens
of a prompt is user content and all implementations steer and score the same positions of the
same token ids (batched-melbo steers every position; trigrecon steers user tokens: here the same).
Source layer 1, target layer 4 (both: the residual after that block); norm R = the median
source-layer residual norm (trigrecon's unit); p = q = 2 (both defaults).

Reported per shape (vectors x steps x prompts):
- per-step seconds, interleaved short runs (A B C A B C ..., `--repeats`), median and min, plus
  the per-step time of each full run;
- time to equal objective, both directions: the time one implementation needs to reach the
  other's mean objective after `steps` steps, against that other's time for its `steps`; at each
  one's own defaults (trigrecon lr 0.01 relative to R; batched-melbo AdamW lr 0.001 absolute,
  i.e. 0.001/R relative) and at a common learning rate (each of the two);
- orthogonality (max |cos| between the vectors), and the learned/random objective ratio: the
  mean objective after `steps` steps (as each implementation records it: the same definition,
  sqrt of the summed squared target-layer change per prompt, averaged) over that of random
  orthogonal vectors of norm R; the final vectors are also scored by one common evaluator
  (trigrecon's `SteeredForward.melbo_objective`);
- roofline (`roofline`): FLOPs per optimisation step (FlopCounterMode, a 2-step run minus a
  1-step run, so setup cancels; the CPU attention kernels, mv and dot counted too), marginal
  seconds per step ((T(n2) - T(n1)) / (n2 - n1), n1 = 3, interleaved, median), the machine's fp32
  matmul peak at the same thread count (best GFLOP/s over the step's matmul shapes), and from
  them achieved GFLOP/s, efficiency and the ceiling: HEAD's seconds per step over trigrecon's
  FLOPs per step at 100% of the peak (the best per-step speedup its own FLOPs allow).

    python benchmarks/bench_peers.py [--shape small|large|both] [--threads 1] [--out-dir DIR]
    python benchmarks/bench_peers.py --roofline-only   # both shapes -> peers_roofline.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils import flop_counter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import peer_model  # noqa: E402
from trigrecon.core import lean as lean_mod  # noqa: E402
from trigrecon.core.io import write_json  # noqa: E402
from trigrecon.methods.melbo import MelboConfig, melbo  # noqa: E402
from trigrecon.steering.forward import SteeredForward  # noqa: E402
from trigrecon.steering.ortho import max_abs_cos, orthogonalize  # noqa: E402

SHAPES = {"small": (8, 50, 8), "large": (16, 100, 32)}
SOURCE, TARGET = 1, 4
LR_OURS = 0.01  # MelboConfig default, relative to R
LR_PEER = 0.001  # batched-melbo's AdamW lr (hard-coded), absolute
WARM_STEPS = 3  # roofline: n1 (marginal time from n1 to n1 + timing steps)
ROOFLINE_STEPS = {"small": 5, "large": 3}  # n2 - n1 when --timing-steps is 0
D_MODEL, D_MLP, D_QKV = 256, 896, 384  # peer_model's widths: the step's matmul shapes


@dataclass
class Run:
    vectors: torch.Tensor
    curve: list[float]
    """Mean objective over the vectors before each update."""
    seconds: float


@contextlib.contextmanager
def tl_blocks() -> Iterator[None]:
    """trigrecon with the HookedTransformer's blocks (the lean path switched off)."""
    old = lean_mod.supported
    lean_mod.supported = lambda model: False  # type: ignore[assignment]
    try:
        yield
    finally:
        lean_mod.supported = old


@contextlib.contextmanager
def peer_lr(module: Any, lr: float | None) -> Iterator[None]:
    """batched-melbo hard-codes AdamW(lr=.001): swap its `optim` for one with another lr."""
    if lr is None:
        yield
        return
    old = module.optim

    def adamw(params: Any, lr: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=new_lr, **kw)

    new_lr = lr
    module.optim = SimpleNamespace(AdamW=adamw)
    try:
        yield
    finally:
        module.optim = old


def run_ours(hm: Any, texts: list[str], k: int, steps: int, lr: float, tl: bool = False,
             compiled: bool = False) -> Run:
    cfg = MelboConfig(n_vectors=k, steps=steps, layer=SOURCE, target_layer=TARGET, lr=lr,
                      compile=compiled)
    with tl_blocks() if tl else contextlib.nullcontext():
        t0 = time.perf_counter()
        res = melbo(hm, texts, cfg)
        sec = time.perf_counter() - t0
    return Run(res.vectors, res.history.mean(-1).tolist(), sec)


def run_peer(module: Any, hf: Any, tok: Any, texts: list[str], k: int, steps: int, radius: float,
             lr: float | None = None) -> Run:
    bm = module.BatchedMELBO(hf, tok, source_layer_idx=SOURCE, target_layer_idx=TARGET,
                             layers_name="model.layers", normalization=radius, num_steps=steps)
    with peer_lr(module, lr), _quiet():
        t0 = time.perf_counter()
        bm.train(texts, k, vector_batch_size=k)
        sec = time.perf_counter() - t0
    curve = (-torch.tensor(bm.losses_all)).mean(0).tolist()  # losses are -objective
    return Run(bm.learned_vectors.detach().clone(), curve, sec)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """batched-melbo's tqdm bars go to stderr: keep the log readable."""
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _peers() -> dict[str, Any]:
    """batched-melbo HEAD (vendored) and, if installed, the PyPI release 0.1.1."""
    from benchmarks.vendor import batched_melbo_sliced as head

    peers: dict[str, Any] = {"batched-melbo-head": head}
    try:
        import batched_melbo.batched_melbo as pypi

        peers["batched-melbo-0.1.1"] = pypi
    except ImportError:
        print("batched-melbo (PyPI) not installed: skipped", file=sys.stderr)
    return peers


def reach(curve: list[float], level: float) -> int | None:
    """Steps (updates) until the curve first reaches `level` (curve[i]: before update i)."""
    return next((i for i, x in enumerate(curve) if x >= level), None)


def per_step(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict[str, Any]]:
    """Interleaved timing (A B C, A B C, ...): median and min seconds per step."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: {"median": statistics.median(t), "min": min(t), "all": t}
            for name, t in times.items()}


def bench_shape(hm: Any, hf: Any, tok: Any, shape: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    k, steps, n = SHAPES[shape]
    texts = peer_model.prompts(n)
    fwd = SteeredForward(hm, hm.batch(texts), SOURCE, TARGET)
    radius = fwd.resid_scale()  # norm 1.0 in trigrecon's unit
    peers = _peers()
    head = peers["batched-melbo-head"]

    def evaluate(vectors: torch.Tensor) -> float:
        with torch.no_grad():
            return float(fwd.melbo_objective(vectors.to(torch.float32), 2.0, 2.0).mean())

    gen = torch.Generator().manual_seed(123)
    rand = radius * orthogonalize(torch.randn(k, hm.d_model, generator=gen), normalize=True)
    random_obj = evaluate(rand)

    # 1. per-step time, interleaved short runs
    t_steps = args.timing_steps or max(3, steps // 10)
    fns: dict[str, Callable[[], float]] = {
        "trigrecon": lambda: run_ours(hm, texts, k, t_steps, LR_OURS).seconds / t_steps,
        "trigrecon-tl": lambda: run_ours(hm, texts, k, t_steps, LR_OURS, tl=True).seconds / t_steps,
        "trigrecon-compiled": lambda: run_ours(hm, texts, k, t_steps, LR_OURS,
                                               compiled=True).seconds / t_steps,
    }
    run_ours(hm, texts, k, 2, LR_OURS, compiled=True)  # compile once, outside the timings
    for name, mod in peers.items():
        fns[name] = (lambda m=mod: run_peer(m, hf, tok, texts, k, t_steps, radius).seconds / t_steps)
    timing = per_step(fns, args.repeats)
    print(shape, "per-step s (median):", {n_: round(v["median"], 4) for n_, v in timing.items()},
          flush=True)

    # 2. full runs: own defaults and the other's learning rate, both implementations
    long = steps * args.long_factor
    runs = {
        "trigrecon@own": run_ours(hm, texts, k, long, LR_OURS),
        "batched-melbo-head@own": run_peer(head, hf, tok, texts, k, long, radius),
    }
    if args.full_runs == "all":
        runs["trigrecon@peer-lr"] = run_ours(hm, texts, k, long, LR_PEER / radius)
        runs["batched-melbo-head@trigrecon-lr"] = run_peer(head, hf, tok, texts, k, long, radius,
                                                           lr=LR_OURS * radius)
    if "batched-melbo-0.1.1" in peers and args.full_runs == "all":
        runs["batched-melbo-0.1.1@own"] = run_peer(peers["batched-melbo-0.1.1"], hf, tok, texts,
                                                   k, steps, radius)
    step_s = {name: timing[name.split("@")[0]]["median"] for name in runs}
    full: dict[str, Any] = {}
    for name, r in runs.items():
        n_steps = len(r.curve)
        vec = r.vectors.reshape(k, -1).to(torch.float32)
        full[name] = {
            "steps": n_steps, "seconds": r.seconds, "seconds_per_step": r.seconds / n_steps,
            "objective_after_steps": r.curve[steps - 1] if n_steps >= steps else None,
            "final_objective_eval": evaluate(vec),
            "learned_over_random": (r.curve[steps - 1] / random_obj) if n_steps >= steps else None,
            "max_abs_cos": max_abs_cos(vec),
        }

    def equal(a: str, b: str) -> dict[str, Any]:
        """Time `a` needs to reach `b`'s objective after `steps` steps, against `b`'s time."""
        level = runs[b].curve[steps - 1]
        s = reach(runs[a].curve, level)
        t_b = steps * step_s[b]
        t_a = None if s is None else max(s, 1) * step_s[a]
        return {"level": level, "steps": s, "seconds": t_a, "seconds_other": t_b,
                "speedup": None if t_a is None else t_b / t_a,
                "searched_steps": len(runs[a].curve)}

    pairs = {
        "own defaults": ("trigrecon@own", "batched-melbo-head@own"),
        "common lr = trigrecon's": ("trigrecon@own", "batched-melbo-head@trigrecon-lr"),
        "common lr = batched-melbo's": ("trigrecon@peer-lr", "batched-melbo-head@own"),
    }
    equal_obj = {label: {"trigrecon reaches head": equal(a, b), "head reaches trigrecon": equal(b, a)}
                 for label, (a, b) in pairs.items() if a in runs and b in runs}
    return {
        "shape": {"vectors": k, "steps": steps, "prompts": n, "tokens_per_prompt": 16},
        "radius": radius, "random_objective": random_obj, "per_step_seconds": timing,
        "timing_steps": t_steps,
        "speedup_per_step_vs_head": timing["batched-melbo-head"]["median"]
        / timing["trigrecon"]["median"],
        "speedup_per_step_vs_head_min": timing["batched-melbo-head"]["min"]
        / timing["trigrecon"]["min"],
        "lean_over_tl_blocks": timing["trigrecon-tl"]["median"] / timing["trigrecon"]["median"],
        "speedup_per_step_vs_head_compiled": timing["batched-melbo-head"]["median"]
        / timing["trigrecon-compiled"]["median"],
        "runs": full, "equal_objective": equal_obj,
        "roofline": roofline(hm, hf, tok, shape, args),
    }


# --- roofline: FLOPs per step, marginal seconds per step, the machine's matmul peak ---------

def _mv_flop(a: Any, b: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return 2 * a[0] * a[1]


def _dot_flop(a: Any, b: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return 2 * a[0]


def _sdpa_cpu_flop(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return int(flop_counter.sdpa_flop_count(q, k, v))


def _sdpa_cpu_bwd_flop(g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None,
                       **kw: Any) -> int:
    return int(flop_counter.sdpa_backward_flop_count(g, q, k, v))


_aten = torch.ops.aten
EXTRA_FLOPS = {  # ops FlopCounterMode (torch 2.13) leaves at 0 that these steps run
    _aten.mv: _mv_flop, _aten.dot: _dot_flop,
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_bwd_flop,
}


def count_flops(fn: Callable[[], object]) -> int:
    mode = flop_counter.FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    with mode:
        fn()
    return int(mode.get_total_flops())


def flops_per_step(run: Callable[[int], Run]) -> int:
    """FLOPs of one optimisation step: a 2-step run minus a 1-step run (setup cancels)."""
    return count_flops(lambda: run(2)) - count_flops(lambda: run(1))


def marginal_seconds(runs: dict[str, Callable[[int], Run]], n1: int, n2: int, repeats: int
                     ) -> dict[str, dict[str, Any]]:
    """(T(n2) - T(n1)) / (n2 - n1) per implementation, interleaved: median, min, all."""
    def one(run: Callable[[int], Run]) -> Callable[[], float]:
        return lambda: (run(n2).seconds - run(n1).seconds) / (n2 - n1)

    return per_step({name: one(run) for name, run in runs.items()}, repeats)


def matmul_gflops(rows: int, inner: int, outer: int, weight_t: bool, min_s: float = 0.2,
                  rounds: int = 3) -> float:
    """fp32 [rows, inner] @ [inner, outer] (`weight_t`: B a transposed [outer, inner], as in
    F.linear; else contiguous, as in its input gradient): best GFLOP/s of `rounds`."""
    a = torch.randn(rows, inner)
    b = torch.randn(outer, inner).t() if weight_t else torch.randn(inner, outer)
    c = torch.empty(rows, outer)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(rounds):
        reps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_s:
            torch.mm(a, b, out=c)
            reps += 1
        best = min(best, elapsed / reps)
    return 2 * rows * inner * outer / best / 1e9


def matmul_peak(rows: int) -> dict[str, Any]:
    """The best fp32 GFLOP/s over the step's matmul shapes (both weight layouts)."""
    pairs = [(D_MODEL, D_MLP), (D_MLP, D_MODEL), (D_MODEL, D_MODEL), (D_MODEL, D_QKV),
             (D_QKV, D_MODEL)]
    shapes = {f"[{rows},{i}]@[{i},{o}]{' (B transposed)' if t else ''}": matmul_gflops(rows, i, o, t)
              for i, o in pairs for t in (True, False)}
    return {"gflops": max(shapes.values()), "shapes_gflops": shapes}


def roofline(hm: Any, hf: Any, tok: Any, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """FLOPs and marginal seconds per step of each implementation against the matmul peak."""
    k, _, n = SHAPES[shape]
    texts = peer_model.prompts(n)
    radius = SteeredForward(hm, hm.batch(texts), SOURCE, TARGET).resid_scale()
    def peer(mod: Any) -> Callable[[int], Run]:
        return lambda s: run_peer(mod, hf, tok, texts, k, s, radius)

    runs: dict[str, Callable[[int], Run]] = {
        "trigrecon": lambda s: run_ours(hm, texts, k, s, LR_OURS),
        "trigrecon-compiled": lambda s: run_ours(hm, texts, k, s, LR_OURS, compiled=True)}
    runs.update({name: peer(mod) for name, mod in _peers().items()})
    flops = {name: flops_per_step(run) for name, run in runs.items() if name != "trigrecon-compiled"}
    flops["trigrecon-compiled"] = flops["trigrecon"]  # the same computation, fused (inductor's
    # kernels are not seen by FlopCounterMode)
    runs["trigrecon-compiled"](2)  # compile once, outside the timings
    t_steps = args.timing_steps or ROOFLINE_STEPS[shape]
    secs = marginal_seconds(runs, WARM_STEPS, WARM_STEPS + t_steps, args.repeats)
    peak = matmul_peak(k * n * 16)
    out = derive(flops, secs, peak["gflops"])
    out.update({"steps_n1_n2": [WARM_STEPS, WARM_STEPS + t_steps], "repeats": args.repeats,
                "peak": peak})
    return out


def derive(flops: dict[str, int], secs: dict[str, dict[str, Any]], peak: float
           ) -> dict[str, Any]:
    """Achieved GFLOP/s, efficiency, and trigrecon's ceiling against HEAD at 100% of `peak`."""
    impl = {name: {"flops_per_step": f, "seconds_per_step": secs[name],
                   "gflops": f / secs[name]["median"] / 1e9,
                   "efficiency": f / secs[name]["median"] / 1e9 / peak}
            for name, f in flops.items()}
    ours, head = impl["trigrecon"], impl["batched-melbo-head"]
    ours_at_peak = ours["flops_per_step"] / (peak * 1e9)
    return {
        "peak_gflops": peak, "implementations": impl,
        "head_over_trigrecon_flops": head["flops_per_step"] / ours["flops_per_step"],
        "speedup_per_step_vs_head": head["seconds_per_step"]["median"]
        / ours["seconds_per_step"]["median"],
        "speedup_per_step_vs_head_compiled": head["seconds_per_step"]["median"]
        / impl["trigrecon-compiled"]["seconds_per_step"]["median"],
        "trigrecon_seconds_per_step_at_peak": ours_at_peak,
        "ceiling_speedup_vs_head": head["seconds_per_step"]["median"] / ours_at_peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["small", "large", "both"], default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--timing-steps", type=int, default=0, help="steps per timing run "
                    "(0: a tenth of the shape's steps, at least 3)")
    ap.add_argument("--long-factor", type=int, default=2, help="full runs go this many times "
                    "the shape's steps (to find when one reaches the other's objective)")
    ap.add_argument("--full-runs", choices=["all", "own"], default="all",
                    help="own: only each implementation at its own defaults (no other-lr runs, "
                         "no PyPI full run): for the large shape on a slow machine")
    ap.add_argument("--roofline-only", action="store_true", help="only the roofline (FLOPs, "
                    "marginal seconds per step, matmul peak), both shapes -> peers_roofline.json")
    ap.add_argument("--model-dir", default="/tmp/trigrecon-bench-peer-model")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.model_dir)
    if not (folder / "config.json").exists():
        peer_model.build(folder)
    hm, hf, tok = peer_model.load_both(folder)
    if args.roofline_only:
        roofline_only(hm, hf, tok, args)
        return
    shapes = ["small", "large"] if args.shape == "both" else [args.shape]
    for shape in shapes:
        result = bench_shape(hm, hf, tok, shape, args)
        result.update(_meta(args) | {"long_factor": args.long_factor})
        out = Path(args.out_dir) / f"peers_{shape}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
        summary(result)


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": "random Llama: 6 layers, d_model 256, 8/2 heads, d_mlp 896, "
                     "vocab 512 (benchmarks/peer_model.py)",
            "layers": [SOURCE, TARGET], "threads": args.threads, "torch": torch.__version__,
            "repeats": args.repeats, "load_average": list(_loadavg())}


def roofline_only(hm: Any, hf: Any, tok: Any, args: argparse.Namespace) -> None:
    """Both shapes' roofline blocks into peers_roofline.json."""
    result: dict[str, Any] = {"shapes": {}}
    for shape in ("small", "large"):
        k, _, n = SHAPES[shape]
        block = roofline(hm, hf, tok, shape, args)
        result["shapes"][shape] = {"vectors": k, "prompts": n, "tokens_per_prompt": 16} | block
        print_roofline(shape, block)
    result.update(_meta(args))
    out = Path(args.out_dir) / "peers_roofline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)


def _loadavg() -> tuple[float, ...]:
    import os

    return os.getloadavg()


def summary(r: dict[str, Any]) -> None:
    s = r["shape"]
    print(f"\n{s['vectors']} vectors x {s['steps']} steps x {s['prompts']} prompts "
          f"(load average {r['load_average'][0]:.1f}, {r['threads']} thread)")
    for name, t in r["per_step_seconds"].items():
        print(f"  {name:22s} {t['median'] * 1e3:8.1f} ms/step (min {t['min'] * 1e3:.1f})")
    print(f"  per step, trigrecon vs batched-melbo HEAD: {r['speedup_per_step_vs_head']:.2f}x "
          f"(min/min {r['speedup_per_step_vs_head_min']:.2f}x; compiled "
          f"{r['speedup_per_step_vs_head_compiled']:.2f}x); lean vs TL blocks "
          f"{r['lean_over_tl_blocks']:.2f}x")
    for name, f in r["runs"].items():
        print(f"  {name:34s} obj@{s['steps']} {f['objective_after_steps']:.3f}  "
              f"learned/random {f['learned_over_random']:.2f}  max|cos| {f['max_abs_cos']:.2e}")
    for label, both in r["equal_objective"].items():
        for direction, e in both.items():
            sp = "not reached" if e["speedup"] is None else f"{e['speedup']:.2f}x"
            print(f"  [{label}] {direction}: {e['steps']} steps -> {sp}")
    print_roofline(f"{s['vectors']}x{s['prompts']}", r["roofline"])
    print(json.dumps({"speedup_per_step_vs_head": r["speedup_per_step_vs_head"]}))


def print_roofline(label: str, r: dict[str, Any]) -> None:
    print(f"  roofline {label}: fp32 matmul peak {r['peak_gflops']:.1f} GFLOP/s", flush=True)
    for name, x in r["implementations"].items():
        print(f"    {name:22s} {x['flops_per_step'] / 1e9:7.2f} GFLOP/step  "
              f"{x['seconds_per_step']['median'] * 1e3:8.1f} ms/step  {x['gflops']:5.1f} GFLOP/s  "
              f"{x['efficiency']:.0%} of peak", flush=True)
    print(f"    HEAD/trigrecon FLOPs {r['head_over_trigrecon_flops']:.2f}; per step "
          f"{r['speedup_per_step_vs_head']:.2f}x (compiled "
          f"{r['speedup_per_step_vs_head_compiled']:.2f}x); ceiling at 100% of peak "
          f"{r['ceiling_speedup_vs_head']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
