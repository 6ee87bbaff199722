"""Prefix cache: a hit skips prefill compute with the same logits; memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import prefill
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import SparseAttentionOptions
from deepserve.engine.prefix_cache import PrefixCache, block_keys, cache_buffers
from deepserve.engine.sparse import apply_sparse_attention

pytestmark = pytest.mark.unit


def _model(path: Path) -> Transformer:
    model = load_transformer(path)
    model.setup_caches(3, 128)
    return model


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class _TokenCounter:
    """Counts tokens that go through the embedding (prefill compute)."""

    def __init__(self, model: Transformer) -> None:
        self.tokens = 0
        model.model.embed_tokens.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[torch.Tensor], out: torch.Tensor) -> None:
        self.tokens += args[0].numel()


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
def test_hit_skips_prefill_and_gives_the_same_logits(tiny_model_dirs: dict[str, Path], arch: str) -> None:
    model = _model(tiny_model_dirs[arch])
    cache = PrefixCache(model, device_bytes=1 << 20, block_tokens=16)
    counter = _TokenCounter(model)
    ids = _ids(70, 0)
    with torch.inference_mode():
        full = prefill(model, torch.tensor(ids), 0)
        cache.store(0, ids)
        # what the cache replaces: the same 64-token prefix computed, then the rest
        prefill(model, torch.tensor(ids[:64]), 2)
        chunked = prefill(model, torch.tensor(ids[64:]), 2, start_pos=64)
        counter.tokens = 0
        reused = cache.restore(1, ids)
        hit = prefill(model, torch.tensor(ids[reused:]), 1, start_pos=reused)
    assert reused == 64 and counter.tokens == 6
    assert torch.equal(hit, chunked)  # restored rows are bit-identical copies
    torch.testing.assert_close(hit, full, rtol=1e-5, atol=1e-5)
    stats = cache.as_dict()
    assert stats["hits"] == 1 and stats["reused_tokens"] == 64 and stats["computed_tokens"] == 6


def test_a_different_prefix_misses_and_keys_chain_over_the_whole_prefix() -> None:
    a, b = _ids(48, 1), _ids(48, 1)
    b[0] += 1  # differs only in the first block
    ka, kb = block_keys(a, 16), block_keys(b, 16)
    assert len(ka) == 3 and all(x != y for x, y in zip(ka, kb, strict=True))
    assert block_keys(a, 16, salt="other-model")[0] != ka[0]


def test_budgets_spill_to_host_then_evict_lru(tiny_model_dirs: dict[str, Path]) -> None:
    model = _model(tiny_model_dirs["llama"])
    block_bytes = sum(b[0, :, :16].numel() * b.element_size()
                      for b in cache_buffers(model, 3, 128))
    cache = PrefixCache(model, device_bytes=4 * block_bytes, host_bytes=4 * block_bytes,
                        block_tokens=16)
    prompts = [_ids(65, seed) for seed in range(4)]  # 4 blocks each
    with torch.inference_mode():
        for ids in prompts:
            prefill(model, torch.tensor(ids), 0)
            cache.store(0, ids)
            s = cache.as_dict()
            assert s["device_bytes"] <= 4 * block_bytes and s["host_bytes"] <= 4 * block_bytes
    s = cache.as_dict()
    assert s["stored_blocks"] == 16 and s["spills"] == 12 and s["evictions"] == 8
    # the newest prompt is on the device, the one before on the host, the oldest are gone
    assert cache.restore(1, prompts[3]) == 64 and cache.restore(1, prompts[2]) == 64
    assert cache.as_dict()["promotions"] == 4
    assert cache.restore(1, prompts[0]) == 0 and cache.as_dict()["misses"] == 1


def test_host_spilled_blocks_restore_the_same_logits(tiny_model_dirs: dict[str, Path]) -> None:
    model = _model(tiny_model_dirs["llama"])
    cache = PrefixCache(model, device_bytes=0, host_bytes=1 << 20, block_tokens=8)
    ids = _ids(41, 5)
    with torch.inference_mode():
        prefill(model, torch.tensor(ids[:40]), 2)
        chunked = prefill(model, torch.tensor(ids[40:]), 2, start_pos=40)
        prefill(model, torch.tensor(ids), 0)
        cache.store(0, ids)
        reused = cache.restore(1, ids)
        hit = prefill(model, torch.tensor(ids[reused:]), 1, start_pos=reused)
    assert reused == 40 and cache.as_dict()["host_blocks"] == 5
    assert torch.equal(hit, chunked)


def test_indexer_keys_are_cached_with_the_prefix(tiny_model_dirs: dict[str, Path]) -> None:
    model = _model(tiny_model_dirs["llama"])
    apply_sparse_attention(model, SparseAttentionOptions(True, top_k=4, sinks=1, local_window=4))
    n_buffers = len(cache_buffers(model, 3, 128))
    assert n_buffers == 3 * model.args.num_layers  # k, v and indexer keys per layer
    cache = PrefixCache(model, device_bytes=1 << 20, block_tokens=16)
    ids = _ids(50, 6)
    with torch.inference_mode():
        prefill(model, torch.tensor(ids[:48]), 2)
        chunked = prefill(model, torch.tensor(ids[48:]), 2, start_pos=48)
        prefill(model, torch.tensor(ids), 0)
        cache.store(0, ids)
        reused = cache.restore(1, ids)
        hit = prefill(model, torch.tensor(ids[reused:]), 1, start_pos=reused)
    assert reused == 48 and torch.equal(hit, chunked)
