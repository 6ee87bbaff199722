"""One reader of Hugging Face ``config.json`` for the engine and the planner (no torch).

:meth:`ModelArgs.from_hf_config` is the engine's strict reading: the architecture comes from
``architectures`` (or ``model_type``), and anything the engine does not implement raises
:class:`UnsupportedModelError` with the reason. :meth:`ModelArgs.for_planning` reads the same
keys with the same defaults but accepts architectures the engine does not run (Mixtral,
Qwen-MoE, multimodal configs with a ``text_config``), so the planner can size them. Missing
or non-positive sizes raise :class:`ShapeError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV32ForCausalLM": "deepseek_v3",  # V3 plus indexer tensors (engine.sparse)
}
_MODEL_TYPES = {v: v for v in ARCHITECTURES.values()}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class ShapeError(ValueError):
    """A model shape or config is unusable; the message names the field."""


class UnsupportedModelError(ShapeError):
    """The checkpoint's architecture or one of its features is not supported by the engine."""


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
    # MoE; n_routed_experts == 0 means dense MLP everywhere
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    n_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    moe_layer_freq: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    shared_expert_intermediate_size: int = 0  # Qwen-MoE's gated shared expert
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention (compressed latent KV cache)."""
        return self.kv_lora_rank > 0

    def is_moe_layer(self, layer: int) -> bool:
        """True when ``layer`` uses routed experts instead of a dense MLP."""
        return (self.n_routed_experts > 0 and layer >= self.first_k_dense_replace
                and layer % self.moe_layer_freq == 0 and layer not in self.mlp_only_layers)

    @property
    def rope_dim(self) -> int:
        """Width of the rotary part of a key (the rotary tables' width)."""
        return self.qk_rope_head_dim if self.is_mla else self.head_dim

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelArgs:
        """The engine's reading of a Hugging Face ``config.json`` dict.

        Raises :class:`UnsupportedModelError` for unknown architectures or features this
        engine does not implement (rather than serving wrong tokens), :class:`ShapeError`
        for missing or non-positive sizes.
        """
        return _parse(config, strict=True)

    @classmethod
    def for_planning(cls, config: Mapping[str, Any]) -> ModelArgs:
        """The same reading without the engine's support checks (for sizing any model)."""
        return _parse(config, strict=False)


def _architecture(config: Mapping[str, Any], strict: bool) -> str:
    archs = config.get("architectures") or []
    for name in archs:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    if not archs and config.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[config["model_type"]]
    if not strict:
        return str(config.get("model_type") or (archs[0] if archs else "unknown"))
    found = archs or [config.get("model_type")]
    raise UnsupportedModelError(
        f"architecture {found} is not supported; supported: {sorted(ARCHITECTURES)}"
    )


def _check_supported(config: Mapping[str, Any], arch: str) -> None:
    get = config.get
    if get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {get('hidden_act')!r} is not supported")
    if get("quantization_config"):
        raise UnsupportedModelError("quantized checkpoints (quantization_config) are not supported")
    if arch == "qwen2" and get("use_sliding_window", False):
        raise UnsupportedModelError("Qwen2 sliding-window attention is not supported")
    if arch == "deepseek_v3" and get("scoring_func", "sigmoid") != "sigmoid":
        raise UnsupportedModelError(f"DeepSeek scoring_func {get('scoring_func')!r} is not supported")


def _parse(config: Mapping[str, Any], strict: bool) -> ModelArgs:
    if not isinstance(config, Mapping):
        raise ShapeError("config.json must be a JSON object")
    arch = _architecture(config, strict)
    cfg: Mapping[str, Any] = config if strict else (config.get("text_config") or config)
    if strict:
        _check_supported(cfg, arch)
    get = cfg.get

    def req(key: str) -> int:
        if get(key) is None:
            raise ShapeError(f"config.json lacks {key!r}")
        return int(cfg[key])

    hidden, layers, heads, vocab = (req("hidden_size"), req("num_hidden_layers"),
                                    req("num_attention_heads"), req("vocab_size"))
    kv_raw = get("num_key_value_heads")
    kv_heads = heads if kv_raw is None else int(kv_raw)
    for key, value in (("hidden_size", hidden), ("num_hidden_layers", layers),
                       ("num_attention_heads", heads), ("num_key_value_heads", kv_heads),
                       ("vocab_size", vocab)):
        if value <= 0:
            raise ShapeError(f"config.json {key} must be > 0, got {value}")
    kv_lora = int(get("kv_lora_rank") or 0)
    rope_dim = int(get("qk_rope_head_dim") or 0) if kv_lora else 0
    nope = int(get("qk_nope_head_dim") or 0) if kv_lora else 0
    experts = int(get("n_routed_experts") or get("num_local_experts") or get("num_experts") or 0)
    if strict and arch != "deepseek_v3":
        experts = 0  # the engine routes experts only in the DeepSeek layout
    bias = bool(get("attention_bias", False))
    model_type = str(get("model_type") or "")
    eos = get("eos_token_id")
    eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else (
        (int(eos),) if eos is not None else ())
    return ModelArgs(
        architecture=arch, vocab_size=vocab, hidden_size=hidden,
        intermediate_size=int(get("intermediate_size") or 4 * hidden),
        num_layers=layers, num_heads=heads, num_kv_heads=heads if kv_lora else kv_heads,
        head_dim=(nope + rope_dim) if kv_lora else int(get("head_dim") or hidden // heads),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(get("max_position_embeddings") or 4096),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        qkv_bias=bias or arch == "qwen2" or model_type.startswith("qwen2"),
        o_bias=bias and arch != "qwen2", mlp_bias=bool(get("mlp_bias", False)) and arch == "llama",
        rope=_rope_args(cfg, strict),
        q_lora_rank=int(get("q_lora_rank") or 0) if kv_lora else 0,
        kv_lora_rank=kv_lora, qk_nope_head_dim=nope, qk_rope_head_dim=rope_dim,
        v_head_dim=int(get("v_head_dim") or nope) if kv_lora else 0,
        rope_interleave=bool(get("rope_interleave", True)),
        n_routed_experts=experts,
        num_experts_per_tok=int(get("num_experts_per_tok") or get("num_experts_per_token") or 2)
        if experts else 0,
        n_shared_experts=int(get("n_shared_experts") or 0) if experts else 0,
        moe_intermediate_size=int(get("moe_intermediate_size") or get("intermediate_size")
                                  or 4 * hidden) if experts else 0,
        first_k_dense_replace=int(get("first_k_dense_replace") or 0),
        n_group=int(get("n_group") or 1), topk_group=int(get("topk_group") or 1),
        norm_topk_prob=bool(get("norm_topk_prob", True)),
        routed_scaling_factor=float(get("routed_scaling_factor", 1.0)),
        moe_layer_freq=int(get("moe_layer_freq") or get("decoder_sparse_step") or 1),
        mlp_only_layers=tuple(int(i) for i in get("mlp_only_layers") or ()),
        shared_expert_intermediate_size=int(get("shared_expert_intermediate_size") or 0),
        bos_token_id=get("bos_token_id"), eos_token_ids=eos_ids,
    )


def _rope_args(config: Mapping[str, Any], strict: bool) -> RopeArgs:
    """Read RoPE settings from either ``rope_parameters`` (new) or ``rope_scaling`` (old)."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = str(merged.get("rope_type", merged.get("type", "default")))
    if rope_type not in ROPE_TYPES:
        if strict:
            raise UnsupportedModelError(f"rope_type {rope_type!r} is not supported")
        return RopeArgs(theta=theta)
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
