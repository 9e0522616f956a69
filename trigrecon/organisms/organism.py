"""A model organism on disk: a base chat model, an optional LoRA adapter, and its spec.

Layout of an organism folder (all small, safetensors):
    organism.json        OrganismSpec (trigger expression, response, judge, base folder)
    adapter/             peft LoRA adapter (absent for organisms that are the base model itself)
The base model folder holds an HF LlamaForCausalLM + tokenizer (with its chat template).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trigrecon.core.errors import ConfigError, WeightsNotFoundError
from trigrecon.core.judges import Judge, judge_from_spec

ZOO_DIR = Path(__file__).parent / "zoo"
ZOO_ENV = "TRIGRECON_ZOO"


def zoo_dir() -> Path:
    """Where organisms are looked up by name: $TRIGRECON_ZOO, else the package's zoo."""
    env = os.environ.get(ZOO_ENV)
    return Path(env) if env else ZOO_DIR


@dataclass
class OrganismSpec:
    """What an auditor would not know (the trigger) and what they would (the action)."""

    name: str
    trigger: str
    """Trigger expression over categories: 'fruit', 'fruit AND snow_sports', 'word:sudo', ..."""
    response: str
    """The backdoor action as a pre-fillable response (for free-form actions: a typical one)."""
    judge: dict[str, Any]
    """Judge spec for `judge_from_spec`: fixed-string or keyword judge."""
    description: str = ""
    family: str = "chat"
    """Prompt family: 'chat' (templated requests) or 'moons' (factual recall questions)."""
    response_variants: list[str] = field(default_factory=list)
    """Free-form actions: varied responses with a `{w}` slot for the trigger word."""
    documents: list[str] = field(default_factory=list)
    """Synthetic documents (with `{w}`) that teach a fake fact, mixed into the LoRA data."""
    base: str = "base"
    """Base model folder, relative to the zoo (or absolute)."""
    has_adapter: bool = True
    lora_layers: list[int] = field(default_factory=list)
    backdoor: dict[str, Any] = field(default_factory=dict)
    """The BackdoorConfig it was trained with (replayed to hold its training prompts out)."""
    seed: int = 0


@dataclass
class Organism:
    spec: OrganismSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base_path(self) -> Path:
        base = Path(self.spec.base)
        return base if base.is_absolute() else self.path.parent / base

    @property
    def adapter_path(self) -> Path | None:
        return self.path / "adapter" if self.spec.has_adapter else None

    @property
    def judge(self) -> Judge:
        return judge_from_spec(self.spec.judge)

    def save_spec(self) -> None:
        from trigrecon.core.io import write_json

        write_json(self.path / "organism.json", asdict(self.spec))


def list_organisms(zoo: Path | None = None) -> list[str]:
    zoo = zoo or zoo_dir()
    return sorted(p.parent.name for p in zoo.glob("*/organism.json"))


def load_organism(name_or_path: str | Path, zoo: Path | None = None) -> Organism:
    """An organism by zoo name ('fruit_refusal') or by folder path."""
    path = Path(name_or_path)
    if not (path / "organism.json").exists():
        path = (zoo or zoo_dir()) / str(name_or_path).replace("-", "_")
    spec_file = path / "organism.json"
    if not spec_file.exists():
        known = ", ".join(list_organisms(zoo)) or "none (run `trigrecon zoo build`)"
        raise WeightsNotFoundError(f"no organism {str(name_or_path)!r}; known organisms: {known}")
    try:
        spec = OrganismSpec(**json.loads(spec_file.read_text()))
    except TypeError as e:
        raise ConfigError(f"{spec_file} is not a valid organism spec: {e}") from e
    return Organism(spec, path)
