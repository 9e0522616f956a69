"""`audit`: run the chosen methods on one model and write a JSON result + a latent ranking.

    result = audit(hm, sae, labels, prompts, response, judge)
    result.save("out/")   # audit.json, latents.md, and one folder of tensors per method

`trigrecon.organisms.audit.run_audit_for_organism` does the same for a zoo organism.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from trigrecon.core.chat import check_known
from trigrecon.core.errors import ConfigError
from trigrecon.core.io import atomic_dir, check_replaceable, to_jsonable, write_json, write_text
from trigrecon.core.judges import Judge, normalise
from trigrecon.core.labels import check_labels
from trigrecon.core.stages import StaleStageError, close_stage, digest, open_stage
from trigrecon.methods.budget import BudgetReport, fit_budget
from trigrecon.methods.common import Saveable, SteeringResult, check_prompts, resolve_layer
from trigrecon.methods.conjunctive import ConjunctiveConfig, ConjunctiveResult, conjunctive
from trigrecon.methods.hypothesis import NO_CLEAN, Hypothesis, HypothesisConfig, audit_hypothesis
from trigrecon.methods.melbo import MelboConfig, melbo
from trigrecon.methods.sae_attribution import (
    AttributionResult,
    SAEAttributionConfig,
    sae_attribution,
)
from trigrecon.methods.sae_melbo import SAEMelboConfig, sae_melbo
from trigrecon.methods.supervised_melbo import SupervisedMelboConfig, supervised_melbo
from trigrecon.methods.verdict import Verdict, make_verdict
from trigrecon.methods.verify import VerifyConfig, VerifyResult, verify
from trigrecon.selfaware.scoring import ScoreTable, score_candidates
from trigrecon.steering.candidates import token_atlas
from trigrecon.steering.readout import LatentHit, add_behaviour
from trigrecon.steering.words import WordHit

Method = Literal["sae_attribution", "melbo", "supervised_melbo", "sae_melbo",
                 "supervised_sae_melbo", "conjunctive", "verify"]
METHODS: tuple[str, ...] = ("sae_attribution", "melbo", "supervised_melbo", "sae_melbo",
                            "supervised_sae_melbo", "conjunctive", "verify")
DEFAULT_METHODS: tuple[str, ...] = ("sae_attribution", "supervised_sae_melbo", "conjunctive",
                                    "verify")
REDUCED_METHODS: tuple[str, ...] = ("sae_attribution", "conjunctive", "verify")
"""The reduced mode's methods (`reduced_config`): no supervised SAE-MELBO."""


@dataclass
class AuditConfig:
    sae_attribution: SAEAttributionConfig = field(default_factory=SAEAttributionConfig)
    melbo: MelboConfig = field(default_factory=MelboConfig)
    supervised_melbo: SupervisedMelboConfig = field(default_factory=SupervisedMelboConfig)
    sae_melbo: SAEMelboConfig = field(
        default_factory=lambda: SAEMelboConfig(objective="unsupervised", n_vectors=8))
    supervised_sae_melbo: SAEMelboConfig = field(default_factory=SAEMelboConfig)
    conjunctive: ConjunctiveConfig = field(default_factory=ConjunctiveConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    top_k: int = 10
    """Latents per method in the summary."""
    behaviour: bool = True
    """Steered generations and action rate of every trained vector on the held-out prompts."""
    max_new_tokens: int = 24
    labelled_only: bool = True
    """With labels: switch off latents that have none (for autolabelled SAEs, the dead ones:
    their decoder rows are arbitrary directions that the optimisers would otherwise use)."""
    scoring: CandidateScoringConfig = field(default_factory=lambda: CandidateScoringConfig())
    """Candidate scoring table (behavioural + interpretability score), after verification."""
    hypothesis: HypothesisConfig = field(default_factory=HypothesisConfig)
    """The final, ablation-checked hypothesis (after the conjunctive search / verification)."""
    seed: int = 0
    """The one seed of an audit: `audit` sets every stage's `seed` field (the vector methods'
    initialisations, verification's control words) from it (`seeded`), so two audits with the
    same seed and inputs give identical results. The effective config is in audit.json."""
    budget_minutes: float | None = 30.0
    """Fit the costly sizes (vector steps and count, the sweep, verified latents) to this many
    minutes on this machine, estimated from the model's shape (`methods.budget`): on a GPU or a
    small model the defaults stay; on a CPU a real model gets fewer steps. None: never scale."""
    words: list[str] = field(default_factory=list)
    """The auditor's own candidate words or phrases (e.g. from a threat model; the CLI's
    `--words FILE`): added to the conjunctive sweep's and verification's candidate pools."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_new_tokens < 1:
            raise ConfigError("top_k and max_new_tokens must be positive")
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ConfigError(f"budget_minutes={self.budget_minutes} must be positive (or None: "
                              "keep every default size)")
        bad = [w for w in self.words if not isinstance(w, str) or not w.strip()]
        if bad:
            raise ConfigError(f"words: {bad[0]!r} is not a word or phrase; give non-empty strings")


@dataclass
class AuditResult:
    model: str
    response: str
    n_prompts: int
    n_eval_prompts: int
    methods: list[str]
    rankings: dict[str, list[LatentHit]]
    """Method -> its latent ranking (attribution: most negative score first; vector methods:
    the best vector's code or decoder cosines; conjunctive: found concepts first)."""
    timings: dict[str, float]
    word_rankings: dict[str, list[WordHit]] = field(default_factory=dict)
    """Method -> nearest vocabulary words of its direction (-gradient, or the best vector): a
    readout that needs no SAE (see steering/words.py)."""
    attribution: AttributionResult | None = None
    steering: dict[str, SteeringResult] = field(default_factory=dict)
    conjunctive: ConjunctiveResult | None = None
    verification: VerifyResult | None = None
    candidate_scores: ScoreTable | None = None
    """Verification candidates (+ any extra ones) scored both ways: see `score_audit_candidates`."""
    system: str | None = None
    """The system prompt every chat carried (`HookedChatModel.system`)."""
    hypothesis: Hypothesis | None = None
    """The minimal, ablation-checked trigger hypothesis (`hypothesis.expression`:
    '(fruit AND snow_sports) OR nuts'); see `trigrecon.methods.hypothesis`."""
    clean_model: str | None = None
    """The clean model compared against (the organism's base); None: no differential, and
    `differential_note` says so."""
    differential_note: str = ""
    prompts: list[str] = field(default_factory=list)
    """The benign prompts the methods optimised on."""
    eval_prompts: list[str] = field(default_factory=list)
    """The held-out prompts (steered generations, conditioning checks, verification)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The full effective AuditConfig (with every stage's derived seed)."""
    budget: BudgetReport | None = None
    """How the sizes were fitted to the machine (estimates and every change)."""

    def save(self, directory: str | Path, extra: Callable[[Path], Any] | None = None) -> Path:
        """Write the run as one folder that replaces `directory` whole (`atomic_dir`): a reader
        never sees a new audit.json beside an old report. `extra(folder)` writes more files into
        the same swap (the CLI's HTML report). An existing `directory` must be a previous audit
        (holds audit.json) or empty."""
        d = Path(directory)
        check_replaceable(d, "audit.json")
        with atomic_dir(d) as tmp:
            write_json(tmp / "audit.json", self.to_json())
            for name, res in self.steering.items():
                res.save(tmp / name)
            if self.attribution is not None:
                self.attribution.save(tmp / "sae_attribution")
            write_text(tmp / "latents.md", latents_markdown(self))
            if extra is not None:
                extra(tmp)
        shutil.rmtree(stages_folder(d), ignore_errors=True)  # the audit is whole now
        return d

    def verdict(self) -> Verdict:
        """The best trigger hypothesis with its evidence (see `trigrecon.methods.verdict`)."""
        return make_verdict(self)

    def to_json(self) -> dict[str, Any]:
        """JSON view; tensors (vectors, codes, scores) stay in the per-method safetensors."""
        data = to_jsonable({k: v for k, v in vars(self).items()
                            if k not in ("steering", "attribution")})
        data["steering"] = {k: _without_tensors(v) for k, v in self.steering.items()}
        data["attribution"] = _without_tensors(self.attribution)
        if self.hypothesis is not None:
            data["hypothesis"] = self.hypothesis.to_json()  # with its expression
        data["verdict"] = to_jsonable(self.verdict())
        return data

    @staticmethod
    def load_json(directory: str | Path) -> dict[str, Any]:
        """The saved audit as plain JSON (the tensors are in the per-method folders)."""
        return json.loads((Path(directory) / "audit.json").read_text())


def _without_tensors(res: Any) -> Any:
    if res is None:
        return None
    return {k: to_jsonable(v) for k, v in vars(res).items() if k not in res.TENSORS}


def latents_markdown(r: AuditResult) -> str:
    lines = [f"# Latent ranking: {r.model}", "", f"Target response: `{r.response}`", ""]
    for name, hits in r.rankings.items():
        lines += [f"## {name}", "", "| rank | latent | score | label |", "|---|---|---|---|"]
        lines += [f"| {i + 1} | {h.latent} | {h.score:.4g} | {h.label} |"
                  for i, h in enumerate(hits)]
        if name in r.word_rankings:
            near = ", ".join(f"{w.word} ({w.score:.2f})" for w in r.word_rankings[name])
            lines += ["", f"Nearest words: {near}"]
        lines.append("")
    if r.conjunctive is not None:
        lines += ["## conjunctive iterations", ""]
        lines += [f"- iteration {s.iteration}: latent {s.chosen.latent} ({s.chosen.label}), "
                  f"words {', '.join(s.words)} (from the {s.source}), loss {s.loss:.3f}, action rate "
                  f"{s.action_rate:.0%}" for s in r.conjunctive.steps]
        lines.append("")
    if r.verification is not None and r.verification.best is not None:
        b = r.verification.best
        v = r.verification
        lines += ["## verification", "", f"Action rate on the held-out prompts: "
                  f"{v.baseline_rate:.0%} as they are, {v.control_rate:.0%} with random words "
                  f"inserted (control); best candidate {' + '.join(b.words)} (latents "
                  f"{b.latents}): {b.action_rate:.0%}", ""]
        lines += [f"- {' + '.join(c.words)}: {c.action_rate:.0%}" for c in v.candidates[:5]]
        lines.append("")
    if r.candidate_scores is not None and r.candidate_scores.rows:
        lines += ["## candidate scoring", "", r.candidate_scores.to_markdown()]
    if r.hypothesis is not None:
        lines += [r.hypothesis.markdown()]
    return "\n".join(lines)


def _merged(rankings: dict[str, list[LatentHit]], first: Sequence[LatentHit]) -> list[LatentHit]:
    """Concept latents first, then the methods' rankings interleaved, deduplicated."""
    out = list(first)
    lists = list(rankings.values())
    for i in range(max((len(x) for x in lists), default=0)):
        out += [lst[i] for lst in lists if i < len(lst)]
    unique: dict[int, LatentHit] = {}
    for h in out:
        unique.setdefault(h.latent, h)
    return list(unique.values())


def labelled_only(sae: Any, labels: Any) -> Any:
    """A copy of `sae` whose unlabelled latents never fire and have zero decoder rows (the SAE
    itself if every latent, or none, has a label). Labels made for another SAE raise
    IncompatibleSAEError (`check_labels`): they would switch the wrong latents off."""
    described = getattr(labels, "descriptions", None)
    if not isinstance(described, dict):  # a duck-typed labeller: nothing to go on
        return sae
    check_labels(labels, sae)
    keep = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    keep[[i for i in described if 0 <= i < sae.cfg.d_sae]] = True
    if keep.all() or not keep.any():
        return sae
    sae = copy.deepcopy(sae)
    with torch.no_grad():
        off = (~keep).to(sae.W_dec.device)
        sae.W_dec[off] = 0
        sae.W_enc[:, off] = 0
        sae.b_enc[off] = -1.0 if sae.cfg.architecture() != "topk" else 0.0
    return sae


def audit(hm: Any, sae: Any, labels: Any, prompts: Sequence[str], response: str, judge: Judge,
          methods: Sequence[str] = DEFAULT_METHODS, cfg: AuditConfig | None = None,
          eval_prompts: Sequence[str] | None = None, clean: Any = None,
          checkpoint: str | Path | None = None) -> AuditResult:
    """Run `methods` on benign `prompts` with the known action `response`.

    `eval_prompts` (held-out benign prompts; default: `prompts`) are used for steered generations,
    conditioning checks and verification. `clean`: the model before poisoning (e.g. the
    adapter's base model); the conjunctive search, verification, candidate scoring and the
    hypothesis then rank by the organism-minus-clean differential (generation and forward
    passes only). Without it the result says the differential could not be measured.
    `checkpoint`: a folder where each method's result is saved as it finishes; a rerun with the
    same inputs and effective config reuses them (different ones raise StaleStageError).
    """
    cfg = cfg or AuditConfig()
    prompts = check_prompts(prompts)
    evals = check_prompts(eval_prompts) if eval_prompts is not None else prompts
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {unknown or methods}; choose from {METHODS}")
    cfg = seeded(cfg)
    if getattr(hm, "tokenizer", None) is not None:
        check_known(hm.tokenizer, response, "target response")
    budget = None
    if cfg.budget_minutes is not None and getattr(hm, "tokenizer", None) is not None:
        cfg, budget = fit_budget(cfg, hm, list(methods), prompts, response, len(evals),
                                 resolve_layer(hm, None, sae), clean is not None)
        tqdm.write(f"budget: {budget.summary()}")
    res = AuditResult(getattr(hm, "name", "model"), response, len(prompts), len(evals),
                      list(methods), {}, {}, system=getattr(hm, "system", None),
                      prompts=list(prompts), eval_prompts=list(evals), config=config_dict(cfg),
                      budget=budget)
    if labels is not None:
        check_labels(labels, sae)  # labels made for another SAE would switch the wrong latents off
    res.clean_model = None if clean is None else getattr(clean, "name", "clean model")
    res.differential_note = "" if clean is not None else NO_CLEAN
    if cfg.labelled_only and labels is not None:
        sae = labelled_only(sae, labels)
    runners = {
        "melbo": lambda: melbo(hm, prompts, cfg.melbo, sae=sae, labels=labels),
        "supervised_melbo": lambda: supervised_melbo(hm, prompts, response, cfg.supervised_melbo,
                                                     sae=sae, labels=labels),
        "sae_melbo": lambda: sae_melbo(hm, sae, prompts, None, cfg.sae_melbo, labels=labels),
        "supervised_sae_melbo": lambda: sae_melbo(hm, sae, prompts, response,
                                                  cfg.supervised_sae_melbo, labels=labels),
    }
    stages = _Stages(checkpoint, _record(hm, sae, clean, cfg, methods, prompts, evals, response))
    for m in methods:
        if m == "sae_attribution":
            res.attribution, res.timings[m] = stages.run(m, AttributionResult, lambda: (
                sae_attribution(hm, sae, prompts, response, cfg.sae_attribution, labels)))
            res.rankings[m] = res.attribution.ranking(cfg.top_k)
        elif m in runners:
            def steer(m: str = m) -> SteeringResult:
                sr = runners[m]()
                if cfg.behaviour:
                    for r in sr.readouts:
                        add_behaviour(r, hm, evals, sr.layer, sr.vectors[r.index], judge,
                                      cfg.max_new_tokens)
                    sr.reorder_by_action()
                return sr

            res.steering[m], res.timings[m] = stages.run(m, SteeringResult, steer)
            res.rankings[m] = res.steering[m].ranking(cfg.top_k)
        elif m == "conjunctive":
            res.conjunctive, res.timings[m] = stages.run(m, ConjunctiveResult, lambda: conjunctive(
                hm, sae, prompts, response, evals, judge, cfg.conjunctive, labels=labels,
                clean=clean, words=cfg.words))
            res.rankings[m] = res.conjunctive.ranking(cfg.top_k)
    t = time.perf_counter()
    res.word_rankings = _word_rankings(hm, res, evals[: cfg.verify.n_contexts], cfg.top_k)
    res.timings["word_readout"] = time.perf_counter() - t
    if "verify" in methods:
        first = res.conjunctive.concepts if res.conjunctive is not None else []
        others = {k: v for k, v in res.rankings.items() if k != "conjunctive"}
        extra = [[w.word for w in hits] for hits in res.word_rankings.values()]
        concept_words = ({s.chosen.latent: s.words for s in res.conjunctive.steps}
                         if res.conjunctive is not None else {})
        res.verification, res.timings["verify"] = stages.run("verify", VerifyResult, lambda: verify(
            hm, sae, _merged(others, first), evals, judge, cfg.verify, extra_words=extra,
            exclude=normalise(response).split(), latent_words=concept_words, clean=clean,
            words=cfg.words))
        if cfg.scoring.enabled and res.verification.candidates:
            t = time.perf_counter()
            res.candidate_scores = score_audit_candidates(hm, sae, res, evals, judge, cfg.scoring,
                                                          clean=clean)
            res.timings["candidate_scoring"] = time.perf_counter() - t
    if res.conjunctive is not None or res.verification is not None:
        t = time.perf_counter()
        res.hypothesis = audit_hypothesis(hm, clean, sae, labels, res.conjunctive,
                                          res.verification, evals, judge, cfg.hypothesis)
        res.timings["hypothesis"] = time.perf_counter() - t
    return res


def _word_rankings(hm: Any, res: AuditResult, contexts: list[str], k: int
                   ) -> dict[str, list[WordHit]]:
    """Nearest words of each method's direction, from the token atlas of its layer (built once
    per layer and contexts, `steering.candidates.token_atlas`)."""
    directions: dict[str, tuple[int, Any]] = {}
    if res.attribution is not None:
        directions["sae_attribution"] = (res.attribution.layer, -res.attribution.grad)
    for name, sr in res.steering.items():
        directions[name] = (sr.layer, sr.vectors[sr.best])
    return {name: token_atlas(hm, layer, contexts).nearest(vec, k)
            for name, (layer, vec) in directions.items()}


def quick_config() -> AuditConfig:
    """Fewer steps and vectors: a smoke run in about a minute on a tiny model."""
    cfg = AuditConfig()
    for c in (cfg.melbo, cfg.supervised_melbo, cfg.sae_melbo, cfg.supervised_sae_melbo):
        c.steps, c.n_vectors = 60, 2
    cfg.conjunctive.max_iters = 2
    cfg.verify.n_latents = 4
    return cfg


def reduced_config() -> AuditConfig:
    """The reduced audit for a CPU (with `REDUCED_METHODS`): one conjunctive clause (no
    disjunction search) and no candidate scoring; sizes are still fitted to `budget_minutes`.
    On SmolLM2-135M with 2 CPU threads it is what fits the 30-minute target (the full default
    audit does not: see README, "Blind recovery")."""
    return base_config(reduced=True)


def base_config(quick: bool = False, reduced: bool = False) -> AuditConfig:
    """The defaults, `quick_config` or `reduced_config` (both: quick's steps, reduced's cuts)."""
    cfg = quick_config() if quick else AuditConfig()
    if reduced:
        cfg.conjunctive.max_clauses = 1
        cfg.scoring.enabled = False
    return cfg


def config_dict(cfg: AuditConfig) -> dict[str, Any]:
    return asdict(cfg)


def seeded(cfg: AuditConfig) -> AuditConfig:
    """A copy of `cfg` whose every stage config with a `seed` field carries `cfg.seed` (each
    stage uses its own generator, so one value serves them all and the defaults are unchanged)."""
    cfg = copy.deepcopy(cfg)
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub) and hasattr(sub, "seed"):
            sub.seed = cfg.seed  # type: ignore[union-attr]
    return cfg


# --- Candidate scoring in the audit output (issue 4, item 6) -------------------------------------
# One table for the audit's verification candidates (and any extra ones, e.g. the RL path's
# recovered triggers): behavioural score = the inversion reward of `trigrecon.selfaware.reward`
# (ASR on the held-out benign prompts with the candidate inserted as verification inserts it,
# word count, length-penalised reward); interpretability score = how strongly the candidate
# activates the SAE latents verification turned into candidates, minus the plain prompts
# (`sae_latent_score`), plus one column per layer of the steering methods' best vectors
# (`direction_score`).


@dataclass
class CandidateScoringConfig:
    enabled: bool = True
    top_k: int = 10
    """Verification candidates scored (best first by their verification action rate)."""
    n_prompts: int = 32
    """Held-out benign prompts the candidates are inserted into (reward and interp scores)."""
    directions: bool = True
    """Also score against the steering methods' best vectors (one column per layer)."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.n_prompts < 1:
            raise ConfigError("scoring top_k and n_prompts must be positive")


def score_audit_candidates(hm: Any, sae: Any, res: AuditResult, prompts: Sequence[str],
                           judge: Judge, cfg: CandidateScoringConfig | None = None,
                           extra: dict[str, str] | None = None, clean: Any = None
                           ) -> ScoreTable:
    """Score `res`'s verification candidates (source 'verify') and `extra` (candidate -> source,
    e.g. `{t: 'rl-recovered' for t in selfaware_recovered}`) on held-out benign `prompts`;
    with a `clean` model the reward is the differential one (`selfaware.reward`)."""
    from trigrecon.core.generate import generate
    from trigrecon.selfaware.reward import InversionReward, RewardConfig
    from trigrecon.selfaware.scoring import InterpScore, direction_score, sae_latent_score
    from trigrecon.steering.words import default_insert

    cfg = cfg or CandidateScoringConfig()
    benign = check_prompts(prompts)[: cfg.n_prompts]
    found = res.verification.candidates[: cfg.top_k] if res.verification is not None else []
    candidates = {" ".join(c.words): "verify" for c in found} | dict(extra or {})
    if not candidates:
        raise ConfigError("no candidates to score: run verification or pass extra candidates")

    def insert(prompt: str, candidate: str) -> str:
        return default_insert(prompt, candidate.split())

    rcfg = RewardConfig()
    reward = InversionReward(
        lambda ps: generate(hm, list(ps), max_new_tokens=rcfg.max_new_tokens),
        judge, benign, insert, rcfg,
        clean_responder=None if clean is None else
        (lambda ps: generate(clean, list(ps), max_new_tokens=rcfg.max_new_tokens)))
    latents = sorted({lat for c in found for lat in c.latents if lat >= 0})
    interp: InterpScore | None = None
    if latents and sae is not None:
        interp = sae_latent_score(hm, sae, latents, benign, insert)
    columns: dict[str, InterpScore] = {}
    if cfg.directions:
        by_layer: dict[int, list[Any]] = {}
        for sr in res.steering.values():
            by_layer.setdefault(sr.layer, []).append(sr.vectors[sr.best])
        if res.attribution is not None:
            by_layer.setdefault(res.attribution.layer, []).append(-res.attribution.grad)
        for layer, vecs in sorted(by_layer.items()):
            stacked = torch.stack([v.detach().float().reshape(-1) for v in vecs])
            columns[f"directions L{layer}"] = direction_score(hm, layer, stacked, benign, insert)
    name = f"SAE latents {latents}" if interp is not None else ""
    return score_candidates(candidates, reward, interp, name, columns)


def stages_folder(out: str | Path) -> Path:
    """Where an audit that will be saved to `out` keeps its finished stages (beside `out`, so
    `out` is only ever written whole); `AuditResult.save(out)` removes it."""
    out = Path(out)
    return out.parent / f".{out.name}.stages"


def _record(hm: Any, sae: Any, clean: Any, cfg: AuditConfig, methods: Sequence[str],
            prompts: Sequence[str], evals: Sequence[str], response: str) -> dict[str, Any]:
    """What an audit's stages depend on: models, SAE, inputs and the effective config."""
    w = getattr(sae, "W_dec", None)
    return {"model": getattr(hm, "name", "model"), "clean": getattr(clean, "name", None),
            "sae": None if w is None else [list(w.shape), _fingerprint(w)],
            "methods": list(methods), "response": response, "prompts": digest(list(prompts)),
            "eval_prompts": digest(list(evals)), "config": config_dict(cfg)}


def _fingerprint(w: torch.Tensor) -> float:
    """A cheap identity of a weight matrix: the sum of ~4k strided entries (no full-size copy,
    which for a 131k-latent SAE would be gigabytes)."""
    flat = w.detach().reshape(-1)
    return float(flat[:: max(1, flat.numel() // 4096)].double().abs().sum())


@dataclass
class _Stages:
    """Each method's result saved under `root/<method>` as it finishes (None: not saved)."""

    root: str | Path | None
    record: dict[str, Any]

    def run(self, name: str, kind: type[Saveable], fn: Callable[[], Any]) -> tuple[Any, float]:
        """(result, seconds): `fn()`, or the saved result of an earlier run of this audit."""
        folder = None if self.root is None else Path(self.root) / name
        try:
            done = folder is not None and open_stage(folder, name, self.record, overwrite=False)
        except StaleStageError as e:
            raise StaleStageError(f"{e.args[0].split(' Rerun with')[0]} An audit's finished "
                                  f"stages are kept in {self.root}: delete that folder to "
                                  "start over, or write to another output folder.") from None
        if done and folder is not None:
            seconds = json.loads((folder / "seconds.json").read_text())
            tqdm.write(f"{name}: reusing the finished stage in {folder}")
            return kind.load(folder), float(seconds)
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        if folder is not None:
            out.save(folder)
            write_json(folder / "seconds.json", seconds)
            close_stage(folder, self.record)
        return out, seconds
