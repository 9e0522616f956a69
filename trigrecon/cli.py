"""Command line: `trigrecon zoo build|list`, `trigrecon evaluate`, `trigrecon audit`, ..."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from trigrecon.core.errors import TrigreconError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reverse-engineer the hidden trigger of a backdoored language model.")
zoo_app = typer.Typer(no_args_is_help=True, help="The project's backdoored model organisms.")
app.add_typer(zoo_app, name="zoo")


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


@app.command()
def audit(
    organism: Annotated[str, typer.Argument(help="Zoo name or organism folder.")] = "fruit_refusal",
    out: Annotated[Path, typer.Option(help="Output folder (audit.json, latents.md).")] = Path("runs/audit"),
    method: Annotated[list[str] | None, typer.Option(help="Methods to run (repeatable).")] = None,
    quick: Annotated[bool, typer.Option(help="Fewer steps: a smoke run.")] = False,
    system: Annotated[str | None, typer.Option(
        help="System prompt of the deployment under audit, in every chat.")] = None,
) -> None:
    """Recover an organism's trigger knowing only its action; writes JSON + a latent ranking."""
    from trigrecon.methods.audit import DEFAULT_METHODS, run_audit_for_organism

    folder = out_folder(out, organism)
    try:
        run_audit_for_organism(organism, folder, methods=method or DEFAULT_METHODS, quick=quick,
                               system=system)
    except TrigreconError as e:
        _fail(e)
    typer.echo((folder / "latents.md").read_text())
    typer.echo(f"wrote {folder / 'audit.json'} and {folder / 'latents.md'}")


@app.command()
def selfaware(
    organism: Annotated[str, typer.Argument(help="Zoo name or organism folder.")] = "fruit_refusal",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/selfaware"),
    reduced: Annotated[bool, typer.Option(help="Seconds-long smoke run.")] = False,
) -> None:
    """Reversal SFT -> GRPO with inversion reward -> unlearning -> guardrail (resumable)."""
    from trigrecon.organisms.organism import load_organism
    from trigrecon.selfaware.pipeline import SelfAwareConfig, run_selfaware

    cfg = SelfAwareConfig.reduced() if reduced else SelfAwareConfig()
    folder = out_folder(out, organism)
    try:
        run_selfaware(load_organism(organism), folder, cfg)
    except TrigreconError as e:
        _fail(e)
    typer.echo(f"wrote {folder}")


if __name__ == "__main__":
    app()
