"""The flash-decoding kernel equals plain attention, dense and over HAG's selected rows.

On CPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which executes
the same kernel source with numpy; ``test_gpu.py`` checks the compiled kernel on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import decode_step, prefill, prefill_batch
from deepserve.engine.kernels import (
    decode_attention,
    decode_attention_reference,
    decode_attention_supported,
    indexer_scores,
    indexer_scores_reference,
    indexer_scores_supported,
)
from deepserve.engine.kernels import flash_decode as kernel_module
from deepserve.engine.model.attention import GroupedQueryAttention
from deepserve.engine.model.layers import GatedMLP
from deepserve.engine.options import SparseAttentionOptions
from deepserve.engine.sparse import apply_sparse_attention
from deepserve.engine.sparse.attention import gathered_attention

triton = pytest.importorskip("triton", reason="the kernels are written in Triton")


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the Triton kernels on CPU through the interpreter for one test."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported without TRITON_INTERPRET=1 (tests/unit/conftest.py)")
    monkeypatch.setattr(kernel_module, "RUN_ON_CPU", True)
    yield


def _qkv(bsz: int, heads: int, kv_heads: int, rows: int, dim: int, dtype: torch.dtype,
         seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, heads, dim, generator=gen).to(dtype)
    k = torch.randn(bsz, kv_heads, rows, dim, generator=gen).to(dtype)
    v = torch.randn(bsz, kv_heads, rows, dim, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize(("bsz", "heads", "kv_heads", "rows", "dim", "dtype", "tol"), [
    (3, 8, 2, 150, 64, torch.float32, 1e-5),   # GQA group 4, three splits of 64 rows
    (2, 4, 4, 70, 32, torch.float16, 2e-3),    # MHA, half precision
    (1, 32, 8, 1000, 128, torch.float32, 1e-5),  # Llama-8B head layout, many splits
    (2, 6, 1, 90, 48, torch.float32, 1e-5),    # MQA, head size not a power of two
])
def test_dense_kernel_equals_reference(interpret: None, bsz: int, heads: int, kv_heads: int,
                                       rows: int, dim: int, dtype: torch.dtype, tol: float) -> None:
    q, k, v = _qkv(bsz, heads, kv_heads, rows, dim, dtype, seed=rows)
    assert decode_attention_supported(q, k, v)
    lengths = torch.tensor([1, rows, rows // 2 + 3][:bsz])
    out = decode_attention(q, k, v, lengths, dim**-0.5)
    ref = decode_attention_reference(q, k, v, lengths, dim**-0.5)
    assert out.shape == (bsz, heads, dim) and out.dtype == dtype
    assert (out.float() - ref.float()).abs().max().item() < tol
    # rows past a sequence's length are never read: poisoning them changes nothing
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(lengths.tolist()):
        k2[b, :, n:] = float("nan")
        v2[b, :, n:] = float("nan")
    assert torch.equal(decode_attention(q, k2, v2, lengths, dim**-0.5), out)


def test_sparse_kernel_reads_only_selected_rows(interpret: None) -> None:
    q, k, v = _qkv(2, 8, 2, 300, 64, torch.float32, seed=5)
    gen = torch.Generator().manual_seed(6)
    index = torch.stack([torch.randperm(300, generator=gen)[:90] for _ in range(2)])
    valid = torch.rand(2, 90, generator=gen) > 0.25
    valid[:, 0] = True
    out = decode_attention(q, k, v, None, 0.125, index=index, valid=valid)
    ref = decode_attention_reference(q, k, v, None, 0.125, index=index, valid=valid)
    assert (out - ref).abs().max().item() < 1e-5
    # the engine's gathered path (copies the rows) agrees too
    gathered = gathered_attention(q[:, :, None], k, v, index[:, None], valid[:, None], 0.125)
    assert (out - gathered[:, :, 0]).abs().max().item() < 1e-5
    picked = torch.zeros(2, 300, dtype=torch.bool)
    picked.scatter_(1, index, valid)
    k[~picked[:, None, :].expand_as(k[..., 0])] = float("nan")
    v[~picked[:, None, :].expand_as(v[..., 0])] = float("nan")
    assert torch.equal(decode_attention(q, k, v, None, 0.125, index=index, valid=valid), out)


def test_unsupported_shapes_are_declined() -> None:
    q, k, v = _qkv(1, 128, 1, 16, 576, torch.float32, seed=1)  # MLA latent keys
    assert not decode_attention_supported(q, k, v)
    q, k, v = _qkv(1, 4, 2, 16, 64, torch.float32, seed=1)
    assert not decode_attention_supported(q, k, v)  # CPU without the interpreter
    with pytest.raises(ValueError, match="lengths"):
        decode_attention(q, k, v, None, 1.0)


def test_model_decode_with_kernel_equals_sdpa(interpret: None, tiny_model_dirs: dict[str, Path]) -> None:
    """A decode step through the kernel gives the logits of the masked-SDPA path."""
    model = load_transformer(tiny_model_dirs["llama"], device="cpu", dtype=torch.float32)
    model.setup_caches(3, 64)
    prompts = [torch.arange(5, 5 + n) % 200 for n in (7, 12, 3)]
    for slot, prompt in enumerate(prompts):
        prefill(model, prompt, slot)
    tokens = torch.tensor([11, 12, 13])
    positions = torch.tensor([7, 12, 3])
    with torch.no_grad():
        fast = decode_step(model, tokens, positions)
    kernel_module.RUN_ON_CPU = False  # now the kernel is declined on CPU: masked SDPA
    with torch.no_grad():
        slow = decode_step(model, tokens, positions)
    assert (fast - slow).abs().max().item() < 1e-4


def test_fused_projections_keep_logits(tiny_model_dirs: dict[str, Path]) -> None:
    model = load_transformer(tiny_model_dirs["llama"], device="cpu", dtype=torch.float32)
    model.setup_caches(1, 32)
    tokens = torch.arange(10, 30)
    before = prefill(model, tokens, 0)
    assert model.fuse_projections() == 2 * model.args.num_layers
    attn = model.model.layers[0].self_attn
    mlp = model.model.layers[0].mlp
    assert isinstance(attn, GroupedQueryAttention) and attn.qkv_proj is not None
    assert isinstance(mlp, GatedMLP) and mlp.gate_up_proj is not None
    assert not hasattr(attn, "q_proj") and not hasattr(mlp, "gate_proj")
    after = prefill(model, tokens, 0)
    assert (before - after).abs().max().item() < 1e-4
    assert model.fuse_projections() == 0  # already fused: nothing to do


def test_batched_prefill_equals_one_at_a_time(tiny_model_dirs: dict[str, Path]) -> None:
    """Right-padded batched prefill: same last logits and the same decode continuation."""
    model = load_transformer(tiny_model_dirs["llama"], device="cpu", dtype=torch.float32)
    prompts = [torch.arange(3, 3 + n) % 200 for n in (9, 4, 15)]
    model.setup_caches(3, 48)
    one = torch.stack([prefill(model, p, slot) for slot, p in enumerate(prompts)])
    step_one = decode_step(model, one.argmax(-1), torch.tensor([9, 4, 15]))
    model.setup_caches(3, 48)
    many = prefill_batch(model, prompts, [0, 1, 2])
    assert (one - many).abs().max().item() < 1e-4
    step_many = decode_step(model, many.argmax(-1), torch.tensor([9, 4, 15]))
    assert (step_one - step_many).abs().max().item() < 1e-4


def test_sparse_decode_through_kernel_equals_gathered(interpret: None,
                                                      tiny_model_dirs: dict[str, Path]) -> None:
    """HAG decode with the kernel gives the gathered path's logits (same selection)."""
    model = load_transformer(tiny_model_dirs["llama"], device="cpu", dtype=torch.float32)
    handle = apply_sparse_attention(model, SparseAttentionOptions(True, top_k=4, sinks=1,
                                                                  local_window=2))
    model.setup_caches(2, 40)
    from deepserve.engine.sparse import allocate_indexer_caches
    allocate_indexer_caches(model)
    for slot, n in enumerate((20, 25)):
        prefill(model, torch.arange(1, 1 + n), slot)
    tokens, positions = torch.tensor([3, 4]), torch.tensor([20, 25])
    with torch.no_grad():
        fast = decode_step(model, tokens, positions)
    assert handle.stats()["sparse_calls"] > 0
    kernel_module.RUN_ON_CPU = False
    with torch.no_grad():
        slow = decode_step(model, tokens, positions)
    assert (fast - slow).abs().max().item() < 1e-4


@pytest.mark.parametrize(("heads", "dim", "dtype", "tol"), [
    (4, 64, torch.float32, 1e-4), (64, 128, torch.float16, 5e-2), (3, 40, torch.float32, 1e-4)])
def test_indexer_scores_kernel_equals_reference(interpret: None, heads: int, dim: int,
                                                dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(heads)
    q = torch.randn(2, heads, dim, generator=gen).to(dtype)
    weights = torch.randn(2, heads, generator=gen)
    keys = torch.randn(2, 300, dim, generator=gen).to(dtype)
    assert indexer_scores_supported(q, keys)
    out = indexer_scores(q, weights, keys)
    ref = indexer_scores_reference(q, weights, keys)
    assert out.shape == (2, 300) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() < tol * ref.abs().max().item()


def test_indexer_module_scores_use_the_kernel_for_decode(interpret: None,
                                                         tiny_model_dirs: dict[str, Path]) -> None:
    """LightningIndexer.scores gives the same scores through the kernel as through einsum."""
    from deepserve.engine.sparse.indexer import IndexerConfig, LightningIndexer
    model = load_transformer(tiny_model_dirs["llama"], device="cpu", dtype=torch.float32)
    indexer = LightningIndexer(model.args, IndexerConfig.for_model(model.args))
    gen = torch.Generator().manual_seed(0)
    for p in indexer.parameters():
        p.data.normal_(generator=gen)
    x = torch.randn(3, 1, model.args.hidden_size, generator=gen)
    keys = torch.randn(3, 50, indexer.config.head_dim, generator=gen)
    rope_dim = model.args.head_dim
    cos, sin = torch.ones(3, 1, rope_dim), torch.zeros(3, 1, rope_dim)
    with torch.no_grad():
        fast = indexer.scores(x, x, keys, cos, sin)
        kernel_module.RUN_ON_CPU = False
        slow = indexer.scores(x, x, keys, cos, sin)
    assert fast.shape == slow.shape == (3, 1, 50)
    assert (fast - slow).abs().max().item() < 1e-4 * slow.abs().max().item()


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_fp8_weight_gemv_kernel_equals_dequantised_product(interpret: None, rows: int) -> None:
    from deepserve.engine.kernels.fp8_gemm import (
        fp8_weight_gemv,
        fp8_weight_gemv_supported,
        quantize_rows_supported,
    )
    from deepserve.engine.precision import quantize_weight
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 200, generator=gen)
    weight = quantize_weight(torch.randn(90, 200, generator=gen) / 14)
    assert fp8_weight_gemv_supported(x, weight.data)
    out = fp8_weight_gemv(x, weight.data, weight.scale)
    ref = x @ weight.dequantize().t()
    assert out.shape == (rows, 90)
    assert (out - ref).abs().max().item() < 1e-4 * ref.abs().max().item() + 1e-5
    assert not fp8_weight_gemv_supported(torch.randn(17, 200), weight.data)  # prefill-sized: no
    assert not quantize_rows_supported(torch.randn(4, 64))  # CPU: the PyTorch path quantises
