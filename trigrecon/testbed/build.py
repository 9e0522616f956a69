"""`build_testbed`: the testbed's resumable build (model cache -> SAE -> organisms -> report).

Stages and outputs:
    cache       $TRIGRECON_SMOLLM2_CACHE (fp32 checkpoint; ensure_checkpoint's own marker)
    sae_acts    <cache>/../testbed/sae_acts/ (corpus tokens + fp16 activations; not committed)
    sae         saes/smollm2_l8/ (sae-lens folder, bf16 weights, labels.json, health.json,
                categories.json)
    organisms   trigrecon/testbed/organisms/<name>/ (organism.json + LoRA adapter + eval.json)
    report      trigrecon/testbed/report.{md,json}
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trigrecon.core.io import write_json
from trigrecon.testbed import sae_train as S
from trigrecon.testbed.smollm2 import default_cache_dir, ensure_checkpoint
from trigrecon.testbed.stages import StageRecord, done, run_stage

TESTBED_DIR = Path(__file__).parent
REPO_SAES = TESTBED_DIR.parent.parent / "saes"


@dataclass
class BuildConfig:
    sae: S.TestbedSAEConfig = field(default_factory=S.TestbedSAEConfig)
    saes_dir: Path = REPO_SAES
    out: Path = TESTBED_DIR
    organisms: list[str] | None = None
    """Organisms to build (None: all, in TESTBED order)."""
    force: bool = False
    """Rebuild up-to-date stages: every stage, or with `organisms` those organisms' only (a
    forced organism never retrains the SAE)."""
    threads: int = 2
    parts: tuple[str, ...] = ("sae", "organisms")
    """Which halves to build: two processes of one thread each can build them side by side."""
    lora: dict[str, Any] = field(default_factory=dict)
    """Overrides of the organisms' `LoraConfig` fields (a recipe experiment: give it its own
    `out`, or the committed organisms are rebuilt with it)."""

    @property
    def force_sae(self) -> bool:
        return self.force and self.organisms is None

    @property
    def sae_dir(self) -> Path:
        return self.saes_dir / f"smollm2_l{self.sae.layer}"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def build_testbed(cfg: BuildConfig | None = None) -> list[StageRecord]:
    cfg = cfg or BuildConfig()
    from trigrecon.testbed.lora import lora_config

    lora_config(cfg.lora)  # a bad override fails here, not after the SAE stages
    if "organisms" in cfg.parts:
        from trigrecon.testbed.organisms import check_data

        check_data(cfg)  # so does a recipe the prompts cannot fill
    torch.set_num_threads(cfg.threads)
    records = []
    cpu, wall = time.process_time(), time.time()
    ckpt = ensure_checkpoint()
    records.append(StageRecord("cache", "-", time.process_time() - cpu, time.time() - wall,
                               cfg.threads, skipped=time.time() - wall < 10))
    if "sae" in cfg.parts:
        records += build_sae_stages(cfg, ckpt)
    if "organisms" in cfg.parts:
        from trigrecon.testbed.organisms import build_organisms

        records += build_organisms(cfg, ckpt, log)
    _save_times(cfg.out / "build_times.json", records)
    return records


def _save_times(path: Path, records: list[StageRecord]) -> None:
    """Merge this run's stage records into build_times.json. A skipped stage's record is its
    marker's (the build that made it), except the cache's, which has no marker: it keeps its time."""
    old = json.loads(path.read_text()) if path.exists() else {}
    for r in records:
        no_marker = r.skipped and r.config_hash == "-"
        if not (no_marker and r.name in old):
            old[r.name] = {**asdict(r), "skipped": no_marker}
    write_json(path, old)


def build_sae_stages(cfg: BuildConfig, ckpt: Path) -> list[StageRecord]:
    records = []
    acts_dir = default_cache_dir().parent / "testbed" / "sae_acts"
    hm = None

    def model():  # type: ignore[no-untyped-def]
        nonlocal hm
        if hm is None:
            from trigrecon.core.model import load_model

            hm = load_model(ckpt)
        return hm

    def build_acts(tmp: Path) -> None:
        tokens = S.corpus(model().tokenizer, cfg.sae)
        log(f"  corpus {tuple(tokens.shape)}; collecting layer-{cfg.sae.layer} activations")
        torch.save({"tokens": tokens, "acts": S.collect(model(), tokens, cfg.sae)}, tmp / "acts.pt")

    if cfg.force_sae or done(cfg.sae_dir, cfg.sae) is None:  # the activations only feed the SAE
        records.append(run_stage("sae_acts", acts_dir, cfg.sae.corpus_key(), build_acts,
                                 force=cfg.force_sae, log=log))
    else:
        log(f"[sae_acts] not needed: the SAE in {cfg.sae_dir} is up to date")

    def build_sae(tmp: Path) -> None:
        data = torch.load(acts_dir / "acts.pt")
        train, test = S.split(data["acts"], cfg.sae)
        sae = S.train(train, cfg.sae, model().hook_name(cfg.sae.layer))
        log("  SAE trained; top activations over the corpus")
        vals, pos = S.top_contexts(sae, data["acts"], data["tokens"], cfg.sae.skip)
        h = S.health(sae, test, vals[:, 0] > 0, len(train))
        log(f"  health {h}")
        labels = S.label(model().tokenizer, data["tokens"], vals, pos, cfg.sae)
        from trigrecon.core.labels import save_labels
        from trigrecon.testbed.sae_probe import category_latents

        sae.save_model(str(tmp))
        _to_bf16(tmp)
        save_labels(tmp / "labels.json", labels)
        write_json(tmp / "health.json", h)
        cats = category_latents(model(), sae, labels)
        write_json(tmp / "categories.json", cats)

    records.append(run_stage("sae", cfg.sae_dir, cfg.sae, build_sae, force=cfg.force_sae, log=log))
    return records


def _to_bf16(folder: Path) -> None:
    """Store the SAE's weights as bf16 (half the size; sae-lens loads them by cfg dtype)."""
    from safetensors.torch import load_file, save_file

    f = folder / "sae_weights.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(f)).items()}, str(f))
    cfg_file = folder / "cfg.json"
    c = json.loads(cfg_file.read_text())
    c["dtype"] = "bfloat16"
    cfg_file.write_text(json.dumps(c, indent=2))
