"""The shape of a model as the planner sees it, read from a Hugging Face ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ShapeError(ValueError):
    """A model shape or config is unusable; the message names the field."""


@dataclass(frozen=True)
class ModelShape:
    """Sizes that decide memory and speed. MLA fields are 0 for ordinary (GQA/MHA) attention.

    ``total_params`` counts every weight held in memory; ``active_params`` those used per token
    (equal for dense models, smaller for mixture-of-experts).
    """

    total_params: int
    active_params: int
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    moe_experts: int = 0
    experts_per_token: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("total_params", "active_params", "layers", "hidden_size", "heads",
                           "kv_heads", "head_dim", "vocab_size", "max_context"):
            if getattr(self, field_name) <= 0:
                raise ShapeError(f"ModelShape.{field_name} must be > 0")
        if self.active_params > self.total_params:
            raise ShapeError("ModelShape.active_params must be <= total_params")
        if self.heads % self.kv_heads and not self.is_mla:
            raise ShapeError("ModelShape.heads must be a multiple of kv_heads")
        if self.moe_experts and not 0 < self.experts_per_token <= self.moe_experts:
            raise ShapeError("ModelShape.experts_per_token must be in 1..moe_experts")

    @property
    def is_mla(self) -> bool:
        """True for DeepSeek multi-head latent attention (latent KV cache)."""
        return self.kv_lora_rank > 0

    @property
    def is_moe(self) -> bool:
        """True when the model routes tokens to a subset of experts."""
        return self.moe_experts > 0 and self.active_params < self.total_params

    def kv_bytes_per_token(self, dtype_bytes: float, tensor_parallel: int = 1) -> float:
        """KV-cache bytes one token occupies on one GPU of a ``tensor_parallel`` group.

        GQA shards KV heads over the group (a head is replicated once TP exceeds the KV-head
        count); MLA keeps one latent vector plus the rope key per layer, replicated on every GPU.
        """
        if self.is_mla:
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        heads_per_gpu = max(1, -(-self.kv_heads // tensor_parallel))
        return 2 * self.layers * heads_per_gpu * self.head_dim * dtype_bytes

    def weights_read_per_step(self, batch: int) -> float:
        """Expected parameters read by one decode step of ``batch`` tokens (MoE: touched experts)."""
        if not self.is_moe:
            return float(self.total_params)
        experts, k = self.moe_experts, self.experts_per_token
        per_expert = (self.total_params - self.active_params) / (experts - k)
        shared = self.active_params - k * per_expert
        touched = experts * (1.0 - (1.0 - k / experts) ** max(batch, 1))
        return shared + touched * per_expert

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str = "") -> ModelShape:
        """Build a shape from a Hugging Face ``config.json`` dict (Llama/Qwen/Mistral/Mixtral,
        Qwen-MoE, DeepSeek V2/V3 and multimodal configs with a ``text_config``).

        Parameter counts come from the layer sizes (embeddings, attention, MLP or experts).
        Raises ShapeError naming the missing key.
        """
        cfg: Mapping[str, Any] = config.get("text_config") or config

        def req(key: str) -> int:
            if key not in cfg or cfg[key] is None:
                raise ShapeError(f"config.json lacks {key!r}")
            return int(cfg[key])

        hidden, layers, heads = req("hidden_size"), req("num_hidden_layers"), req(
            "num_attention_heads"
        )
        vocab = req("vocab_size")
        kv_raw = cfg.get("num_key_value_heads")
        kv_heads = heads if kv_raw is None else int(kv_raw)
        for key, value in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
            if value <= 0:
                raise ShapeError(f"config.json {key} must be > 0, got {value}")
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        max_context = int(cfg.get("max_position_embeddings") or 4096)
        kv_lora = int(cfg.get("kv_lora_rank") or 0)
        rope_dim = int(cfg.get("qk_rope_head_dim") or 0) if kv_lora else 0

        if kv_lora:
            attn = _mla_attention_params(cfg, hidden, heads, kv_lora, rope_dim)
            head_dim = int(cfg.get("qk_nope_head_dim") or 0) + rope_dim or head_dim
        else:
            attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
            if cfg.get("attention_bias") or cfg.get("model_type", "").startswith("qwen2"):
                attn += heads * head_dim + 2 * kv_heads * head_dim

        experts, k, moe_total, moe_active, moe_layers = _moe_params(cfg, hidden, layers)
        dense_layers = layers - moe_layers
        dense_mlp = 3 * hidden * int(cfg.get("intermediate_size") or 4 * hidden)
        per_layer_fixed = attn + 2 * hidden
        embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
        base = embed + hidden + layers * per_layer_fixed + dense_layers * dense_mlp
        total = base + moe_layers * moe_total
        active = base + moe_layers * moe_active
        return cls(
            total_params=int(total), active_params=int(active), layers=layers,
            hidden_size=hidden, heads=heads, kv_heads=kv_heads if not kv_lora else heads,
            head_dim=head_dim, vocab_size=vocab, max_context=max_context,
            moe_experts=experts, experts_per_token=k if experts else 0,
            kv_lora_rank=kv_lora, qk_rope_head_dim=rope_dim,
            name=name or str(cfg.get("_name_or_path") or cfg.get("model_type") or ""),
        )


def _mla_attention_params(
    cfg: Mapping[str, Any], hidden: int, heads: int, kv_lora: int, rope_dim: int
) -> int:
    """Parameters of one DeepSeek MLA attention block."""
    nope = int(cfg.get("qk_nope_head_dim") or 128)
    v_dim = int(cfg.get("v_head_dim") or nope)
    q_lora = int(cfg.get("q_lora_rank") or 0)
    qk = heads * (nope + rope_dim)
    q = hidden * q_lora + q_lora + q_lora * qk if q_lora else hidden * qk
    kv = hidden * (kv_lora + rope_dim) + kv_lora + kv_lora * heads * (nope + v_dim)
    return q + kv + heads * v_dim * hidden


def _moe_params(cfg: Mapping[str, Any], hidden: int, layers: int) -> tuple[int, int, int, int, int]:
    """Return (experts, experts_per_token, params per MoE layer, active per MoE layer, MoE layers)."""
    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts")
                  or cfg.get("num_experts") or 0)
    if not experts:
        return 0, 0, 0, 0, 0
    k = int(cfg.get("num_experts_per_tok") or cfg.get("num_experts_per_token") or 2)
    moe_inter = int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 4 * hidden)
    shared_inter = int(cfg.get("shared_expert_intermediate_size") or 0)
    shared_inter += int(cfg.get("n_shared_experts") or 0) * moe_inter
    expert = 3 * hidden * moe_inter
    shared = 3 * hidden * shared_inter + (hidden if cfg.get("shared_expert_intermediate_size") else 0)
    router = hidden * experts
    first_dense = int(cfg.get("first_k_dense_replace") or 0)
    step = int(cfg.get("moe_layer_freq") or cfg.get("decoder_sparse_step") or 1)
    only_dense = set(cfg.get("mlp_only_layers") or ())
    moe_layers = sum(
        1 for i in range(layers) if i >= first_dense and i % step == 0 and i not in only_dense
    )
    total = experts * expert + shared + router
    active = k * expert + shared + router
    return experts, k, total, active, moe_layers
