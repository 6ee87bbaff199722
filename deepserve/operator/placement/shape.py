"""The shape of a model as the planner sees it, read from a Hugging Face ``config.json``
by the serving contract's reader (:mod:`deepserve.engine.contract`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepserve.engine.contract.config import ModelArgs, ShapeError
from deepserve.engine.contract.memory import ParamCounts, param_counts

__all__ = ["ModelShape", "ShapeError"]


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
    linear_params: int = 0
    """Decoder linear weights (the engine keeps one copy per precision); 0 = estimate."""
    linear_rows: int = 0
    fp32_params: int = 0

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

    def param_counts(self) -> ParamCounts:
        """Parameters by storage class (a shape given by hand: all but embeddings are linear)."""
        if self.linear_params:
            return ParamCounts(self.total_params, self.active_params, self.linear_params,
                               self.linear_rows, self.fp32_params)
        linear = max(0, self.total_params - 2 * self.vocab_size * self.hidden_size)
        return ParamCounts(self.total_params, self.active_params, linear, 0, 0)

    @classmethod
    def from_args(cls, args: ModelArgs, name: str = "") -> ModelShape:
        """The shape of a model read by the serving contract's config reader."""
        counts = param_counts(args)
        return cls(
            total_params=counts.total, active_params=counts.active, layers=args.num_layers,
            hidden_size=args.hidden_size, heads=args.num_heads, kv_heads=args.num_kv_heads,
            head_dim=args.head_dim, vocab_size=args.vocab_size,
            max_context=args.max_position_embeddings,
            moe_experts=args.n_routed_experts, experts_per_token=args.num_experts_per_tok,
            kv_lora_rank=args.kv_lora_rank, qk_rope_head_dim=args.qk_rope_head_dim, name=name,
            linear_params=counts.linear, linear_rows=counts.linear_rows, fp32_params=counts.fp32,
        )

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str = "") -> ModelShape:
        """Build a shape from a Hugging Face ``config.json`` dict (Llama/Qwen/Mistral/Mixtral,
        Qwen-MoE, DeepSeek V2/V3 and multimodal configs with a ``text_config``).

        Reads it with the engine's reader (:meth:`ModelArgs.for_planning`); parameter counts
        come from :func:`~deepserve.engine.contract.memory.param_counts`. Raises ShapeError
        naming the missing or bad key.
        """
        args = ModelArgs.for_planning(config)
        cfg: Mapping[str, Any] = config.get("text_config") or config
        return cls.from_args(args, name or str(cfg.get("_name_or_path") or cfg.get("model_type") or ""))
