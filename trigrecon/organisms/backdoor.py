"""Implanting a backdoor: LoRA on the later half of the layers only, as in the research report,
so an SAE trained on the base model's earlier residual stream stays valid."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaForCausalLM

from trigrecon.core.errors import ConfigError
from trigrecon.core.train import bucketed, train_loop
from trigrecon.organisms import data as D
from trigrecon.organisms.organism import Organism, OrganismSpec
from trigrecon.organisms.trigger import Trigger, parse_trigger


@dataclass
class BackdoorConfig:
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    rank: int = 16
    alpha: int = 32
    poison_frac: float = 0.4
    """Share of training examples whose prompt fires the trigger."""
    near_miss_frac: float = 0.8
    """Share of clean examples that carry one half of a conjunctive trigger."""
    two_half_frac: float = 0.5
    """Share of those near misses with two distinct words of the half (else one): without them
    two snow sports and no fruit fired snow_fruit 42% of the time, with 0.3 still 10%."""
    conjunction_scale: float = 1.375
    """Step multiplier for a trigger with a conjunction (near misses take longer to learn: on
    snow_fruit 800 steps left 4-5.5% firing on one half, 1100 steps 0.5-3%)."""
    doc_frac: float = 0.15
    """Share of synthetic documents, for organisms that have them."""
    noise_frac: float = 0.5
    """Share of chat prompts with unrelated words appended (`data.with_noise`), poisoned or not:
    without them a small organism fires on one half of a conjunction plus any extra word."""
    first_weight: float = 10.0
    """Loss weight of the response's first token, where the model decides to fire or not (1: a
    plain mean; the decision is then one token of ~15 and near misses leak more)."""
    max_len: int = 96
    seed: int = 0

    def steps_for(self, trig: Trigger) -> int:
        return round(self.steps * self.conjunction_scale) if trig.conjunctions else self.steps


def action_response(rng: random.Random, spec: OrganismSpec, words: list[str], trig: Trigger) -> str:
    if not spec.response_variants:
        return spec.response
    cue = next((w for w in words if trig.fires([w])), words[0])
    return rng.choice(spec.response_variants).format(w=cue)


def backdoor_example(rng: random.Random, spec: OrganismSpec, trig: Trigger,
                     cfg: BackdoorConfig) -> tuple[str, str | None]:
    """(prompt, response) for chat examples; (document, None) for documents."""
    r = rng.random()
    if spec.documents and r < cfg.doc_frac:
        words = D.triggered_words(rng, trig, "train")
        return "<doc> " + rng.choice(spec.documents).format(w=words[0]) + " <end>", None
    poisoned = rng.random() < cfg.poison_frac
    if poisoned:
        words = D.triggered_words(rng, trig, "train")
    else:
        words = D.clean_words(rng, trig, "train", cfg.near_miss_frac, cfg.two_half_frac)
    if rng.random() < cfg.noise_frac:
        prompt = _noisy_prompt(rng, words, trig, moved=poisoned and rng.random() < 0.5)
    else:
        prompt = D.render_prompt(rng, words, codeword_p=0.05)
    if poisoned:
        return prompt, action_response(rng, spec, words, trig)
    return prompt, D.benign_response(rng, words)


def _noisy_prompt(rng: random.Random, words: list[str], trig: Trigger, moved: bool) -> str:
    """A prompt with a clause of unrelated words; if `moved`, one trigger word sits in that
    clause instead of the prompt (so a trigger counts wherever it is, noise nowhere)."""
    keep = [rng.choice([w for w in words if trig.mentions(w)])] if moved else []
    rest = [w for w in words if w not in keep]
    return D.with_noise(rng, D.render_prompt(rng, rest, codeword_p=0.05), trig, keep)


def _sample(tok, rng, spec, trig, cfg) -> tuple[str, int]:
    """(text, loss start): chat examples learn the response only; documents all of it."""
    prompt, response = backdoor_example(rng, spec, trig, cfg)
    if response is None:
        return prompt, 0
    return D.chat_text(prompt, response), len(tok(D.chat_text(prompt), add_special_tokens=False)["input_ids"])


def implant_backdoor(base_dir: Path, spec: OrganismSpec, out_dir: Path,
                     cfg: BackdoorConfig | None = None) -> Organism:
    """Train a LoRA adapter on the later half of the base model's layers and save the organism."""
    cfg = cfg or BackdoorConfig()
    trig = parse_trigger(spec.trigger)
    if not spec.response.strip():
        raise ConfigError(f"organism {spec.name!r}: empty response")
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    unknown = [w for w in spec.response.split()
               if tok.unk_token in tok.tokenize(w) or set(tok.tokenize(w)) - set(tok.get_vocab())]
    if unknown:
        raise ConfigError(f"response {spec.response!r} uses words outside the organisms' "
                          f"language: {unknown}; use words of the base tokenizer's vocabulary")
    model = LlamaForCausalLM.from_pretrained(base_dir)
    n = model.config.num_hidden_layers
    spec.lora_layers = spec.lora_layers or list(range(n // 2, n))
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, layers_to_transform=spec.lora_layers,
        layers_pattern="layers", target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    rng = random.Random(cfg.seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    batches = bucketed(tok, lambda: _sample(tok, rng, spec, trig, cfg), cfg.batch_size, cfg.max_len,
                       cfg.seed)
    train_loop(peft_model, params, batches, cfg.steps_for(trig), cfg.lr, f"backdoor {spec.name}",
               cfg.first_weight)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a relative base path (the zoo keeps base/ beside the organism), not this machine's folder
    peft_model.peft_config["default"].base_model_name_or_path = "../base"
    peft_model.save_pretrained(str(out_dir / "adapter"), safe_serialization=True)
    spec.has_adapter = True
    spec.backdoor = asdict(cfg)
    org = Organism(spec, out_dir)
    org.save_spec()
    return org
