"""The zoo as a client of the audit: find the organisms' SAE and audit an organism knowing only
its action (what `trigrecon audit <organism>` and `make demo` run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trigrecon.methods.audit import (
    DEFAULT_METHODS,
    AuditConfig,
    AuditResult,
    audit,
    quick_config,
    stages_folder,
)


def find_organism_sae(hm: Any) -> Path:
    """The project's SAE for the organisms' base model: a `saes/` folder compatible with `hm`."""
    from trigrecon.core.errors import IncompatibleSAEError, WeightsNotFoundError
    from trigrecon.core.sae import check_compatible, load_sae, saes_dir

    found = []
    for folder in sorted(saes_dir().glob("*/cfg.json")):
        try:  # a corrupt SAE (CorruptWeightsError) is an error to report, never skipped
            check_compatible(load_sae(folder.parent), hm)
        except IncompatibleSAEError:  # an SAE of another model
            continue
        found.append(folder.parent)
    if not found:
        raise WeightsNotFoundError(f"no SAE in {saes_dir()} fits {hm.name}: build the zoo first")
    return found[0]


def run_audit_for_organism(name: str, out_dir: str | Path, methods: Sequence[str] = DEFAULT_METHODS,
                           quick: bool = False, n_prompts: int = 32, n_eval: int = 32,
                           cfg: AuditConfig | None = None, system: str | None = None,
                           extra: Callable[[Path], Any] | None = None, clean: bool = True
                           ) -> AuditResult:
    """Audit a zoo organism knowing only its action: benign held-out prompts, the pre-filled
    response and the judge (every chat with the `system` prompt, if given); writes audit.json +
    latents.md to `out_dir`. `clean`: compare against the organism's base model (the clean-model
    differential); an organism without an adapter is its own base, so it has no clean model."""
    from trigrecon.core.io import check_replaceable, check_writable
    from trigrecon.core.labels import load_labels
    from trigrecon.core.model import load_model
    from trigrecon.core.sae import load_sae
    from trigrecon.organisms.organism import load_organism
    from trigrecon.organisms.prompts import eval_prompts

    out = Path(out_dir)
    check_writable(out.parent)  # before any work: atomic_dir writes a sibling, then swaps
    check_replaceable(out, "audit.json")
    org = load_organism(name)
    hm = load_model(org.base_path, org.adapter_path, system=system)
    sae_dir = find_organism_sae(hm)
    if quick:
        n_prompts, n_eval = min(n_prompts, 32), min(n_eval, 16)
    benign = eval_prompts(org.spec, "benign", n_prompts + n_eval)
    sae = load_sae(sae_dir, model=hm, prompts=benign[:16])  # width, hook and health (FVE)
    has_labels = (sae_dir / "labels.json").exists()
    labels = load_labels(sae_dir / "labels.json", sae) if has_labels else None
    cfg = cfg or (quick_config() if quick else AuditConfig())
    base = None
    if clean and org.adapter_path is not None:
        base = load_model(org.base_path, system=system)
    result = audit(hm, sae, labels, benign[:n_prompts], org.spec.response, org.judge, methods,
                   cfg, eval_prompts=benign[n_prompts:], clean=base, checkpoint=stages_folder(out_dir))
    result.save(out_dir, extra=extra)  # extra(folder): more files in the same swap
    return result
