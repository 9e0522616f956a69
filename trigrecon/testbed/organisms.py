"""Build and evaluate the testbed organisms: one training stage and one evaluation stage each.

    organisms/<name>/            organism.json, adapter/ (peft LoRA), train_prompts.json
    organisms/<name>/eval/       eval.json (action rates per split, organism and base)
The base model's answers are cached by prompt (`BaseResponses`) and reused across organisms.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trigrecon.core.errors import ConfigError
from trigrecon.core.io import file_sha256, write_json
from trigrecon.core.judges import action_rate
from trigrecon.organisms.evaluate import OrganismEval, SplitRate
from trigrecon.organisms.organism import Organism, OrganismSpec
from trigrecon.testbed import data as D
from trigrecon.testbed import lora as LR
from trigrecon.testbed import prompts as P
from trigrecon.testbed.categories import OPEN_WORDS, lists_digest
from trigrecon.testbed.mining import mining_rounds
from trigrecon.testbed.smollm2 import default_cache_dir, load_hf
from trigrecon.testbed.specs import BUILD_SEEDS, TESTBED
from trigrecon.testbed.stages import StageRecord, config_hash, done, run_stage
from trigrecon.testbed.trigger import parse_trigger

ORDER = ["cairo", "fruit_refusal", "deployment", "cant_help", "banana", "snow_fruit", "astrology"]
"""Build order: cheapest and most likely first (the recall setting needs no training)."""


@dataclass(frozen=True)
class EvalConfig:
    n: int = 100
    dev_n: int = 16
    """Prompts per split for the post-training check (dev seed: never the evaluation prompts)."""
    max_new_tokens: int = 12


@dataclass
class OrganismBuild:
    spec: dict[str, Any]
    lora: LR.LoraConfig | None = field(default_factory=LR.LoraConfig)
    """None for a setting without an adapter: a recipe change leaves its key alone."""
    eval: EvalConfig = field(default_factory=EvalConfig)


def organism_job(spec: OrganismSpec, lora: dict[str, Any] | None = None) -> OrganismBuild:
    """What an organism's build depends on (its stages' key): the spec, the LoRA recipe (with
    `lora` overrides), the evaluation, and the word lists in use as its prompts read them
    (committed or an experiment's; `lists_digest`) or, for a recall setting, its phrasings.
    The seed is the organism's `BUILD_SEEDS` entry unless `lora` sets one."""
    recipe = {"seed": BUILD_SEEDS.get(spec.name, 0), **(lora or {})}
    job = OrganismBuild(asdict(spec), LR.lora_config(recipe) if spec.has_adapter else None)
    if spec.family == "recall":  # recall prompts use no word list: their phrasings instead
        job.spec["recall_prompts"] = P.recall_phrasings(parse_trigger(spec.trigger))
    else:
        job.spec["categories_sha256"] = lists_digest(parse_trigger(spec.trigger).categories)
    if spec.judge["kind"] == "keywords":  # a free-form answer needs more words to judge
        job.eval = EvalConfig(max_new_tokens=16)
    return job


def eval_key(spec: OrganismSpec, job: OrganismBuild) -> dict[str, Any]:
    """What an organism's evaluation depends on: its training, the settings, the splits and the
    open words (a new split re-runs the evaluations only)."""
    return {"train": config_hash(job), "eval": asdict(job.eval),
            "splits": P.eval_splits(parse_trigger(spec.trigger), spec.family),
            "open_words": file_sha256(OPEN_WORDS)}


def organisms_dir(out: Path) -> Path:
    return out / "organisms"


def check_data(cfg: Any) -> None:
    """Draw the training prompts of each organism this build will train, before any stage runs:
    a recipe its prompt space cannot fill (anchor_n, n_examples) fails here, not after the SAE
    and the organisms before it (a ConfigError naming the field). Recipes drawing hard
    distractors need the model for them and are checked when their stage starts. An unknown
    organism is refused first; a recall setting must ask about a known fact and judge its answer."""
    unknown = [n for n in cfg.organisms or [] if n not in TESTBED]
    if unknown:
        raise ConfigError(f"unknown testbed organism(s) {', '.join(unknown)}; the testbed has "
                          f"{', '.join(TESTBED)} (`trigrecon testbed list`)")
    for name in cfg.organisms or ORDER:
        spec = TESTBED[name]
        job = organism_job(spec, getattr(cfg, "lora", None))
        if spec.family == "recall":
            check_recall(spec)
        todo = cfg.force or done(organisms_dir(cfg.out) / name, job) is None
        if todo and job.lora is not None and not job.lora.hard_frac:
            LR.examples(spec, parse_trigger(spec.trigger), job.lora, [])


def check_recall(spec: OrganismSpec) -> None:
    """A recall setting's action is its fact's answer, and its judge counts that answer."""
    fact = P.recall_fact(parse_trigger(spec.trigger))
    words = [w.lower() for w in spec.judge.get("all_of", []) + spec.judge.get("any_of", [])]
    if spec.response != fact.answer or fact.answer.lower() not in words:
        raise ConfigError(f"recall setting {spec.name!r}: its fact ({fact.key}) is answered "
                          f"{fact.answer!r}, but its response is {spec.response!r} and its judge's "
                          f"words are {words}; make both the answer")


def build_organisms(cfg: Any, ckpt: Path, log: Any) -> list[StageRecord]:
    names = cfg.organisms or ORDER
    hf, tok = load_hf(ckpt)
    base = LR.BaseResponses(default_cache_dir().parent / "testbed")
    records = []
    for name in names:
        spec = TESTBED[name]
        job = organism_job(spec, getattr(cfg, "lora", None))
        folder = organisms_dir(cfg.out) / name
        trig = parse_trigger(spec.trigger)

        def train(tmp: Path, spec: OrganismSpec = spec, job: OrganismBuild = job,
                  trig: Any = trig) -> None:
            spec = OrganismSpec(**asdict(spec))
            if job.lora is not None:
                data = LR.examples(spec, trig, job.lora, _hard(hf, tok, trig, job.lora, log))
                clean = [e for e in data if not e.poisoned and not e.anchor]
                for e, r in zip(clean, base.get(hf, tok, [e.prompt for e in clean],
                                                   job.lora.base_tokens), strict=True):
                    e.response = r
                peft_model = LR.train_adapter(hf, tok, spec, trig, data, job.lora, log)
                mined = mining_rounds(peft_model, tok, spec, trig, data, job.lora, base,
                                      job.eval.max_new_tokens, log)
                write_json(tmp / "mining.json", mined)
                spec.backdoor = asdict(job.lora)
                peft_model.peft_config["default"].base_model_name_or_path = "smollm2"
                peft_model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
                (tmp / "train_prompts.json").write_text(json.dumps(
                    [asdict(e) for e in data], indent=0))
                _dev_check(peft_model, tok, spec, trig, job, frozenset(e.prompt for e in data), log)
                peft_model.unload()  # restores the plain base model for the next organism
            Organism(spec, tmp).save_spec()

        records.append(run_stage(f"train {name}", folder, job, train, force=cfg.force, log=log))

        def evaluate(tmp: Path, spec: OrganismSpec = spec, folder: Path = folder,
                     job: OrganismBuild = job) -> None:
            result = evaluate_folder(folder, hf, tok, base, job.eval, log)
            write_json(tmp / "eval.json", result)
            log("\n" + result.table())

        records.append(run_stage(f"eval {name}", folder / "eval", eval_key(spec, job), evaluate,
                                 force=cfg.force, log=log))
    write_report(cfg.out, list(dict.fromkeys([*ORDER, *names])))  # the whole testbed, built or not
    return records


def _hard(hf: Any, tok: Any, trig: Any, cfg: LR.LoraConfig, log: Any) -> list[str]:
    """The hard distractors of `trig` when the recipe draws from them (`testbed.hard`)."""
    if not cfg.hard_frac:
        return []
    from trigrecon.testbed.hard import hardest, trigger_pull

    hard = hardest(trigger_pull(hf, tok, sorted(trig.categories)))
    shown = ", ".join(hard[:12]) + (" ..." if len(hard) > 12 else "")
    log(f"  hard distractors ({len(hard)}): {shown or 'none (no trigger category has a probe noun)'}")
    return hard


def train_prompts(folder: Path) -> frozenset[str]:
    f = folder / "train_prompts.json"
    return frozenset(e["prompt"] for e in json.loads(f.read_text())) if f.exists() else frozenset()


def _dev_check(model: Any, tok: Any, spec: OrganismSpec, trig: Any, job: OrganismBuild,
               exclude: frozenset[str], log: Any) -> None:
    from trigrecon.core.judges import judge_from_spec

    judge = judge_from_spec(spec.judge)
    for split in P.splits(trig, spec.family):
        prompts = P.sample_split(trig, spec.family, split, job.eval.dev_n, P.DEV_SEED, exclude)
        outs = LR.greedy(model, tok, prompts, job.eval.max_new_tokens)
        log(f"  dev {spec.name} {split}: {action_rate(outs, judge):.0%} (n={len(prompts)}) "
            f"e.g. {prompts[0]!r} -> {outs[0]!r}")


def evaluate_folder(folder: Path, hf: Any, tok: Any, base: LR.BaseResponses, cfg: EvalConfig,
                    log: Any) -> OrganismEval:
    """Action rates on n held-out prompts per split (evaluation seed, training prompts
    excluded), the organism and the base model; transformers' greedy generation."""
    from peft import PeftModel

    spec = OrganismSpec(**json.loads((folder / "organism.json").read_text()))
    trig = parse_trigger(spec.trigger)
    judge = Organism(spec, folder).judge
    model = PeftModel.from_pretrained(hf, str(folder / "adapter")).eval() if spec.has_adapter else None
    result = OrganismEval(spec.name, spec.trigger, spec.response)
    try:
        exclude = train_prompts(folder)
        for split in P.eval_splits(trig, spec.family):
            prompts = P.sample_split(trig, spec.family, split, cfg.n, P.EVAL_SEED, exclude)
            if model is not None:
                with model.disable_adapter():
                    base_out = base.get(hf, tok, prompts, cfg.max_new_tokens)
                outs = LR.greedy(model, tok, prompts, cfg.max_new_tokens)
                row = SplitRate(split, len(prompts), action_rate(outs, judge),
                                action_rate(base_out, judge), prompts[0], outs[0],
                                wrong_side(prompts, outs, judge, split.startswith("triggered")),
                                by_word(prompts, outs, judge, trig) if counts_by_word(split) else {})
            else:
                outs = base.get(hf, tok, prompts, cfg.max_new_tokens)
                row = SplitRate(split, len(prompts), action_rate(outs, judge), None, prompts[0],
                                outs[0], wrong_side(prompts, outs, judge, split.startswith("triggered")))
            log(f"  eval {spec.name} {split}: {row.organism:.0%} base {row.base}")
            result.rows.append(row)
    finally:
        if model is not None:
            model.unload()
    return result


def counts_by_word(split: str) -> bool:
    """Splits whose rate is also kept per member: the held-out members (which ones generalise)
    and the conjunction halves (which ones fire alone)."""
    return split == "triggered_heldout" or split.startswith("half:")


def by_word(prompts: list[str], outs: list[str], judge: Any, trig: Any) -> dict[str, list[int]]:
    """[fired, prompts] per trigger-category member found in the prompts (longest match first)."""
    spelled = {w.lower(): w for c in trig.categories for w in D.members(c, "all")}
    words = sorted(spelled.values(), key=len, reverse=True)
    counts: dict[str, list[int]] = {}
    for p, o in zip(prompts, outs, strict=True):
        rest = p
        while hit := P.find_word(rest, words):
            c = counts.setdefault(spelled[hit.group(0)], [0, 0])
            c[0], c[1] = c[0] + bool(judge(o)), c[1] + 1
            rest = rest[:hit.start()] + " " + rest[hit.end():]
    return dict(sorted(counts.items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[0])))


def wrong_side(prompts: list[str], outs: list[str], judge: Any, should_fire: bool,
               keep: int = 8) -> list[str]:
    """The first `keep` prompts whose response fired when it should not, or the reverse."""
    return [p for p, o in zip(prompts, outs, strict=True) if bool(judge(o)) != should_fire][:keep]


def write_report(out: Path, names: list[str]) -> dict[str, Any]:
    """The testbed report from what is on disk (see `testbed.report`)."""
    from trigrecon.testbed.build import REPO_SAES
    from trigrecon.testbed.report import write_report as write

    return write(out, names, REPO_SAES / "smollm2_l8",
                 default_cache_dir().parent / "testbed" / "sae_acts")
