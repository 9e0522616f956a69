"""What the methods share: input checks, layer resolution, the base config, saved results."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from trigrecon.core.chat import ChatBatch
from trigrecon.core.errors import ConfigError, IncompatibleSAEError
from trigrecon.core.io import load_tensors, save_tensors, to_jsonable, write_json
from trigrecon.steering.readout import LatentHit, VectorReadout


def check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no prompts given: pass at least one benign prompt")
    return prompts


def make_batch(hm: Any, prompts: Sequence[str], response: str | None = None) -> ChatBatch:
    """Chat batch of the prompts (with the pre-filled response); a response needs tokens."""
    prompts = check_prompts(prompts)
    if response is not None and not response.strip():
        raise ConfigError("target response is empty: pass the backdoor action as text")
    return hm.batch(prompts, response)


def sae_layer(sae: Any) -> int:
    """The layer of an SAE's residual hook ('blocks.L.hook_resid_post')."""
    name = str(getattr(sae.cfg.metadata, "hook_name", "") or "")
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise IncompatibleSAEError(f"SAE hook {name!r} is not a 'blocks.<layer>.hook_resid_*' "
                                   "hook: pass the layer explicitly")
    return int(parts[1])


def resolve_layer(hm: Any, layer: int | None, sae: Any = None) -> int:
    """The steering layer: explicit, else the SAE's layer, else a quarter of the depth.

    With an SAE the layer and width are checked against the model.
    """
    if layer is None:
        layer = sae_layer(sae) if sae is not None else max(1, hm.n_layers // 4)
    hm.check_layer(layer, "layer")
    if sae is not None:
        from trigrecon.core.sae import check_compatible

        check_compatible(sae, hm, layer)
    return layer


def resolve_target(hm: Any, source: int, target: int | None) -> int:
    """Target layer: explicit, else three quarters of the depth (MELBO's 24 of 32)."""
    if target is None:
        target = max(source + 1, round(0.75 * hm.n_layers) - 1)
        target = min(target, hm.n_layers - 1)
    hm.check_layer(target, "target_layer")
    if target <= source:
        raise ConfigError(f"target_layer={target} must be after the source layer {source}")
    return target


@dataclass
class VectorConfig:
    """Fields every vector-training method has."""

    layer: int | None = None
    """Steering (source) layer; None: the SAE's layer, else n_layers // 4."""
    n_vectors: int = 4
    """Orthogonal vectors to train."""
    vectors_per_round: int | None = None
    """Vectors trained jointly per round (None: all in one round)."""
    steps: int = 300
    lr: float = 0.01
    """Adam step size, relative to the residual scale (parameters are in units of it)."""
    seed: int = 0
    max_norm: float = 100.0
    """Divergence threshold on a vector's norm, in units of the residual scale."""
    compile: bool = False
    """Run the steered blocks through `torch.compile` (lean blocks only): ~1.2x per step on
    CPU once compiled, after ~20 s per input shape; worth it for long runs on real models."""

    def __post_init__(self) -> None:
        for name in ("n_vectors", "steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.vectors_per_round is not None and self.vectors_per_round < 1:
            raise ConfigError(f"vectors_per_round={self.vectors_per_round} must be >= 1")
        for name in ("lr", "max_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")

    @property
    def per_round(self) -> int:
        return self.vectors_per_round or self.n_vectors


def hits_from(rows: list[dict[str, Any]]) -> list[LatentHit]:
    return [LatentHit(**r) for r in rows]


def readout_from(d: dict[str, Any]) -> VectorReadout:
    d = dict(d)
    for k in ("nearest", "encoded", "code", "effect"):
        d[k] = hits_from(d.get(k, []))
    return VectorReadout(**d)


class Saveable:
    """save(dir)/load(dir): `<NAME>.json` (everything JSON-able) + `<NAME>.safetensors`."""

    NAME: ClassVar[str] = "result"
    TENSORS: ClassVar[tuple[str, ...]] = ()

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name not in self.TENSORS}
        tensors = {n: getattr(self, n) for n in self.TENSORS if getattr(self, n) is not None}
        write_json(d / f"{self.NAME}.json", data)
        if tensors:
            save_tensors(d / f"{self.NAME}.safetensors", tensors)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Any:
        d = Path(directory)
        data = json.loads((d / f"{cls.NAME}.json").read_text())
        st = d / f"{cls.NAME}.safetensors"
        tensors = load_tensors(st) if st.exists() else {}
        for n in cls.TENSORS:
            data[n] = tensors.get(n)
        return cls._from_json(data)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> Any:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass
class SteeringResult(Saveable):
    """Vectors of one steering method, with per-vector readouts, best first in `order`."""

    NAME: ClassVar[str] = "steering"
    TENSORS: ClassVar[tuple[str, ...]] = ("vectors", "codes", "history")

    method: str
    layer: int
    vectors: Float[Tensor, "k d_model"]
    codes: Float[Tensor, "k d_sae"] | None
    """SAE-space methods: latent codes with vectors == codes @ W_dec exactly; else None."""
    history: Float[Tensor, "steps k"]
    final_loss: list[float]
    """Main loss term per vector (CE for supervised methods, MELBO objective otherwise)."""
    order: list[int]
    """Vector indices best first (lowest CE / highest objective / highest action rate)."""
    resid_scale: float
    """Median user-token residual norm at the layer: the unit of norms and learning rates."""
    config: dict[str, Any]
    target_layer: int | None = None
    readouts: list[VectorReadout] = field(default_factory=list)

    @property
    def best(self) -> int:
        return self.order[0]

    def ranking(self, k: int = 10) -> list[LatentHit]:
        """Latent ranking of the best vector: its latents by effect on the loss (supervised SAE
        methods), else its code (SAE methods), else decoder cosines."""
        if not self.readouts:
            return []
        r = next(x for x in self.readouts if x.index == self.best)
        return (r.effect or r.code or r.nearest)[:k]

    def reorder_by_action(self) -> None:
        """Best first by steered action rate (ties: previous order), once readouts have one."""
        rates = {r.index: r.action_rate for r in self.readouts if r.action_rate is not None}
        if rates:
            self.order = sorted(self.order, key=lambda i: -(rates.get(i) or 0.0))

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> SteeringResult:
        data["readouts"] = [readout_from(r) for r in data.get("readouts", [])]
        return cls(**data)


def user_resid_sample(fwd: Any, n: int = 256) -> Float[Tensor, "n d_model"]:
    """Some user-token residuals at the source layer (reference activations for encodings)."""
    acts = fwd.resid[fwd.batch.user_mask]
    return acts[torch.linspace(0, len(acts) - 1, min(n, len(acts))).long()]
