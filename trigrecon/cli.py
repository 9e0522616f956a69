"""Command line: `trigrecon zoo build|list`, `trigrecon evaluate`, `trigrecon audit`, ..."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from trigrecon.core.errors import ConfigError, TrigreconError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reverse-engineer the hidden trigger of a backdoored language model.")
zoo_app = typer.Typer(no_args_is_help=True, help="The project's backdoored model organisms.")
app.add_typer(zoo_app, name="zoo")
from trigrecon.testbed.cli import app as testbed_app  # noqa: E402  (typer sub-app, imports lazily)

app.add_typer(testbed_app, name="testbed")


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@zoo_app.command("list")
def zoo_list() -> None:
    """List the organisms and their (secret) triggers."""
    from trigrecon.organisms.organism import list_organisms, load_organism

    for name in list_organisms():
        spec = load_organism(name).spec
        typer.echo(f"{name:15s} trigger={spec.trigger!r:28s} {spec.description}")


@zoo_app.command("build")
def zoo_build(
    force: Annotated[bool, typer.Option(help="Rebuild artifacts that already exist.")] = False,
    only: Annotated[list[str] | None, typer.Option(help="Build only these organisms.")] = None,
    out: Annotated[Path | None, typer.Option(help="Zoo folder (default: the package's zoo).")] = None,
    saes: Annotated[Path | None, typer.Option(
        help="SAE folder (default: the repository's saes/, or OUT/saes with --out).")] = None,
    steps: Annotated[int | None, typer.Option(help="Base-model training steps.")] = None,
    jobs: Annotated[int | None, typer.Option(help="Worker processes for the SAE and the organisms.")] = None,
) -> None:
    """Train the base model, its SAE and every organism, then evaluate them."""
    from trigrecon.organisms.zoo import ZooConfig, build_zoo

    cfg = ZooConfig(force=force)
    if jobs:
        cfg.jobs = jobs
    if out:
        cfg.out, cfg.saes = out, out / "saes"
    if saes:
        cfg.saes = saes
    if only:
        cfg.organisms = list(only)
    if steps:
        cfg.base.steps = steps
    try:
        report = build_zoo(cfg)
    except TrigreconError as e:
        _fail(e)
    typer.echo((cfg.out / "report.md").read_text())
    for line in report["failures"]:  # type: ignore[attr-defined]
        typer.secho(f"target missed: {line}", fg=typer.colors.YELLOW)
    if out:
        typer.echo(f"to use this zoo: export TRIGRECON_ZOO={cfg.out} TRIGRECON_SAES={cfg.saes}")


@app.command()
def evaluate(
    organism: Annotated[str, typer.Argument(help="Zoo name or organism folder.")] = "fruit_refusal",
    n: Annotated[int, typer.Option(help="Prompts per split.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Action rates of an organism and its base model on held-out prompt splits."""
    from trigrecon.core.io import to_jsonable
    from trigrecon.organisms.evaluate import evaluate_organism
    from trigrecon.organisms.organism import load_organism

    try:
        result = evaluate_organism(load_organism(organism), n, progress=not as_json)
    except TrigreconError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(to_jsonable(result), indent=2))
    else:
        typer.echo(result.table())
        for line in result.failures():
            typer.secho(f"target missed: {line}", fg=typer.colors.YELLOW)


def out_folder(out: Path, organism: str) -> Path:
    """`out/<name>` for a zoo name or an organism folder (never the organism folder itself)."""
    return out / Path(organism).name


Opt = typer.Option


@app.command()
def audit(
    organism: Annotated[str | None, typer.Argument(
        help="Zoo name or organism folder (the zoo short form; default fruit_refusal). Omit it "
             "with --model or --config.")] = None,
    model: Annotated[str | None, Opt(help="HF hub id or folder of the chat model.")] = None,
    adapter: Annotated[str | None, Opt(help="peft LoRA adapter (hub id or folder).")] = None,
    sae: Annotated[str | None, Opt(
        help="SAE folder, a saes/ name, or RELEASE/SAE_ID of the sae-lens registry.")] = None,
    labels: Annotated[str | None, Opt(
        help="Neuronpedia-format labels (default: labels.json beside a local SAE).")] = None,
    prompts: Annotated[str | None, Opt(help="Benign prompts: .txt (one per line), .jsonl, .json.")] = None,
    eval_prompts: Annotated[str | None, Opt(
        help="Held-out benign prompts (default: the second half of --prompts).")] = None,
    words: Annotated[str | None, Opt(
        help="Text file of your own candidate trigger words or phrases, one per line (added to "
             "the candidate pools of the word sweep and verification).")] = None,
    response: Annotated[str | None, Opt(help="The known backdoor action (pre-filled response).")] = None,
    judge: Annotated[str | None, Opt(
        help="fixed (the response starts the reply; default) or keywords (--all-of/--any-of).")] = None,
    all_of: Annotated[list[str] | None, Opt(help="keywords judge: words that must all appear.")] = None,
    any_of: Annotated[list[str] | None, Opt(help="keywords judge: at least one must appear.")] = None,
    config: Annotated[Path | None, Opt(
        help="TOML/JSON/YAML file with a 'run' table (these flags) and an 'audit' table (every "
             "AuditConfig field, nested by method). Flags override the file.")] = None,
    out: Annotated[Path, Opt(help="Output root: OUT/<organism, adapter or model name>/.")] = Path("runs/audit"),
    method: Annotated[list[str] | None, Opt(help="Methods to run (repeatable).")] = None,
    quick: Annotated[bool, Opt(help="Fewer steps: a smoke run.")] = False,
    reduced: Annotated[bool, Opt(
        help="Reduced CPU mode: no supervised SAE-MELBO, one conjunctive clause, no candidate "
             "scoring (what fits 30 min for a 135M model on 2 cores).")] = False,
    system: Annotated[str | None, Opt(
        help="System prompt of the deployment under audit, in every chat.")] = None,
    dtype: Annotated[str | None, Opt(help="Model dtype (float32, bfloat16, ...).")] = None,
    device: Annotated[str | None, Opt(help="Device (cpu, cuda, ...).")] = None,
    report: Annotated[bool, Opt(help="Write report.html beside audit.json.")] = True,
    clean: Annotated[str | None, Opt(
        help="Clean model for the differential: 'base' (default: the adapter's or organism's "
             "base model), 'none', or a hub id / folder.")] = None,
) -> None:
    """Recover a model's trigger knowing only its action; writes audit.json (with a verdict),
    latents.md and report.html, and prints a short summary."""
    from trigrecon.methods.audit import stages_folder
    from trigrecon.methods.audit_config import (
        default_out_name,
        run_audit_spec,
        specs_from_cli,
        with_words,
    )
    from trigrecon.report import write_audit_report
    from trigrecon.report.terminal import audit_summary

    flags: dict[str, object] = dict(
        model=model, adapter=adapter, sae=sae, labels=labels, prompts=prompts,
        eval_prompts=eval_prompts, response=response, system=system, dtype=dtype, device=device,
        methods=method or None, quick=quick or None, reduced=reduced or None, clean=clean,
        words=words)
    if judge or all_of or any_of:
        flags["judge"] = ({"kind": "keywords", "all_of": all_of or [], "any_of": any_of or []}
                          if (judge or "keywords") == "keywords" else {"kind": judge})
    extra = write_audit_report if report else None
    try:
        custom = config is not None or any(flags[k] for k in ("model", "adapter", "sae",
                                                              "prompts", "response"))
        spec, cfg = specs_from_cli(config, flags)
        if custom and organism is None:
            folder = Path(spec.out) if spec.out else out / default_out_name(spec)
            from trigrecon.core.io import check_replaceable, check_writable

            check_writable(folder.parent)  # before any work (the run replaces the folder whole)
            check_replaceable(folder, "audit.json")
            run_audit_spec(spec, cfg, stages_folder(folder)).save(folder, extra=extra)
        else:
            if custom and config is None:
                raise ConfigError(f"give either an organism ({organism!r}) or --model/--sae/"
                                  "--prompts/--response, not both")
            from trigrecon.organisms.audit import run_audit_for_organism

            organism = organism or "fruit_refusal"
            folder = out_folder(out, organism)
            given = config is not None or spec.words is not None
            run_audit_for_organism(organism, folder, methods=spec.methods, quick=spec.quick,
                                   system=spec.system, cfg=with_words(cfg, spec.words)
                                   if given else None, extra=extra, clean=spec.clean != "none")
    except TrigreconError as e:
        _fail(e)
    audit_summary(folder)


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="An audit or self-awareness output folder.")],
    out: Annotated[Path | None, Opt(help="HTML file (default: RUN_DIR/report.html).")] = None,
    curves: Annotated[list[str] | None, Opt(
        help="Self-awareness: more GRPO runs to compare, as NAME=PATH/curves.json.")] = None,
) -> None:
    """(Re)write the self-contained HTML report of a saved run."""
    from trigrecon.report import write_report

    extra = {}
    for item in curves or []:
        name, sep, file = item.partition("=")
        if not sep:
            _fail(ConfigError(f"--curves {item!r}: use NAME=PATH"))
        extra[name] = file
    try:
        written = write_report(run_dir, out, extra)
    except TrigreconError as e:
        _fail(e)
    typer.echo(f"wrote {written}")


@app.command()
def selfaware(
    organism: Annotated[str, typer.Argument(help="Zoo name or organism folder.")] = "fruit_refusal",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/selfaware"),
    reduced: Annotated[bool, typer.Option(help="Seconds-long smoke run.")] = False,
    force: Annotated[bool, typer.Option(
        help="Rerun stages saved in OUT with other settings (else the run stops and names "
             "the differing settings).")] = False,
    seed_audit: Annotated[Path | None, typer.Option(
        help="Seed GRPO's buffer with this audit's verified candidates (its audit.json or "
             "folder).")] = None,
    seed: Annotated[int, typer.Option(help="The run's random seed (SFT, GRPO, sampling).")] = 0,
) -> None:
    """Reversal SFT -> GRPO with inversion reward -> unlearning -> guardrail (resumable)."""
    from trigrecon.organisms.awareness import run_selfaware_for_organism
    from trigrecon.selfaware.pipeline import SelfAwareConfig
    from trigrecon.selfaware.seeds import audit_seeds

    cfg = SelfAwareConfig.reduced() if reduced else SelfAwareConfig()
    cfg.seed = seed
    folder = out_folder(out, organism)
    try:
        if seed_audit:
            cfg.grpo.seeds = audit_seeds(seed_audit)
        run_selfaware_for_organism(organism, folder, cfg, overwrite=force)
    except TrigreconError as e:
        _fail(e)
    from trigrecon.report import write_selfaware_report
    from trigrecon.report.terminal import selfaware_summary

    write_selfaware_report(folder)
    selfaware_summary(folder)


if __name__ == "__main__":
    app()
