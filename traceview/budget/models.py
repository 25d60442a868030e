"""Model shapes for the budget: a ``ModelConfig`` dataclass and its loaders.

Shipped configs live in ``data/models/*.toml`` and use the field names of a Hugging Face
``config.json``, so one parser reads both: ``load_model("deepseek-v3")`` and
``load_model("path/to/config.json")`` give equal configs for the same model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from traceview.errors import TraceError, UsageError

from . import _toml

__all__ = ["ModelConfig", "load_model", "model_from_hf", "list_models"]


@dataclass(frozen=True)
class ModelConfig:
    """The shapes the FLOP/byte formulas need, named after the seed's ``ModelArgs``.

    ``name`` and ``description`` do not take part in equality: two configs are equal when
    their shapes are.  MLA models have ``kv_lora_rank > 0``; MoE models ``n_routed_experts > 0``
    (their first ``n_dense_layers`` layers use the dense MLP, the rest are MoE layers).
    """

    dim: int
    inter_dim: int
    n_layers: int
    n_heads: int
    vocab_size: int = 0
    n_kv_heads: int = 0  # 0 -> n_heads
    head_dim: int = 0  # 0 -> dim // n_heads (MLA: qk_nope + qk_rope)
    n_dense_layers: int = 0  # MoE models: first_k_dense_replace; dense models: n_layers
    # MLA
    q_lora_rank: int = 0  # 0 -> no query compression (q projected straight from dim)
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE
    moe_inter_dim: int = 0
    shared_inter_dim: int = 0  # total width of the shared expert(s); 0 -> n_shared_experts x moe_inter_dim
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    n_activated_experts: int = 0
    n_expert_groups: int = 0
    n_limited_groups: int = 0
    route_scale: float = 1.0
    name: str = field(default="custom", compare=False)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim == 0 and self.n_heads:
            # MLA: the query/key head width (nope + rope); otherwise the usual dim / heads.
            width = self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.dim // self.n_heads
            object.__setattr__(self, "head_dim", width)
        if not self.is_moe:
            object.__setattr__(self, "n_dense_layers", self.n_layers)
        if self.shared_inter_dim == 0 and self.n_shared_experts:
            object.__setattr__(self, "shared_inter_dim", self.n_shared_experts * self.moe_inter_dim)
        for f in ("dim", "inter_dim", "n_layers", "n_heads"):
            if getattr(self, f) <= 0:
                raise UsageError(f"model {self.name!r}: {f} must be positive")
        if self.is_moe and not (0 <= self.n_dense_layers <= self.n_layers):
            raise UsageError(f"model {self.name!r}: n_dense_layers must be within 0..n_layers")

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3): KV cache is the compressed latent."""
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        """Mixture-of-experts FFN in the layers after the first ``n_dense_layers``."""
        return self.n_routed_experts > 0 and self.n_activated_experts > 0

    @property
    def n_moe_layers(self) -> int:
        """Layers with routed experts (58 for DeepSeek-V3)."""
        return self.n_layers - self.n_dense_layers

    @property
    def kv_values_per_token(self) -> int:
        """KV-cache values per token per layer: 512 + 64 = 576 for MLA, 2*kv_heads*head_dim else."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), name first."""
        d = asdict(self)
        return {"name": d.pop("name"), "description": d.pop("description"), **d}


# HF config.json key -> ModelConfig field.
_HF_FIELDS: dict[str, str] = {
    "hidden_size": "dim",
    "intermediate_size": "inter_dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "first_k_dense_replace": "n_dense_layers",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "moe_intermediate_size": "moe_inter_dim",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts",
    "n_group": "n_expert_groups",
    "topk_group": "n_limited_groups",
    "routed_scaling_factor": "route_scale",
}
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def model_from_hf(cfg: Mapping[str, Any], *, name: str = "custom", source: object = "<config>") -> ModelConfig:
    """Build a ``ModelConfig`` from a Hugging Face style mapping (``config.json`` contents).

    Unknown keys are ignored (HF configs carry many unrelated fields); ``null`` counts as absent
    (DeepSeek-V2-Lite has ``q_lora_rank: null``).  Missing or non-numeric shape fields raise
    ``TraceError(source, ...)``.
    """
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        raise TraceError(source, f"missing field(s) {', '.join(missing)} (not a model config.json?)")
    kwargs: dict[str, Any] = {}
    for key, attr in _HF_FIELDS.items():
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TraceError(source, f"field {key} must be a number, got {value!r}")
        kwargs[attr] = float(value) if attr == "route_scale" else int(value)
    try:
        return ModelConfig(name=name, description=str(cfg.get("description", "")), **kwargs)
    except UsageError as exc:
        raise TraceError(source, str(exc)) from None


def _builtin_dir() -> Any:
    return resources.files("traceview.budget").joinpath("data", "models")


def _builtin_raw() -> dict[str, dict[str, Any]]:
    """Shipped model files by canonical name (file stem)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(_builtin_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            out[entry.name[: -len(".toml")]] = _toml.loads(entry.read_text(encoding="utf-8"), entry.name)
    return out


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def list_models() -> dict[str, str]:
    """Shipped model names -> one-line description."""
    return {name: str(raw.get("description", "")) for name, raw in _builtin_raw().items()}


def load_model(name_or_path: str | Path) -> ModelConfig:
    """A shipped model by name or alias (case-insensitive, ``_`` = ``-``), or a file path
    (or a model directory holding ``config.json``).

    Paths ending in ``.json`` are read as Hugging Face ``config.json``; ``.toml`` files use the
    same keys as the shipped ones.  Unknown names raise ``UsageError``; unreadable or malformed
    files raise ``TraceError``.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file():  # a downloaded HF model directory
        return _load_file(path / "config.json")
    if text.endswith((".json", ".toml")) or path.is_file():
        return _load_file(path)
    key = _norm(text)
    raw_all = _builtin_raw()
    for name, raw in raw_all.items():
        if key == name or key in {_norm(a) for a in raw.get("aliases", [])}:
            return model_from_hf(raw, name=str(raw.get("name", name)), source=f"{name}.toml")
    known = ", ".join(sorted(raw_all))
    raise UsageError(f"unknown model {text!r} (known: {known}; or give a path to a config.json)")


def _load_file(path: Path) -> ModelConfig:
    if path.suffix == ".toml":
        raw = _toml.load_path(path)
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TraceError(path, f"cannot read: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TraceError(path, f"invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise TraceError(path, "expected a JSON object of model fields")
    name = raw.get("name") or raw.get("_name_or_path") or raw.get("model_type") or path.stem
    if path.name == "config.json" and not raw.get("name") and not raw.get("_name_or_path"):
        name = path.parent.name or name
    return model_from_hf(raw, name=str(name), source=path)
