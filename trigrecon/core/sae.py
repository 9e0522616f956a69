"""SAEs: loading (local folder, the project's `saes/`, or the sae-lens registry), compatibility
checks against a model, a health report (L0, variance explained, dead latents) and small helpers.

Llama Scope pitfalls this module guards against (SAELens#445, #482/#483): an SAE used on the
wrong model (Instruct vs base) or with an unscaled JumpReLU threshold loads without error but
reconstructs badly or fires thousands of latents. `sae_health` makes that visible.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from safetensors import SafetensorError
from torch import Tensor
from transformer_lens.hook_points import HookedRootModule

from trigrecon.core.errors import (
    ConfigError,
    CorruptWeightsError,
    IncompatibleSAEError,
    WeightsNotFoundError,
)
from trigrecon.core.io import check_finite, check_safetensors

log = logging.getLogger(__name__)
SAES_ENV = "TRIGRECON_SAES"
FVE_WARN = 0.7
FVE_ERROR = 0.3
"""`load_sae(model=, prompts=)` rejects an SAE that explains less than this on the model."""
L0_WARN = 1000.0
DEAD_WARN = 0.5
_PITFALLS = ("see SAELens#445 (Llama Scope on the Instruct model) and #483 (JumpReLU threshold "
             "not scaled by norm_scaling_factor): check the model the SAE was trained on and "
             "load registry SAEs with load_sae(release, sae_id) so the scaling is folded in")


def saes_dir() -> Path:
    """The project's SAE folder: $TRIGRECON_SAES, else `<repo>/saes`."""
    env = os.environ.get(SAES_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "saes"


# ---------------------------------------------------------------- loading


def load_sae(
    source: str | Path,
    sae_id: str | None = None,
    *,
    device: str = "cpu",
    model: Any = None,
    prompts: Sequence[str] | None = None,
    min_fve: float = FVE_ERROR,
) -> SAE:
    """Load an SAE from a folder written by `SAE.save_model`, a bare name in the project's
    `saes/` folder (e.g. "base_l1"), or a sae-lens registry release + id
    (e.g. `load_sae("llama_scope_lxr_32x", "l8r_32x")`).

    The weights are checked on load: a truncated or corrupt safetensors file, or NaN/inf
    weights, raise CorruptWeightsError naming the file. With `model` (a HookedChatModel or hooked
    model) the SAE must fit it (`check_compatible`: width and hook; and where both name a hub
    model, the same model up to an -Instruct/-it suffix, which only warns: SAELens#445). With
    `model` and `prompts` (a few benign prompts) the health check runs on their activations:
    warnings (FVE < 0.7, huge L0, many dead latents) are issued with `warnings.warn`, and an FVE
    below `min_fve` raises IncompatibleSAEError (an SAE of another model)."""
    with warnings.catch_warnings():  # advice for HookedSAETransformer.from_pretrained users only
        warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pre")
        if sae_id is None:
            sae = _load_folder(_local_folder(source), device)
        elif Path(source).is_dir():  # a local folder holding several SAEs
            sae = _load_folder(_local_folder(Path(source) / sae_id), device)
        else:
            sae = _load_registry(str(source), sae_id, device)
            check_finite(dict(sae.state_dict()), f"SAE {source}/{sae_id}")
    if model is not None:
        check_compatible(sae, model)
        _check_model_name(sae, model)
        if prompts:
            _check_health(sae, model, prompts, min_fve)
    return sae


def _load_folder(folder: Path, device: str) -> SAE:
    for f in sorted(folder.glob("*.safetensors")):
        check_safetensors(f)
    try:
        sae = SAE.load_from_disk(folder, device=device)
    except Exception as e:  # noqa: BLE001 - a malformed file: say which folder, keep the cause
        raise CorruptWeightsError(f"SAE at {folder} could not be loaded ({type(e).__name__}: "
                                  f"{str(e)[:300]}): check cfg.json and the weights file, or "
                                  "rebuild/re-download the SAE.") from e
    check_finite(dict(sae.state_dict()), f"SAE at {folder}")
    return sae


def _hub_base_name(name: str) -> str | None:
    """'meta-llama/Llama-3.1-8B-Instruct' -> 'llama-3.1-8b'; None unless `name` is a hub id."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name or "") or Path(name).exists():
        return None
    base = name.split("/", 1)[1].lower()
    return re.sub(r"-(instruct|it|chat)$", "", base)


def _check_model_name(sae: SAE, model: Any) -> None:
    """An SAE whose metadata names another hub model than `model` is rejected; the base model
    of an instruct model only warns (Llama Scope on Llama-3.1-8B-Instruct is common practice)."""
    recorded = str(sae.cfg.metadata.model_name or "")
    name = str(getattr(model, "name", "") or getattr(getattr(as_hooked(model), "cfg", None),
                                                     "model_name", "") or "")
    a, b = _hub_base_name(recorded), _hub_base_name(name)
    if a is None or b is None or recorded == name:
        return
    if a != b:
        raise IncompatibleSAEError(
            f"SAE was trained on {recorded!r} but the model is {name!r}: use an SAE trained on "
            "this model (same width is not enough).")
    warnings.warn(f"SAE was trained on {recorded!r} and is used on {name!r}; {_PITFALLS}. "
                  "Check its health (load_sae(..., model=, prompts=)).", stacklevel=3)


def _check_health(sae: SAE, model: Any, prompts: Sequence[str], min_fve: float) -> None:
    batch = model.batch(list(prompts)) if hasattr(model, "batch") else None
    if batch is None:
        raise ConfigError("load_sae(prompts=...) needs a HookedChatModel (with .batch) as model")
    health = sae_health(sae, model, batch)
    log.info("%s", health)
    if not health.fve >= min_fve:
        raise IncompatibleSAEError(
            f"{health}: FVE below {min_fve} means the SAE does not reconstruct this model's "
            f"activations at all; it was trained on another model or layer ({_PITFALLS}).")
    few = health.n_tokens < 4 * sae.cfg.d_sae  # too few tokens to call a latent dead
    for w in health.warnings:
        if not (few and "never fired" in w):
            warnings.warn(f"{health}: {w}", stacklevel=3)


def _local_folder(source: str | Path) -> Path:
    path = Path(source).expanduser()
    candidates = [path]
    if len(path.parts) == 1 and not path.is_absolute():
        candidates.append(saes_dir() / path)
    for c in candidates:
        if (c / "cfg.json").is_file():
            return c
    have = sorted(p.name for p in saes_dir().glob("*") if (p / "cfg.json").is_file())
    tried = ", ".join(str(c) for c in candidates)
    raise WeightsNotFoundError(
        f"no SAE at {source!r} (looked for cfg.json in: {tried}). Pass a folder written by "
        f"SAE.save_model, a name from {saes_dir()} (available: {have or 'none'}; override with "
        f"${SAES_ENV}), or a sae-lens release and id such as ('llama_scope_lxr_32x', 'l8r_32x')."
    )


def _load_registry(release: str, sae_id: str, device: str) -> SAE:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory and "/" not in release:
        raise WeightsNotFoundError(
            f"{release!r} is neither a local folder nor a sae-lens release; see "
            "sae_lens/pretrained_saes.yaml for release names (e.g. 'llama_scope_lxr_32x')."
        )
    if release in directory and sae_id not in (ids := list(directory[release].saes_map)):
        raise ConfigError(f"sae_id {sae_id!r} is not in release {release!r}; valid: {ids[:6]}...")
    from trigrecon.core.model import HUB_TIMEOUT, bounded_hub

    try:
        with _offline_unless_reachable(), bounded_hub(HUB_TIMEOUT):
            return SAE.from_pretrained(release, sae_id, device=device)
    except SafetensorError as e:  # a truncated/corrupt file in the HF cache
        raise CorruptWeightsError(
            f"SAE {release}/{sae_id}: its cached safetensors file is corrupt ({e}). Delete it "
            "from the HF cache (`hf cache delete`) and download it again.") from e
    except (OSError, ValueError) as e:  # huggingface_hub errors subclass OSError
        raise WeightsNotFoundError(
            f"could not load SAE {release}/{sae_id} from the Hugging Face hub or its local cache "
            f"({type(e).__name__}: {str(e)[:200]}). Connect to the hub once to cache it, or "
            "download it elsewhere and pass the folder to load_sae."
        ) from e


@contextmanager
def _offline_unless_reachable(timeout: float = 2.0) -> Iterator[None]:
    """Switch huggingface_hub to offline mode (cache only) if the hub cannot be reached, so a
    machine without network fails in a second instead of retrying for half a minute."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    old = constants.HF_HUB_OFFLINE
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


# ---------------------------------------------------------------- model access


def as_hooked(model: Any) -> HookedRootModule:
    """The hooked module of a `HookedChatModel` (its `.model`) or of a bare hooked model."""
    inner = getattr(model, "model", None)
    if isinstance(inner, HookedRootModule):
        return inner
    if isinstance(model, HookedRootModule):
        return model
    raise ConfigError(
        f"expected a HookedChatModel or a hooked model (HookedTransformer/TransformerBridge), "
        f"got {type(model).__name__}"
    )


def resid_hook(model: Any, layer: int) -> str:
    """The residual-stream hook of `layer` (the wrapper's `hook_name` if it has one)."""
    namer = getattr(model, "hook_name", None)
    return str(namer(layer)) if callable(namer) else f"blocks.{layer}.hook_resid_post"


def hook_layer(hook_name: str) -> int | None:
    """`blocks.8.hook_resid_post` -> 8; None for hooks outside the blocks (e.g. hook_embed)."""
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else None


def check_compatible(sae: SAE, model: Any, layer: int | None = None) -> None:
    """Raise IncompatibleSAEError unless the SAE reads the model's residual width at a hook the
    model has (and, with `layer`, at that layer's residual stream)."""
    hooked = as_hooked(model)
    d_model = int(hooked.cfg.d_model)  # type: ignore[union-attr]
    hook = sae.cfg.metadata.hook_name
    src = sae.cfg.metadata.neuronpedia_id or sae.cfg.metadata.model_name or "SAE"
    if sae.cfg.d_in != d_model:
        raise IncompatibleSAEError(
            f"SAE {src} reads d_in={sae.cfg.d_in} but the model has d_model={d_model}: "
            "use an SAE trained on this model."
        )
    if not hook or hook not in hooked.hook_dict:
        raise IncompatibleSAEError(
            f"SAE {src} hooks {hook!r}, which the model does not have "
            f"(e.g. {resid_hook(model, 0)!r}): set sae.cfg.metadata.hook_name or use another SAE."
        )
    if layer is not None:
        want = {resid_hook(model, layer), f"blocks.{layer + 1}.hook_resid_pre"}
        if hook not in want:
            raise IncompatibleSAEError(
                f"SAE {src} hooks {hook!r} but layer {layer}'s residual stream is "
                f"{resid_hook(model, layer)!r}: use the SAE for layer {layer} or change the layer."
            )


# ---------------------------------------------------------------- activations


def iter_activations(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    mask: Bool[Tensor, "batch pos"] | None = None,
    batch_size: int = 64,
) -> Iterator[tuple[Float[Tensor, "n d_model"], Int[Tensor, " n"]]]:
    """Yield (activations at `hook_name`, flat positions into `tokens`) of the masked tokens,
    `batch_size` rows at a time; runs the model only up to the hook's layer."""
    hooked = as_hooked(model)
    layer = hook_layer(hook_name)
    stop = None if layer is None else layer + 1
    device = next(hooked.parameters()).device
    n_pos = tokens.shape[1]
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            rows = tokens[start : start + batch_size].to(device)
            _, cache = hooked.run_with_cache(rows, names_filter=[hook_name], stop_at_layer=stop)
            acts = cache[hook_name].reshape(-1, cache[hook_name].shape[-1])
            flat = torch.arange(start * n_pos, start * n_pos + rows.numel(), device=device)
            if mask is not None:
                keep = mask[start : start + batch_size].reshape(-1).to(device)
                acts, flat = acts[keep], flat[keep]
            yield acts, flat


def encode(sae: SAE, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
    """SAE latents of `x` (cast to the SAE's dtype/device, returned in x's dtype; keeps grad)."""
    return sae.encode(x.to(device=sae.device, dtype=sae.dtype)).to(x.dtype)


def decoder_directions(sae: SAE) -> Float[Tensor, "d_sae d_model"]:
    """Unit-norm decoder rows: the direction each latent writes into the residual stream."""
    w = sae.W_dec.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)


# ---------------------------------------------------------------- health


@dataclass
class SAEHealth:
    """How well an SAE fits a model's activations on some tokens."""

    hook_name: str
    n_tokens: int
    l0: float
    """Mean number of active latents per token."""
    fve: float
    """Fraction of variance explained: 1 - sum||x - x_hat||^2 / sum||x - mean||^2."""
    dead_fraction: float
    """Latents that never fired on these tokens (noisy on few tokens)."""
    norm_ratio: float
    """Mean ||x_hat|| / ||x||: far from 1 suggests a missing norm scaling factor."""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def __str__(self) -> str:
        status = "OK" if self.ok else f"{len(self.warnings)} warning(s)"
        return (f"SAE @ {self.hook_name} on {self.n_tokens:,} tokens: L0 {self.l0:.1f}, "
                f"FVE {self.fve:.3f}, dead {self.dead_fraction:.1%}, "
                f"|x_hat|/|x| {self.norm_ratio:.2f} ({status})")


def sae_health(
    sae: SAE, model: Any, tokens_or_batch: Any, mask: Bool[Tensor, "batch pos"] | None = None,
    *, exclude_bos: bool = True, batch_size: int = 64,
) -> SAEHealth:
    """Measure L0, FVE and dead latents of `sae` on the model's activations of the given tokens
    (an Int tensor [batch, pos] or a ChatBatch, whose attention mask excludes padding)."""
    check_compatible(sae, model)
    tokens, mask = _tokens_and_mask(model, tokens_or_batch, mask, exclude_bos)
    hook = str(sae.cfg.metadata.hook_name)
    acc = torch.zeros(5, dtype=torch.float64)  # n, sum|x|^2, sum|x - x_hat|^2, sum L0, sum ratio
    total = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for x, _ in iter_activations(model, tokens, hook, mask, batch_size):
            z = sae.encode(x.to(device=sae.device, dtype=sae.dtype))
            x64, xh, active = x.double().cpu(), sae.decode(z).double().cpu(), (z != 0).cpu()
            ratio = xh.norm(dim=-1) / x64.norm(dim=-1).clamp_min(1e-12)
            acc += torch.stack([torch.tensor(float(len(x64)), dtype=torch.float64),
                                (x64**2).sum(), ((x64 - xh) ** 2).sum(), active.sum(), ratio.sum()])
            total += x64.sum(0)
            fired |= active.any(0)
    n, sq, err, l0, ratio_sum = acc.tolist()
    if n == 0:
        raise ConfigError("sae_health got no tokens (all masked out): pass at least one token")
    var = sq - float((total**2).sum()) / n
    fve = 1.0 - err / var if var > 0 else float("nan")
    h = SAEHealth(hook, int(n), l0 / n, fve, 1.0 - float(fired.float().mean()), ratio_sum / n)
    h.warnings = _health_warnings(h, sae.cfg.d_sae)
    return h


def _tokens_and_mask(
    model: Any, data: Any, mask: Tensor | None, exclude_bos: bool
) -> tuple[Tensor, Tensor]:
    tokens = getattr(data, "tokens", data)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ConfigError("tokens must be an Int tensor [batch, pos] or a ChatBatch")
    if mask is None:
        mask = getattr(data, "attention_mask", None)
    mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool().clone()
    tok = getattr(model, "tokenizer", None) or getattr(as_hooked(model), "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None)
    if exclude_bos and bos is not None:
        mask &= tokens != bos
    return tokens, mask


def _health_warnings(h: SAEHealth, d_sae: int) -> list[str]:
    out = []
    if not h.fve >= FVE_WARN:
        out.append(f"FVE {h.fve:.3f} < {FVE_WARN}: the SAE reconstructs these activations "
                   f"badly; {_PITFALLS}.")
    if h.l0 > min(L0_WARN, d_sae / 2):
        out.append(f"L0 {h.l0:.0f} is very large; {_PITFALLS}.")
    if h.dead_fraction > DEAD_WARN:
        out.append(f"{h.dead_fraction:.0%} of latents never fired on {h.n_tokens} tokens: "
                   "use more tokens, or the SAE does not match this model.")
    return out
