"""ModelShape from HF configs: parameter counts and KV-cache sizes users rely on."""

from __future__ import annotations

import pytest
from placement_configs import DEEPSEEK_V3, LLAMA3_8B, LLAMA3_70B, MIXTRAL_8X7B, QWEN3_30B_A3B

from deepserve.operator.placement import ModelShape, ShapeError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("cfg", "total_b", "active_b"), [
    (LLAMA3_8B, 8.03, 8.03),        # published: 8.03B
    (LLAMA3_70B, 70.55, 70.55),     # published: 70.6B
    (MIXTRAL_8X7B, 46.7, 12.9),     # published: 46.7B total, 12.9B active
    (DEEPSEEK_V3, 671.0, 37.0),     # published: 671B total, 37B active (MTP module excluded)
    (QWEN3_30B_A3B, 30.5, 3.3),     # published: 30.5B total, 3.3B active
])
def test_parameter_counts_match_published_sizes(cfg: dict, total_b: float, active_b: float) -> None:
    shape = ModelShape.from_hf_config(cfg)
    assert shape.total_params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert shape.active_params / 1e9 == pytest.approx(active_b, rel=0.03)


def test_gqa_kv_cache_per_token_and_its_sharding() -> None:
    shape = ModelShape.from_hf_config(LLAMA3_70B)
    assert shape.kv_bytes_per_token(2) == 2 * 80 * 8 * 128 * 2  # 320 KiB per token in bf16
    assert shape.kv_bytes_per_token(2, tensor_parallel=8) == 2 * 80 * 1 * 128 * 2
    # beyond the KV-head count each GPU still holds one (replicated) head
    assert shape.kv_bytes_per_token(2, 16) == shape.kv_bytes_per_token(2, 8)


def test_mla_latent_kv_is_small_and_replicated() -> None:
    shape = ModelShape.from_hf_config(DEEPSEEK_V3)
    assert shape.is_mla and shape.is_moe
    assert shape.kv_bytes_per_token(2) == 61 * (512 + 64) * 2
    assert shape.kv_bytes_per_token(2, 8) == shape.kv_bytes_per_token(2, 1)


def test_moe_decode_reads_more_experts_as_batch_grows() -> None:
    shape = ModelShape.from_hf_config(MIXTRAL_8X7B)
    one, many = shape.weights_read_per_step(1), shape.weights_read_per_step(64)
    assert one == pytest.approx(shape.active_params, rel=1e-6)
    assert many == pytest.approx(shape.total_params, rel=1e-3)


def test_multimodal_configs_use_text_config() -> None:
    shape = ModelShape.from_hf_config({"text_config": LLAMA3_8B, "vision_config": {}})
    assert shape.layers == 32


def test_missing_and_bad_fields_are_named() -> None:
    with pytest.raises(ShapeError, match="num_hidden_layers"):
        ModelShape.from_hf_config({"hidden_size": 10, "num_attention_heads": 2, "vocab_size": 5})
    with pytest.raises(ShapeError, match="kv_heads"):
        ModelShape(total_params=10, active_params=10, layers=1, hidden_size=8, heads=6,
                   kv_heads=4, head_dim=2, vocab_size=4, max_context=8)
