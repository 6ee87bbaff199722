"""The built-in tiny models: their names and ``config.json`` (no torch).

:mod:`deepserve.engine.tiny` writes checkpoints from :func:`tiny_config`; the planner sizes
``builtin://`` models from :func:`builtin_config`, and admission can check a
``builtin://<name>`` source against :data:`BUILTIN_MODELS` — one list for all three.
"""

from __future__ import annotations

from typing import Any

TINY_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "deepseek_v3")
TINY_VOCAB_SIZE = 512
"""Vocabulary of the tokenizer trained for tiny models (ids 0 and 1 are BOS and EOS)."""
TINY_BOS_ID, TINY_EOS_ID = 0, 1

BUILTIN_MODELS: dict[str, str] = {"tiny-llama": "llama", "tiny-qwen2": "qwen2",
                                  "tiny-deepseek-v3": "deepseek_v3",
                                  "tiny-deepseek_v3": "deepseek_v3", "tiny-chat": "llama"}
"""``builtin://<name>`` -> architecture of the tiny checkpoint the engine creates."""
TINY_CHAT_SHAPE: dict[str, Any] = {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
                                   "max_position_embeddings": 512}
"""``builtin://tiny-chat`` is a llama of this shape, trained at creation (engine.tiny_chat)."""


def tiny_config(architecture: str, vocab_size: int = TINY_VOCAB_SIZE, bos_id: int = TINY_BOS_ID,
                eos_id: int = TINY_EOS_ID) -> dict[str, Any]:
    """Return a small ``config.json`` dict for ``architecture`` (HF key names)."""
    base: dict[str, Any] = {
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
        "initializer_range": 0.02, "use_cache": True,
    }
    if architecture == "llama":
        return {**base, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "head_dim": 16, "rope_theta": 10000.0, "attention_bias": False,
                "mlp_bias": False, "tie_word_embeddings": False}
    if architecture == "qwen2":
        return {**base, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "rope_theta": 1000000.0, "tie_word_embeddings": True,
                "use_sliding_window": False, "sliding_window": None}
    if architecture == "deepseek_v3":
        return {**base, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 32,
                "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
                "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
                "n_shared_experts": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1,
                "n_group": 2, "topk_group": 1, "norm_topk_prob": True,
                "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
                "rope_theta": 10000.0, "rope_interleave": True, "attention_bias": False,
                "tie_word_embeddings": False, "num_nextn_predict_layers": 0}
    raise ValueError(f"architecture must be one of {TINY_ARCHITECTURES}, got {architecture!r}")


def builtin_config(name: str) -> dict[str, Any]:
    """``config.json`` of ``builtin://<name>``; ValueError naming the known names otherwise."""
    arch = BUILTIN_MODELS.get(name)
    if arch is None:
        raise ValueError(f"unknown built-in model {name!r}; known: {', '.join(sorted(BUILTIN_MODELS))}")
    return {**tiny_config(arch), **(TINY_CHAT_SHAPE if name == "tiny-chat" else {})}
