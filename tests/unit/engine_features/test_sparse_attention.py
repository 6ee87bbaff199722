"""HAG sparse attention: exact when the budget covers the context, fewer KV reads otherwise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import decode_step, prefill
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import SparseAttentionOptions
from deepserve.engine.sparse import (
    apply_sparse_attention,
    indexer_state_dict,
    load_indexer_weights,
    select_tokens,
)
from deepserve.engine.sparse.distill import attention_recall, distill_indexers

pytestmark = pytest.mark.unit
ARCHS = ("llama", "deepseek_v3")


def _model(path: Path, slots: int = 2, max_seq: int = 96) -> Transformer:
    model = load_transformer(path)
    model.setup_caches(slots, max_seq)
    return model


def _prompt(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(seed))


def _decode_run(model: Transformer, prompt: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Prefill slot 0 then decode ``steps`` greedy tokens; return every step's logits."""
    out = [prefill(model, prompt, 0)]
    pos = len(prompt)
    for _ in range(steps):
        token = int(out[-1].argmax())
        logits = decode_step(model, torch.tensor([token, 0]), torch.tensor([pos, 0]))
        out.append(logits[0])
        pos += 1
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_equals_dense_exactly_when_top_k_covers_the_context(
        tiny_model_dirs: dict[str, Path], arch: str) -> None:
    model = _model(tiny_model_dirs[arch])
    prompt = _prompt(60)
    with torch.inference_mode():
        dense = _decode_run(model, prompt, 5)
        handle = apply_sparse_attention(model, SparseAttentionOptions(True, top_k=66, sinks=2,
                                                                      local_window=4))
        sparse = _decode_run(model, prompt, 5)
    for d, s in zip(dense, sparse, strict=True):
        assert torch.equal(d, s)
    stats = handle.stats()
    assert stats["kv_entries_read"] == stats["kv_entries_dense"] > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_forced_sparse_kernels_match_dense_when_everything_is_selected(
        tiny_model_dirs: dict[str, Path], arch: str) -> None:
    """The gather (decode) and mask (prefill) kernels themselves equal dense attention."""
    model = _model(tiny_model_dirs[arch])
    prompt = _prompt(50, seed=1)
    with torch.inference_mode():
        dense = _decode_run(model, prompt, 4)
        handle = apply_sparse_attention(model, SparseAttentionOptions(True, top_k=64, sinks=0,
                                                                      local_window=0))
        handle.set_force_select(True)
        sparse = _decode_run(model, prompt, 4)
    assert handle.stats()["sparse_calls"] > 0
    for d, s in zip(dense, sparse, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_small_top_k_reads_fewer_kv_entries_and_counts_them(
        tiny_model_dirs: dict[str, Path], arch: str) -> None:
    model = _model(tiny_model_dirs[arch])
    opts = SparseAttentionOptions(True, top_k=8, sinks=2, local_window=6)
    handle = apply_sparse_attention(model, opts)
    prompt = _prompt(80, seed=2)
    with torch.inference_mode():
        prefill(model, prompt, 0)
        handle.counters.reset()
        decode_step(model, torch.tensor([5, 5]), torch.tensor([80, 0]))
    stats = handle.stats()
    layers = model.args.num_layers
    # slot 0 attends 81 tokens but reads at most 16; idle slot 1 reads its one token
    assert stats["kv_entries_dense"] == layers * (81 + 1)
    assert stats["kv_entries_read"] == layers * (16 + 1)
    assert stats["read_fraction"] < 0.25


def test_selection_always_keeps_sinks_and_the_local_window() -> None:
    seq = 40
    scores = torch.zeros(1, 1, seq)
    scores[0, 0, 10] = 5.0  # the indexer's favourite
    positions = torch.tensor([[30]])
    valid = (torch.arange(seq) <= 30).view(1, 1, -1)
    index, chosen = select_tokens(scores, valid, positions, top_k=1, sinks=2, local_window=3)
    picked = set(index[chosen].tolist())
    assert picked == {0, 1, 10, 28, 29, 30}


def test_checkpoint_indexer_weights_load_under_deepseek_v32_names(
        tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    source = _model(tiny_model_dirs["deepseek_v3"])
    apply_sparse_attention(source, SparseAttentionOptions(True, top_k=4))
    tensors = {k: v.clone() for k, v in indexer_state_dict(source).items()}
    assert any(".self_attn.indexer.wq_b.weight" in k for k in tensors)
    assert any(".self_attn.indexer.k_norm.bias" in k for k in tensors)
    save_file(tensors, str(tmp_path / "model-indexer.safetensors"))
    target = _model(tiny_model_dirs["deepseek_v3"])
    assert load_indexer_weights(target, tmp_path) == target.args.num_layers
    for name, value in indexer_state_dict(target).items():
        assert torch.equal(value, tensors[name])


def test_distillation_lowers_kl_and_improves_sparse_fidelity(tiny_model_dirs: dict[str, Path]) -> None:
    model = load_transformer(tiny_model_dirs["llama"])
    held_out = torch.stack([_prompt(64, seed=100 + i) for i in range(2)])
    before = attention_recall(model, held_out, top_k=8, sinks=1, local_window=4)  # random indexers
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randint(3, 500, (2, 64), generator=gen) for _ in range(40)]
    report = distill_indexers(model, batches, lr=1e-2)
    assert report.steps == 40 and math.isfinite(report.last_kl)
    assert report.last_kl < 0.8 * report.first_kl
    after = attention_recall(model, held_out, top_k=8, sinks=1, local_window=4)
    assert after > before, (before, after)


def test_sync_free_mode_matches_the_synced_mode(tiny_model_dirs: dict[str, Path]) -> None:
    """Without the host sync the sparse kernels run below the budget too: same result."""
    model = _model(tiny_model_dirs["llama"])
    prompt = _prompt(40, seed=3)
    handle = apply_sparse_attention(model, SparseAttentionOptions(True, top_k=50, sinks=2,
                                                                  local_window=4))
    with torch.inference_mode():
        synced = _decode_run(model, prompt, 3)
        handle.set_sync_free(True)
        free = _decode_run(model, prompt, 3)
    assert handle.stats()["sparse_calls"] > 0  # cache length 96 > budget 56: sparse kernels
    for a, b in zip(synced, free, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
