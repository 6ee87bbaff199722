"""What a model really holds in memory, counted from its :class:`ModelArgs` (no torch).

:func:`param_counts` counts the tensors the engine builds (embeddings, attention, MLP or
experts, norms, biases, the fp32 router) and sorts them by how they are stored: decoder
linear weights get one copy per precision in :func:`~.precision.weight_copies` (an fp8 copy
adds a float32 scale per output row), the MoE router stays float32, everything else is in
the master dtype. :func:`resident_weight_bytes`, :func:`kv_cache_bytes` and
:func:`rope_table_bytes` turn those counts into bytes; the planner and the engine's
allocation agree on them (tests/unit/placement/test_contract_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from deepserve.engine.contract.config import ModelArgs
from deepserve.engine.contract.precision import ELEMENT_BYTES, weight_copies

FP8_SCALE_BYTES = 4  # one float32 scale per output row (per-channel fp8)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by storage class; ``total``/``active`` count every weight."""

    total: int
    active: int
    linear: int  # decoder nn.Linear weights (copied per precision)
    linear_rows: int  # their output rows (one fp8 scale each)
    fp32: int  # MoE router weights and score biases (always float32)

    @property
    def master(self) -> int:
        """Parameters held once in the master dtype (embeddings, norms, biases, lm_head)."""
        return self.total - self.linear - self.fp32


@dataclass
class _Tally:
    linear: int = 0
    rows: int = 0
    other: int = 0
    fp32: int = 0

    def lin(self, fan_in: int, fan_out: int, bias: bool = False, count: int = 1) -> None:
        self.linear += count * fan_in * fan_out
        self.rows += count * fan_out
        self.other += count * fan_out if bias else 0


def _attention(a: ModelArgs, t: _Tally) -> None:
    d, h = a.hidden_size, a.num_heads
    if not a.is_mla:
        hd, kv = a.head_dim, a.num_kv_heads
        for out in (h * hd, kv * hd, kv * hd):
            t.lin(d, out, a.qkv_bias)
        t.lin(h * hd, d, a.o_bias)
        return
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    if a.q_lora_rank:
        t.lin(d, a.q_lora_rank, a.qkv_bias)
        t.other += a.q_lora_rank  # q_a_layernorm
        t.lin(a.q_lora_rank, h * qk)
    else:
        t.lin(d, h * qk)
    t.lin(d, a.kv_lora_rank + a.qk_rope_head_dim, a.qkv_bias)
    t.other += a.kv_lora_rank  # kv_a_layernorm
    t.lin(a.kv_lora_rank, h * (a.qk_nope_head_dim + a.v_head_dim))
    t.lin(h * a.v_head_dim, d, a.o_bias)


def _gated_mlp(t: _Tally, d: int, hidden: int, bias: bool = False, count: int = 1) -> None:
    t.lin(d, hidden, bias, 2 * count)
    t.lin(hidden, d, bias, count)


def param_counts(args: ModelArgs) -> ParamCounts:
    """Count ``args``' parameters the way the engine stores them (MTP modules excluded)."""
    a, d = args, args.hidden_size
    t = _Tally()
    routed = active_routed = 0
    for layer in range(a.num_layers):
        _attention(a, t)
        t.other += 2 * d  # input and post-attention norms
        if not a.is_moe_layer(layer):
            _gated_mlp(t, d, a.intermediate_size, a.mlp_bias)
            continue
        t.fp32 += a.n_routed_experts * d + (a.n_routed_experts if a.architecture == "deepseek_v3" else 0)
        _gated_mlp(t, d, a.moe_intermediate_size, count=a.n_routed_experts)
        expert = 3 * d * a.moe_intermediate_size
        routed += a.n_routed_experts * expert
        active_routed += a.num_experts_per_tok * expert
        shared = a.moe_intermediate_size * a.n_shared_experts + a.shared_expert_intermediate_size
        if shared:
            _gated_mlp(t, d, shared)
        if a.shared_expert_intermediate_size:
            t.lin(d, 1)  # Qwen-MoE shared-expert gate
    embed = a.vocab_size * d * (1 if a.tie_word_embeddings else 2)
    t.other += embed + d  # embeddings (+ lm_head) and the final norm
    total = t.linear + t.other + t.fp32
    return ParamCounts(total=total, active=total - routed + active_routed, linear=t.linear,
                       linear_rows=t.rows, fp32=t.fp32)


def resident_weight_bytes(counts: ParamCounts, policy: str, master: str, fp8_native: bool) -> float:
    """Bytes of weights the engine holds under ``policy`` (all copies, one GPU, no TP)."""
    copies = weight_copies(policy, master, fp8_native)
    linear = sum(counts.linear * ELEMENT_BYTES[p] for p in copies)
    if "fp8" in copies:
        linear += counts.linear_rows * FP8_SCALE_BYTES
    return float(linear + counts.master * ELEMENT_BYTES[master] + counts.fp32 * 4)


def kv_bytes_per_token(args: ModelArgs, master: str, tensor_parallel: int = 1) -> float:
    """KV-cache bytes one token occupies on one GPU (cache kept in the master dtype).

    GQA shards KV heads over the group (replicated once TP exceeds the KV-head count); MLA
    keeps one latent vector plus the rotary key per layer on every GPU.
    """
    size = ELEMENT_BYTES[master]
    if args.is_mla:
        return float(args.num_layers * (args.kv_lora_rank + args.qk_rope_head_dim) * size)
    heads = max(1, -(-args.num_kv_heads // tensor_parallel))
    return float(2 * args.num_layers * heads * args.head_dim * size)


def kv_cache_bytes(args: ModelArgs, master: str, slots: int, max_seq: int,
                   tensor_parallel: int = 1) -> float:
    """Bytes of the static KV cache for ``slots`` sequences of ``max_seq`` tokens."""
    return slots * max_seq * kv_bytes_per_token(args, master, tensor_parallel)


def rope_table_bytes(args: ModelArgs, master: str, max_seq: int) -> float:
    """Bytes of the rotary cos/sin tables (``[max_seq, rope_dim]`` each, master dtype)."""
    return float(2 * max_seq * args.rope_dim * ELEMENT_BYTES[master])
