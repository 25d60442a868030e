"""Model shapes for the budget: a ``ModelConfig`` dataclass and its loaders.

Shipped configs live in ``data/models/*.toml`` and use the field names of a Hugging Face
``config.json``, so one parser reads both: ``load_model("deepseek-v3")`` and
``load_model("path/to/config.json")`` give equal configs for the same model.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from traceview.errors import TraceError, UsageError

from . import _toml

__all__ = ["ModelConfig", "load_model", "model_from_hf", "list_models"]


@dataclass(frozen=True)
class ModelConfig:
    """The shapes the FLOP/byte formulas need, named after the article's ``ModelArgs``.

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
    moe_layout: str = field(default="first", compare=False)  # dense layers first, or interleaved (counted alike)
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


# HF config.json key -> ModelConfig field (the keys every family shares, and DeepSeek's).
_HF_FIELDS: dict[str, str] = {
    "hidden_size": "dim",
    "intermediate_size": "inter_dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "moe_intermediate_size": "moe_inter_dim",
    "n_shared_experts": "n_shared_experts",
    "n_group": "n_expert_groups",
    "topk_group": "n_limited_groups",
    "routed_scaling_factor": "route_scale",
}
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# MoE keys by family; the layer pattern keys say which layers have experts:
#   DeepSeek-V2/V3/R1  n_routed_experts, n_shared_experts, moe_intermediate_size,
#                      first_k_dense_replace, moe_layer_freq
#   Qwen2-MoE/Qwen3-MoE num_experts, moe_intermediate_size, shared_expert_intermediate_size,
#                      decoder_sparse_step, mlp_only_layers
#   Mixtral, GPT-OSS   num_local_experts (experts as wide as intermediate_size), experts_per_token
#   Llama-4            num_local_experts, intermediate_size_mlp (dense layers), one shared expert,
#                      interleave_moe_layer_step, moe_layers
_MOE_UNDERSTOOD = {
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size", "first_k_dense_replace",
    "moe_layer_freq", "n_group", "topk_group", "routed_scaling_factor", "num_experts",
    "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers", "num_local_experts",
    "experts_per_token", "intermediate_size_mlp", "interleave_moe_layer_step", "moe_layers",
}
# MoE-looking keys that change neither FLOPs nor bytes (losses, router scoring, EP hints)
_MOE_HARMLESS = {
    "router_aux_loss_coef", "output_router_logits", "router_jitter_noise", "router_z_loss_coef", "norm_topk_prob",
    "topk_method", "scoring_func", "aux_loss_alpha", "seq_aux", "ep_size", "moe_aux_loss_coeff",
}
_MOE_LOOKING = re.compile(r"(?i)expert|moe|router|routed|sparse|topk|top_k|n_group|num_selects")


def _layer_pattern(cfg: Mapping[str, Any], n_layers: int, source: object) -> tuple[int, ...] | None:
    """Indices of the layers with experts, from the family's pattern keys (None: not MoE)."""
    def num(key: str, default: int) -> int:
        v = cfg.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TraceError(source, f"field {key} must be a non-negative integer, got {v!r}")
        return v

    def ids(key: str) -> list[int] | None:
        v = cfg.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise TraceError(source, f"field {key} must be a list of layer indices, got {v!r}")
        return v

    if num("n_routed_experts", 0):  # DeepSeek
        k, freq = num("first_k_dense_replace", 0), max(1, num("moe_layer_freq", 1))
        return tuple(i for i in range(n_layers) if i >= k and i % freq == 0)
    if num("num_experts", 0):  # Qwen2-MoE / Qwen3-MoE
        step, dense = max(1, num("decoder_sparse_step", 1)), set(ids("mlp_only_layers") or [])
        return tuple(i for i in range(n_layers) if i not in dense and (i + 1) % step == 0)
    if num("num_local_experts", 0):  # Mixtral, GPT-OSS, Llama-4
        listed = ids("moe_layers")
        if listed is not None:
            return tuple(sorted(set(i for i in listed if 0 <= i < n_layers)))
        step = max(1, num("interleave_moe_layer_step", 1))
        return tuple(i for i in range(n_layers) if (i + 1) % step == 0)
    return None


def model_from_hf(cfg: Mapping[str, Any], *, name: str = "custom", source: object = "<config>") -> ModelConfig:
    """Build a ``ModelConfig`` from a Hugging Face style mapping (``config.json`` contents).

    Reads dense (Llama/Qwen2) and MLA configs, and the MoE keys of DeepSeek-V2/V3/R1,
    Qwen2-MoE/Qwen3-MoE, Mixtral, GPT-OSS and Llama-4 (a multimodal config's ``text_config``
    is read when the top level has no ``hidden_size``).  Unrelated keys are ignored; ``null``
    counts as absent (DeepSeek-V2-Lite has ``q_lora_rank: null``).  A key that looks like MoE
    (expert, moe, router, ...) but is not understood raises ``TraceError`` naming it: modeling
    such a model as dense would be silently wrong.  Missing or non-numeric shape fields raise
    ``TraceError(source, ...)``.
    """
    if cfg.get("hidden_size") is None and isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg["text_config"], "description": cfg.get("description", "")}
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        raise TraceError(source, f"missing field(s) {', '.join(missing)} (not a model config.json?)")
    unknown = sorted(k for k in cfg if _MOE_LOOKING.search(k) and k not in _MOE_UNDERSTOOD | _MOE_HARMLESS)
    if unknown:
        raise TraceError(source, f"MoE-looking key(s) {', '.join(unknown)} not understood: refusing to model the "
                                 "model as dense (known MoE families: DeepSeek-V2/V3, Qwen2/3-MoE, Mixtral, GPT-OSS, "
                                 "Llama-4; see docs/budget.md)")
    kwargs: dict[str, Any] = {}
    for key, attr in _HF_FIELDS.items():
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TraceError(source, f"field {key} must be a number, got {value!r}")
        kwargs[attr] = float(value) if attr == "route_scale" else int(value)

    def num(key: str) -> int:
        v = cfg.get(key)
        if v is None:
            return 0
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TraceError(source, f"field {key} must be a number, got {v!r}")
        return int(v)

    n_layers = kwargs["n_layers"]
    moe_layers = _layer_pattern(cfg, n_layers, source)
    if moe_layers is not None:
        experts = num("n_routed_experts") or num("num_experts") or num("num_local_experts")
        top_k = num("num_experts_per_tok") or num("experts_per_token")
        if not top_k:
            raise TraceError(source, "an MoE config needs num_experts_per_tok (or experts_per_token)")
        kwargs.update(n_routed_experts=experts, n_activated_experts=top_k, n_dense_layers=n_layers - len(moe_layers))
        if num("num_local_experts"):  # Mixtral / GPT-OSS / Llama-4: experts are intermediate_size wide
            kwargs["moe_inter_dim"] = kwargs["inter_dim"]
            if num("intermediate_size_mlp"):  # Llama-4: dense layers use the wider MLP, plus a shared expert
                kwargs["inter_dim"] = num("intermediate_size_mlp")
                kwargs.update(n_shared_experts=1, shared_inter_dim=kwargs["moe_inter_dim"])
        elif num("num_experts") and num("shared_expert_intermediate_size"):  # Qwen2-MoE's shared expert
            kwargs.update(n_shared_experts=1, shared_inter_dim=num("shared_expert_intermediate_size"))
        if not kwargs.get("moe_inter_dim"):
            raise TraceError(source, "an MoE config needs moe_intermediate_size")
        layout = "first" if moe_layers == tuple(range(n_layers - len(moe_layers), n_layers)) else "interleaved"
        kwargs["moe_layout"] = layout
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
