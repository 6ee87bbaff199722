"""Model arguments read from a Hugging Face ``config.json`` (no torch).

The architecture comes from ``config.json``'s ``architectures`` (or ``model_type``), never
from folder names. Unsupported architectures or features raise
:class:`UnsupportedModelError` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV32ForCausalLM": "deepseek_v3",  # V3 plus indexer tensors (engine.sparse)
}
_MODEL_TYPES = {v: v for v in ARCHITECTURES.values()}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its features is not supported."""


@dataclass(frozen=True)
class RopeArgs:
    """Rotary position embedding parameters (types: default, linear, llama3, yarn)."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class ModelArgs:
    """Shape and options of one decoder-only transformer."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    rope: RopeArgs = field(default_factory=RopeArgs)
    # MLA (DeepSeek); kv_lora_rank == 0 means ordinary grouped-query attention
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = True
    # MoE (DeepSeek); n_routed_experts == 0 means dense MLP everywhere
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    n_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention (compressed latent KV cache)."""
        return self.kv_lora_rank > 0

    def is_moe_layer(self, layer: int) -> bool:
        """True when ``layer`` uses routed experts instead of a dense MLP."""
        return self.n_routed_experts > 0 and layer >= self.first_k_dense_replace

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        """Build arguments from a Hugging Face ``config.json`` dict.

        Raises :class:`UnsupportedModelError` for unknown architectures or features
        this engine does not implement (rather than serving wrong tokens).
        """
        arch = _architecture(config)
        get = config.get
        if get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act {get('hidden_act')!r} is not supported")
        if get("quantization_config"):
            raise UnsupportedModelError("quantized checkpoints (quantization_config) are not supported")
        if arch == "qwen2" and get("use_sliding_window", False):
            raise UnsupportedModelError("Qwen2 sliding-window attention is not supported")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        eos = get("eos_token_id")
        eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else (
            (int(eos),) if eos is not None else ())
        common: dict[str, Any] = dict(
            architecture=arch,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            rope=_rope_args(config),
            bos_token_id=get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
        if arch == "llama":
            bias = bool(get("attention_bias", False))
            return cls(**common, qkv_bias=bias, o_bias=bias, mlp_bias=bool(get("mlp_bias", False)))
        if arch == "qwen2":
            return cls(**common, qkv_bias=True)
        scoring = get("scoring_func", "sigmoid")
        if scoring != "sigmoid":
            raise UnsupportedModelError(f"DeepSeek scoring_func {scoring!r} is not supported")
        common["head_dim"] = int(config["qk_nope_head_dim"]) + int(config["qk_rope_head_dim"])
        return cls(
            **common,
            qkv_bias=bool(get("attention_bias", False)),
            o_bias=bool(get("attention_bias", False)),
            q_lora_rank=int(get("q_lora_rank") or 0),
            kv_lora_rank=int(config["kv_lora_rank"]),
            qk_nope_head_dim=int(config["qk_nope_head_dim"]),
            qk_rope_head_dim=int(config["qk_rope_head_dim"]),
            v_head_dim=int(config["v_head_dim"]),
            rope_interleave=bool(get("rope_interleave", True)),
            n_routed_experts=int(get("n_routed_experts") or 0),
            num_experts_per_tok=int(get("num_experts_per_tok") or 0),
            n_shared_experts=int(get("n_shared_experts") or 0),
            moe_intermediate_size=int(get("moe_intermediate_size") or 0),
            first_k_dense_replace=int(get("first_k_dense_replace") or 0),
            n_group=int(get("n_group") or 1),
            topk_group=int(get("topk_group") or 1),
            norm_topk_prob=bool(get("norm_topk_prob", True)),
            routed_scaling_factor=float(get("routed_scaling_factor", 1.0)),
        )


def _architecture(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    for name in archs:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if not archs and config.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[config["model_type"]]
    found = archs or [config.get("model_type")]
    raise UnsupportedModelError(
        f"architecture {found} is not supported; supported: {sorted(ARCHITECTURES)}"
    )


def _rope_args(config: dict[str, Any]) -> RopeArgs:
    """Read RoPE settings from either ``rope_parameters`` (new) or ``rope_scaling`` (old)."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = str(merged.get("rope_type", merged.get("type", "default")))
    if rope_type not in ("default", "linear", "llama3", "yarn"):
        raise UnsupportedModelError(f"rope_type {rope_type!r} is not supported")
    factor = merged.get("factor")
    orig = merged.get("original_max_position_embeddings") or 0
    if rope_type == "yarn" and factor is None and orig:
        factor = config.get("max_position_embeddings", orig) / orig
    return RopeArgs(
        theta=theta,
        rope_type=rope_type,
        factor=float(factor if factor is not None else 1.0),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(orig),
        beta_fast=float(merged.get("beta_fast") or 32.0),
        beta_slow=float(merged.get("beta_slow") or 1.0),
        mscale=float(merged.get("mscale") or 0.0),
        mscale_all_dim=float(merged.get("mscale_all_dim") or 0.0),
        attention_factor=merged.get("attention_factor"),
        truncate=bool(merged.get("truncate", True)),
    )
