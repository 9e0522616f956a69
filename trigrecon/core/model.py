"""Loading a chat model (plus an optional LoRA adapter) as a TransformerLens HookedTransformer.

One path serves the project's organisms (local folders) and hub models such as
`meta-llama/Llama-3.1-8B-Instruct` + `trigger-reconstruction/fruit_refusal`: resolve each name to a
local folder (the folder itself, the HF cache, then a hub download), load with transformers, merge
the peft adapter, convert the weights into a HookedTransformer and free the HF copy.
"""

from __future__ import annotations

import copy
import gc
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from trigrecon.core.chat import ChatBatch, make_batch
from trigrecon.core.errors import ConfigError, CorruptWeightsError, WeightsNotFoundError
from trigrecon.core.io import check_safetensors

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
MAX_CTX = 4096
"""Default cap on n_ctx: TransformerLens stores an n_ctx x n_ctx causal mask in every layer."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.txt", "*.model"]
_ADAPTER_FILES = ["*.json", "*.safetensors", "*.bin"]
HUB_TIMEOUT = float(os.environ.get("TRIGRECON_HUB_TIMEOUT", "10"))
"""Seconds any one hub request may take (connect, or one read) before the hub counts as
unreachable."""
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class HookedChatModel:
    """A HookedTransformer with the chat tokenizer it was trained with."""

    model: HookedTransformer
    tokenizer: PreTrainedTokenizerBase
    name: str
    adapter: str | None = None
    system: str | None = None
    """System prompt of the deployment under audit: every chat built here carries it (None: the
    template's own default, e.g. Llama-3.1's dated system block)."""

    def __post_init__(self) -> None:
        if self.system is not None and not self.system.strip():
            raise ConfigError("system prompt is empty: pass None for the template's default")

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.W_E.device

    def batch(
        self,
        prompts: Sequence[str],
        responses: Sequence[str] | str | None = None,
        system: str | None = None,
    ) -> ChatBatch:
        """Chat-formatted, right-padded batch on the model's device (see `core.chat.make_batch`);
        `system` overrides the model's own `self.system`."""
        system = self.system if system is None else system
        return make_batch(self.tokenizer, prompts, responses, system).to(self.device)

    def check_layer(self, layer: int, what: str = "layer") -> None:
        """Raise ConfigError unless `layer` indexes a block of this model."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ConfigError(
                f"{what} {layer!r} is out of range: {self.name} has layers 0..{self.n_layers - 1}")

    def hook_name(self, layer: int) -> str:
        """The residual stream after block `layer` (TransformerLens `hook_resid_post`)."""
        self.check_layer(layer)
        return f"blocks.{layer}.hook_resid_post"


def load_model(
    model: str | Path,
    adapter: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    merge_adapter: bool = True,
    n_ctx: int | None = None,
    system: str | None = None,
) -> HookedChatModel:
    """Load an HF Llama chat model (folder or hub id), merge an optional peft adapter, hook it.

    `n_ctx` defaults to min(max_position_embeddings, MAX_CTX); `system` is the deployment's
    system prompt (`HookedChatModel.system`). The weights are frozen
    (`hm.model.requires_grad_(True)` to train them); gradients still flow to steering vectors.
    Raises WeightsNotFoundError when weights are neither on disk, in the HF cache, nor
    downloadable; ConfigError for unsupported architectures, tokenizers without a chat template,
    or an adapter that does not fit the base.
    """
    torch_dtype = _dtype(dtype)
    if adapter is not None and not merge_adapter:
        raise ConfigError("merge_adapter=False is not supported: a HookedTransformer needs the "
                          "LoRA merged into its weights; keep the default merge_adapter=True")
    model_dir = resolve_weights(model, "model", _MODEL_FILES)
    adapter_dir = None if adapter is None else resolve_weights(adapter, "adapter", _ADAPTER_FILES)
    hf_cfg = _llama_config(model_dir, str(model))
    tokenizer = load_chat_tokenizer(model_dir, str(model))
    hf = _load_hf(model_dir, str(model), torch_dtype)
    if adapter_dir is not None:
        hf = _merge_adapter(hf, adapter_dir, str(adapter), str(model))
    cfg = hooked_config(hf_cfg, dtype=torch_dtype, device=device, n_ctx=n_ctx, name=str(model))
    hooked = _to_hooked(hf, cfg, tokenizer)
    del hf
    gc.collect()
    return HookedChatModel(hooked, tokenizer, str(model), None if adapter is None else str(adapter),
                           system)


def resolve_weights(name: str | Path, what: str, patterns: list[str] | None = None) -> Path:
    """Local folder holding `name`: the folder itself, its HF-cache snapshot, or a hub download."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    text = str(name)
    if not _REPO_ID.match(text):
        raise WeightsNotFoundError(
            f"{what} {text!r}: no such folder, and not a hub id like 'org/name'. "
            "Pass an existing local folder or a Hugging Face repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=patterns, local_files_only=True))
    except (OSError, ValueError):
        pass
    fix = (f"Download it first (`hf download {text}`; gated repos also need `hf auth login` and "
           "an accepted licence) or pass a local folder.")
    if _hub_offline():
        raise WeightsNotFoundError(f"{what} {text!r} is not in the HF cache and HF_HUB_OFFLINE is "
                                   f"set. {fix}")
    try:
        with bounded_hub(HUB_TIMEOUT):
            return Path(snapshot_download(text, allow_patterns=patterns, etag_timeout=HUB_TIMEOUT))
    except Exception as e:  # network boundary: HTTP, auth, timeout and validation errors alike
        why = (f"hub unreachable: no answer within {HUB_TIMEOUT:g} s"
               if "timeout" in f"{e!r} {e.__cause__!r}".lower() else
               f"{type(e).__name__}: {str(e)[:200]}")
        raise WeightsNotFoundError(f"{what} {text!r} is not on disk and could not be fetched from "
                                   f"the hub ({why}). {fix}") from e


@contextmanager
def bounded_hub(timeout: float) -> Iterator[None]:
    """Give every huggingface_hub request made inside the block a `timeout` (connect and each
    read: a hub that accepts connections but never answers fails instead of blocking forever;
    a long download still proceeds, each chunk within `timeout`). huggingface_hub's default
    client has no timeout (`repo_info`, tree listings)."""
    import httpx2
    from huggingface_hub.utils import _http

    old = _http._GLOBAL_CLIENT_FACTORY
    bound = httpx2.Timeout(timeout).as_dict()

    class BoundedTransport(httpx2.HTTPTransport):
        """Fills in every missing timeout: hub calls pass `timeout=None` (no limit) per request."""

        def handle_request(self, request: Any) -> Any:
            given = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {k: given.get(k) or v for k, v in bound.items()}
            return super().handle_request(request)

    def factory() -> Any:
        return httpx2.Client(event_hooks={"request": [_http.hf_request_event_hook]},
                             follow_redirects=True, timeout=httpx2.Timeout(timeout),
                             transport=BoundedTransport())

    _http.set_client_factory(factory)
    try:
        yield
    finally:
        _http.set_client_factory(old)


def _check_weight_files(folder: Path, what: str) -> None:
    """Every safetensors file of `folder` is whole (CorruptWeightsError names the file)."""
    for f in sorted(folder.glob("*.safetensors")):
        try:
            check_safetensors(f)
        except CorruptWeightsError as e:
            raise CorruptWeightsError(f"{what}: {e}") from e


def load_chat_tokenizer(folder: str | Path, name: str | None = None) -> PreTrainedTokenizerBase:
    """The folder's tokenizer; it must have a chat template. A missing pad token becomes EOS."""
    name = name or str(folder)
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(f"model {name!r}: no usable tokenizer in {folder} ({e})") from e
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"tokenizer of {name!r} has no chat template: use a chat/instruct model "
                          "or set tokenizer.chat_template and save it with the model")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer of {name!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def hooked_config(
    hf_cfg: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    n_ctx: int | None = None,
    name: str = "llama",
) -> HookedTransformerConfig:
    """HookedTransformerConfig equivalent to an HF LlamaConfig (GQA, llama3 rope scaling)."""
    n_heads = int(hf_cfg.num_attention_heads)
    d_head = int(getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // n_heads)
    n_kv = int(getattr(hf_cfg, "num_key_value_heads", None) or n_heads)
    theta, scaling = _rope(hf_cfg, name)
    ctx = n_ctx or min(int(hf_cfg.max_position_embeddings), MAX_CTX)
    return HookedTransformerConfig(
        model_name=name, d_model=int(hf_cfg.hidden_size), d_head=d_head, n_heads=n_heads,
        n_key_value_heads=n_kv if n_kv != n_heads else None, d_mlp=int(hf_cfg.intermediate_size),
        n_layers=int(hf_cfg.num_hidden_layers), n_ctx=ctx, d_vocab=int(hf_cfg.vocab_size),
        eps=float(hf_cfg.rms_norm_eps), act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_base=theta,
        rotary_adjacent_pairs=False, final_rms=True, gated_mlp=True,
        original_architecture="LlamaForCausalLM", init_weights=False, dtype=dtype,
        device=device, **scaling)


def _rope(hf_cfg: Any, name: str) -> tuple[float, dict[str, Any]]:
    """(rope_theta, TL NTK-by-parts fields) from transformers 5 `rope_parameters` or 4.x fields."""
    params = {**(getattr(hf_cfg, "rope_scaling", None) or {}),
              **(getattr(hf_cfg, "rope_parameters", None) or {})}
    theta = float(params.get("rope_theta", getattr(hf_cfg, "rope_theta", None) or 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, {}
    if kind != "llama3":
        raise ConfigError(f"model {name!r} uses rope scaling {kind!r}; supported: default, llama3")
    return theta, dict(
        use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(params["factor"]),
        NTK_by_parts_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        NTK_by_parts_high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        NTK_original_ctx_len=int(params.get("original_max_position_embeddings", 8192)))


def _llama_config(folder: Path, name: str) -> Any:
    try:
        cfg = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(f"model {name!r}: no readable config.json in {folder} ({e})") from e
    archs = list(getattr(cfg, "architectures", None) or [])
    if cfg.model_type != "llama" or (archs and archs[0] not in SUPPORTED_ARCHITECTURES):
        raise ConfigError(f"model {name!r} is a {archs[0] if archs else cfg.model_type!r} model; "
                          f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ConfigError(f"model {name!r} has attention/MLP biases, which the Llama conversion "
                          "does not carry over")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ConfigError(f"model {name!r} uses activation {cfg.hidden_act!r}; only silu is supported")
    return cfg


def _load_hf(folder: Path, name: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaForCausalLM

    _check_weight_files(folder, f"model {name!r}")
    try:
        return LlamaForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    except SafetensorError as e:
        raise CorruptWeightsError(f"model {name!r}: a weights file in {folder} is corrupt ({e}). "
                                  "Re-download it or pass another folder") from e
    except OSError as e:
        raise WeightsNotFoundError(f"model {name!r}: no weights in {folder} ({e}). Download the "
                                   "full model or pass a folder with *.safetensors") from e


def _merge_adapter(hf: Any, folder: Path, adapter: str, model: str) -> Any:
    """Apply a peft adapter folder to `hf` and merge it into the weights."""
    from peft import PeftModel

    _check_weight_files(folder, f"adapter {adapter!r}")
    try:
        peft_model = PeftModel.from_pretrained(hf, str(folder))
    except SafetensorError as e:
        raise CorruptWeightsError(f"adapter {adapter!r}: a weights file in {folder} is corrupt "
                                  f"({e}). Re-download or rebuild it") from e
    except (OSError, ValueError) as e:
        if not (folder / "adapter_config.json").exists():
            raise WeightsNotFoundError(f"adapter {adapter!r}: no adapter_config.json in {folder}. "
                                       "Pass a peft adapter folder or hub id.") from e
        raise ConfigError(f"adapter {adapter!r} cannot be applied to {model!r}: {e}") from e
    except RuntimeError as e:  # size mismatch when loading the LoRA state dict
        raise ConfigError(f"adapter {adapter!r} does not fit base model {model!r} (was it trained "
                          f"on another base?): {str(e)[:300]}") from e
    return peft_model.merge_and_unload().eval()


def _to_hooked(hf: Any, cfg: HookedTransformerConfig, tokenizer: PreTrainedTokenizerBase
               ) -> HookedTransformer:
    """Convert on CPU, then move to cfg.device (the HF model stays where it was loaded)."""
    state = convert_llama_weights(hf, cfg)
    hooked = HookedTransformer(cfg, move_to_device=False)
    hooked.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=False)
    del state
    hooked.move_model_modules_to_device()
    try:  # TL edits (or reloads with add_bos_token) its tokenizer: give it a copy
        hooked.set_tokenizer(copy.deepcopy(tokenizer))
    except (OSError, ValueError, KeyError):
        hooked.tokenizer = tokenizer
    hooked.requires_grad_(False)  # steering optimises vectors, never the weights
    return hooked.eval()


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(f.upper() in {"1", "ON", "YES", "TRUE"}
                                                  for f in flags)
