"""The runtime with its features switched on from EngineOptions: counters and per-request precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepserve.engine.build import build_engine
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.options import EngineOptions, SparseAttentionOptions
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.sparse import indexer_state_dict
from deepserve.engine.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.unit

PROMPT = ("The quick brown fox jumps over the lazy dog while the small cat watches the "
          "garden and the birds sing in the tall trees near the river bank")
GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


def _options(path: Path, **kw: object) -> EngineOptions:
    return EngineOptions(model_dir=str(path), device="cpu", max_batch_size=2, max_input_tokens=96,
                         max_new_tokens_limit=16, **kw)  # type: ignore[arg-type]


def test_everything_off_by_default_reports_the_load_precision(tiny_model_dirs: dict[str, Path]) -> None:
    engine = build_engine(_options(tiny_model_dirs["llama"], precision="fp32"))
    result = engine.generate([PROMPT], GREEDY)[0]
    assert result.precision == "fp32" and result.reused_prompt_tokens == 0
    assert set(engine.feature_stats()) == {"precision", "tensor_parallel"}


def test_prefix_cache_reuses_a_repeated_prompt_with_the_same_output(
        tiny_model_dirs: dict[str, Path]) -> None:
    engine = build_engine(_options(tiny_model_dirs["llama"], precision="fp32", prefix_cache_mib=4,
                                   host_cache_mib=4))
    first = engine.generate([PROMPT], GREEDY)[0]
    second = engine.generate([PROMPT], GREEDY)[0]
    assert first.reused_prompt_tokens == 0 and second.reused_prompt_tokens >= 16
    assert second.token_ids == first.token_ids
    stats = engine.feature_stats()["prefix_cache"]
    assert stats["hits"] == 1 and stats["misses"] == 1  # type: ignore[index]


def test_sparse_attention_switch_counts_kv_reads_and_matches_dense_when_k_covers(
        tiny_model_dirs: dict[str, Path]) -> None:
    dense = build_engine(_options(tiny_model_dirs["llama"], precision="fp32"))
    covering = build_engine(_options(tiny_model_dirs["llama"], precision="fp32",
                                     sparse_attention=SparseAttentionOptions(True, top_k=128)))
    small = build_engine(_options(tiny_model_dirs["llama"], precision="fp32",
                                  sparse_attention=SparseAttentionOptions(True, top_k=4, sinks=1,
                                                                          local_window=4)))
    expected = dense.generate([PROMPT], GREEDY)[0].token_ids
    assert covering.generate([PROMPT], GREEDY)[0].token_ids == expected
    small.generate([PROMPT], GREEDY)
    stats = small.feature_stats()["sparse_attention"]
    assert 0 < stats["kv_entries_read"] < stats["kv_entries_dense"]  # type: ignore[index]


def test_adaptive_precision_reports_the_precision_of_each_request(
        tiny_model_dirs: dict[str, Path]) -> None:
    engine = build_engine(_options(tiny_model_dirs["llama"], precision="auto"))
    results = engine.generate([PROMPT, "A short one"], GREEDY)
    aps = engine.feature_stats()["adaptive_precision"]
    assert set(aps["calibrated_error"]) == {"fp32", "fp16", "bf16"}  # type: ignore[index]
    for r in results:
        assert r.precision in {"fp32", "fp16", "bf16"}
    assert sum(aps["served"].values()) == 2  # type: ignore[index]


def test_fp8_precision_serves_in_fp8_on_the_reference_path(tiny_model_dirs: dict[str, Path]) -> None:
    engine = build_engine(_options(tiny_model_dirs["deepseek_v3"], precision="fp8"))
    result = engine.generate([PROMPT], GREEDY)[0]
    assert result.precision == "fp8" and result.generated_tokens == 8


def test_deepseek_v32_checkpoint_serves_with_its_own_indexer(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "v32", "deepseek_v3", seed=5, config_overrides={
        "architectures": ["DeepseekV32ForCausalLM"], "index_n_heads": 2, "index_head_dim": 32,
        "index_topk": 8})
    args = ModelArgs.from_hf_config(json.loads((path / "config.json").read_text()))
    gen = torch.Generator().manual_seed(9)
    indexer = {}
    for layer in range(args.num_layers):  # DeepSeek-V3.2 tensor names and shapes
        prefix = f"model.layers.{layer}.self_attn.indexer."
        indexer[prefix + "wq_b.weight"] = torch.randn(2 * 32, args.q_lora_rank, generator=gen)
        indexer[prefix + "wk.weight"] = torch.randn(32, args.hidden_size, generator=gen)
        indexer[prefix + "k_norm.weight"] = torch.ones(32)
        indexer[prefix + "k_norm.bias"] = torch.zeros(32)
        indexer[prefix + "weights_proj.weight"] = torch.randn(2, args.hidden_size, generator=gen)
    weights = load_file(str(path / "model.safetensors"))
    save_file({**weights, **indexer}, str(path / "model.safetensors"), metadata={"format": "pt"})

    engine = build_engine(_options(path, precision="fp32", sparse_attention=SparseAttentionOptions(
        True, top_k=8, sinks=2, local_window=4)))
    loaded = indexer_state_dict(engine.model)
    assert set(loaded) == set(indexer)
    assert all(torch.equal(loaded[name], value) for name, value in indexer.items())  # not distilled
    engine.generate([PROMPT], GREEDY)
    assert engine.feature_stats()["sparse_attention"]["sparse_calls"] > 0  # type: ignore[index]
