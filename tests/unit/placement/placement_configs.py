"""Real Hugging Face config.json excerpts used by the placement tests."""

LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
             "vocab_size": 128256, "max_position_embeddings": 131072,
             "tie_word_embeddings": False}
LLAMA3_3B = {"model_type": "llama", "hidden_size": 3072, "num_hidden_layers": 28,
             "num_attention_heads": 24, "num_key_value_heads": 8, "intermediate_size": 8192,
             "vocab_size": 128256, "max_position_embeddings": 131072,
             "tie_word_embeddings": True}  # Llama-3.2-3B
LLAMA3_70B = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672,
              "vocab_size": 128256, "max_position_embeddings": 131072}
MIXTRAL_8X7B = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2,
                "max_position_embeddings": 32768}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
               "num_attention_heads": 128, "num_key_value_heads": 128, "intermediate_size": 18432,
               "moe_intermediate_size": 2048, "vocab_size": 129280, "n_routed_experts": 256,
               "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
               "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": 1536,
               "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
               "max_position_embeddings": 163840}
QWEN3_30B_A3B = {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                 "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                 "num_experts_per_tok": 8, "vocab_size": 151936, "decoder_sparse_step": 1,
                 "mlp_only_layers": [], "tie_word_embeddings": False,
                 "max_position_embeddings": 40960}
