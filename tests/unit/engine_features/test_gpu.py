"""Engine features on a real GPU: fp8 tensor-core matmuls, sparse attention and fp8 serving on CUDA."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import decode_step, prefill
from deepserve.engine.options import EngineOptions, SparseAttentionOptions
from deepserve.engine.precision import (
    fp8_hardware_support,
    fp8_linear,
    fp8_linear_reference,
    quantize_weight,
    relative_error,
)
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.sparse import apply_sparse_attention
from deepserve.engine.tiny import make_tiny_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]


def _replayed(step: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Warm ``step`` up on a side stream, capture it in a CUDA graph, replay once: its output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    return out


def test_scaled_mm_fp8_matches_the_reference_path() -> None:
    native, reason = fp8_hardware_support("cuda")
    if not native:
        pytest.skip(reason)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 256, device="cuda", generator=gen).bfloat16()
    w = quantize_weight(torch.randn(512, 256, device="cuda", generator=gen).bfloat16())
    fast = fp8_linear(x, w, use_scaled_mm=True)
    reference = fp8_linear_reference(x, w)
    assert relative_error(fast, reference) < 0.01  # same fp8 operands; bf16 output rounding
    # against the unquantised product: E4M3 activation and weight rounding (~2-3% each way)
    assert relative_error(fast, x.float() @ w.dequantize().t()) < 0.06


def test_sparse_equals_dense_on_cuda_when_k_covers_the_context(tmp_path: Path) -> None:
    model = load_transformer(make_tiny_checkpoint(tmp_path / "m", "deepseek_v3"), device="cuda",
                             dtype=torch.bfloat16)
    model.setup_caches(2, 96)
    prompt = torch.arange(3, 63)
    with torch.inference_mode():
        dense = [prefill(model, prompt, 0), decode_step(model, torch.tensor([5, 5], device="cuda"),
                                                        torch.tensor([60, 0], device="cuda"))]
        handle = apply_sparse_attention(model, SparseAttentionOptions(True, top_k=90))
        sparse = [prefill(model, prompt, 0), decode_step(model, torch.tensor([5, 5], device="cuda"),
                                                         torch.tensor([60, 0], device="cuda"))]
    for d, s in zip(dense, sparse, strict=True):
        assert torch.equal(d, s)
    assert handle.stats()["kv_entries_read"] > 0


def test_fp8_engine_serves_on_cuda_and_reports_fp8(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "m", "llama")
    engine = build_engine(EngineOptions(model_dir=str(path), device="cuda", precision="fp8",
                                        max_batch_size=2, max_input_tokens=32,
                                        max_new_tokens_limit=8))
    result = engine.generate(["The quick brown fox"], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    assert result.precision == "fp8" and result.generated_tokens == 8
    assert engine.features.precision_handle is not None
    assert engine.features.precision_handle.state.use_scaled_mm == fp8_hardware_support("cuda")[0]


def test_sync_free_sparse_decode_replays_from_a_cuda_graph(tmp_path: Path) -> None:
    model = load_transformer(make_tiny_checkpoint(tmp_path / "m", "llama"), device="cuda")
    model.setup_caches(2, 128)
    handle = apply_sparse_attention(model, SparseAttentionOptions(True, top_k=8, sinks=2,
                                                                  local_window=8))
    handle.set_sync_free(True)
    tokens = torch.tensor([5, 7], device="cuda")
    positions = torch.tensor([80, 40], device="cuda")
    with torch.inference_mode():
        prefill(model, torch.arange(3, 83), 0)
        prefill(model, torch.arange(3, 43), 1)
        eager = decode_step(model, tokens, positions)
        out = _replayed(lambda: decode_step(model, tokens, positions))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("bsz", "kv_heads", "rows"), [(1, 8, 4096), (16, 8, 1000), (3, 2, 70)])
def test_decode_kernel_on_cuda_equals_reference(bsz: int, kv_heads: int, rows: int) -> None:
    from deepserve.engine.kernels import (
        decode_attention,
        decode_attention_reference,
        decode_attention_supported,
    )
    gen = torch.Generator(device="cuda").manual_seed(rows)
    q = torch.randn(bsz, 32, 128, device="cuda", generator=gen).bfloat16()
    k = torch.randn(bsz, kv_heads, rows, 128, device="cuda", generator=gen).bfloat16()
    v = torch.randn(bsz, kv_heads, rows, 128, device="cuda", generator=gen).bfloat16()
    assert decode_attention_supported(q, k, v)
    lengths = torch.randint(1, rows + 1, (bsz,), device="cuda", generator=gen)
    out = decode_attention(q, k, v, lengths, 128**-0.5)
    ref = decode_attention_reference(q, k, v, lengths, 128**-0.5)
    assert (out.float() - ref.float()).abs().max().item() < 2e-2  # bf16 output rounding
    index = torch.randint(0, rows, (bsz, 300), device="cuda", generator=gen)
    valid = torch.rand(bsz, 300, device="cuda", generator=gen) > 0.2
    valid[:, 0] = True
    out = decode_attention(q, k, v, None, 128**-0.5, index=index, valid=valid)
    ref = decode_attention_reference(q, k, v, None, 128**-0.5, index=index, valid=valid)
    assert (out.float() - ref.float()).abs().max().item() < 2e-2


def test_kernel_decode_equals_sdpa_and_replays_from_a_cuda_graph(tmp_path: Path) -> None:
    from deepserve.engine.model.attention import dense_attention, sdpa_attention, set_attention_fn
    model = load_transformer(make_tiny_checkpoint(tmp_path / "m", "llama"), device="cuda")
    model.setup_caches(3, 256)
    tokens = torch.tensor([5, 7, 9], device="cuda")
    positions = torch.tensor([200, 40, 0], device="cuda")
    with torch.inference_mode():
        for slot, n in enumerate((200, 40)):
            prefill(model, torch.arange(3, 3 + n), slot)
        set_attention_fn(model, sdpa_attention)
        reference = decode_step(model, tokens, positions)
        set_attention_fn(model, dense_attention)
        model.fuse_projections()
        eager = decode_step(model, tokens, positions)
        out = _replayed(lambda: decode_step(model, tokens, positions))
    torch.testing.assert_close(eager, reference, rtol=1e-4, atol=1e-4)  # fp32 tiny model
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


def test_fp8_kernels_on_cuda_match_torch() -> None:
    from deepserve.engine.kernels.fp8_gemm import fp8_weight_gemv, quantize_rows
    from deepserve.engine.precision.fp8 import FP8_MAX
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(64, 4096, device="cuda", generator=gen).bfloat16()
    x[3] = 0
    xq, scale = quantize_rows(x)
    ref_scale = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    torch.testing.assert_close(scale, ref_scale)
    ref_q = (x.float() / ref_scale).to(torch.float8_e4m3fn)
    assert (xq.float() != ref_q.float()).float().mean().item() < 1e-3  # same rounding (RNE)
    w = quantize_weight(torch.randn(6144, 4096, device="cuda", generator=gen).bfloat16() / 64)
    for rows in (1, 7, 16):
        out = fp8_weight_gemv(x[:rows], w.data, w.scale)
        ref = x[:rows].float() @ w.dequantize().t()
        assert out.dtype == torch.bfloat16
        assert relative_error(out, ref) < 1e-2  # bf16 output rounding only


def test_compiled_bucketed_decoder_replays_graphs_equal_to_eager_at_every_bucket(tmp_path: Path) -> None:
    from deepserve.engine.decode_graphs import BucketedDecoder
    model = load_transformer(make_tiny_checkpoint(tmp_path / "m", "llama"), device="cuda")
    model.setup_caches(8, 128)
    model.fuse_projections()
    decoder = BucketedDecoder(model, 8, compile=True, graphs=True)
    with torch.inference_mode():
        decoder.warm_up()
        assert decoder.graph_failures == [] and len(decoder.capture_seconds) == len(decoder.buckets)
        for n in (1, 3, 8, 2, 5):  # buckets 1, 4, 8, 2, 8: replays of different graphs
            for slot in range(n):
                prefill(model, torch.arange(3, 13 + slot), slot)
            tokens = torch.arange(5, 5 + n, device="cuda")
            positions = torch.arange(10, 10 + n, device="cuda")
            eager = decode_step(model, tokens, positions)  # writes the same rows the replay does
            torch.testing.assert_close(decoder(tokens, positions), eager, rtol=1e-4, atol=1e-4)
    assert sum(decoder.steps_per_bucket.values()) == 5 and len(decoder.capture_seconds) == len(decoder.buckets)


def test_decode_kernel_over_an_fp8_cache_on_cuda_equals_reference() -> None:
    from deepserve.engine.kernels import decode_attention, decode_attention_reference
    from deepserve.engine.model.cache import to_storage
    gen = torch.Generator(device="cuda").manual_seed(4)
    q = torch.randn(16, 32, 128, device="cuda", generator=gen).bfloat16()
    k = to_storage(torch.randn(16, 8, 3000, 128, device="cuda", generator=gen), torch.float8_e4m3fn)
    v = to_storage(torch.randn(16, 8, 3000, 128, device="cuda", generator=gen), torch.float8_e4m3fn)
    lengths = torch.randint(1, 3001, (16,), device="cuda", generator=gen, dtype=torch.int32)
    out = decode_attention(q, k, v, lengths, 128**-0.5)
    ref = decode_attention_reference(q, k, v, lengths, 128**-0.5)
    assert out.dtype == torch.bfloat16 and (out.float() - ref.float()).abs().max().item() < 2e-2


def test_paged_engine_with_compiled_graphs_on_cuda_equals_the_static_engine(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "m", "llama")
    options = {"model_dir": str(path), "device": "cuda", "max_batch_size": 4, "max_input_tokens": 40,
               "max_new_tokens_limit": 12, "precision": "fp32", "compile": True}
    static = build_engine(EngineOptions(**options))  # type: ignore[arg-type]
    paged = build_engine(EngineOptions(**options, kv_page_tokens=8))  # type: ignore[arg-type]
    assert paged.decoder.graph_failures == [] and len(paged.decoder.capture_seconds) == 3
    prompts = ["the quick brown fox", "a cat", "numbers such as one two three four"]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    want = [r.token_ids for r in static.generate(prompts, params)]
    assert [r.token_ids for r in paged.generate(prompts, params)] == want
    assert paged.paged is not None and paged.paged.tables.free_blocks == paged.paged.tables.num_blocks
