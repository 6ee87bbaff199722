"""fp8 (E4M3) KV cache (issue #19.3): the kernel reads fp8 rows exactly as the reference
widens them, the model's output stays close to the full-precision cache, bad settings fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import decode_step, prefill
from deepserve.engine.kernels import decode_attention, decode_attention_reference
from deepserve.engine.kernels import flash_decode as kernel_module
from deepserve.engine.model.cache import to_storage
from deepserve.engine.options import EngineOptions, EngineOptionsError
from deepserve.engine.precision import relative_error
from deepserve.engine.sampling import SamplingParams

pytestmark = pytest.mark.unit
FP8 = torch.float8_e4m3fn


def test_fp8_storage_saturates_instead_of_nan() -> None:
    stored = to_storage(torch.tensor([1e4, -1e4, 0.3]), FP8).float()
    assert stored[0] == 448 and stored[1] == -448 and abs(stored[2] - 0.3) < 0.02


def test_kernel_over_an_fp8_cache_equals_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 queries: the interpreter's bf16 dots are off; test_gpu.py checks bf16 on CUDA."""
    dtype = torch.float32
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported without TRITON_INTERPRET=1 (tests/unit/conftest.py)")
    monkeypatch.setattr(kernel_module, "RUN_ON_CPU", True)
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(3, 8, 64, generator=gen).to(dtype)
    k = to_storage(torch.randn(3, 2, 150, 64, generator=gen) * 2, FP8)
    v = to_storage(torch.randn(3, 2, 150, 64, generator=gen), FP8)
    lengths = torch.tensor([150, 70, 1], dtype=torch.int32)
    ref = decode_attention_reference(q, k, v, lengths, 64**-0.5)
    k[1, :, 70:], v[1, :, 70:] = float("nan"), float("nan")  # rows past a length: never read
    k[2, :, 1:], v[2, :, 1:] = float("nan"), float("nan")
    out = decode_attention(q, k, v, lengths, 64**-0.5)
    assert out.dtype == dtype and not out.isnan().any()
    assert (out.float() - ref.float()).abs().max().item() < 1e-5


def test_fp8_cache_halves_bytes_and_stays_close_to_the_full_cache(tiny_model_dirs: dict[str, Path]) -> None:
    full = load_transformer(tiny_model_dirs["llama"], "cpu", torch.float32)
    fp8 = load_transformer(tiny_model_dirs["llama"], "cpu", torch.float32)
    full.setup_caches(2, 96)
    fp8.setup_caches(2, 96, kv_dtype=FP8)
    caches = [layer.self_attn.cache for layer in fp8.model.layers]
    assert all(c.k_cache.dtype == FP8 and c.v_cache.dtype == FP8 for c in caches)
    full_bytes = sum(b.nbytes for b in full.buffers() if b.dim() == 4)
    assert sum(b.nbytes for b in fp8.buffers() if b.dim() == 4) * 4 == full_bytes  # fp32 model
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, full.args.vocab_size, (n,), generator=gen) for n in (60, 25)]
    tokens = torch.tensor([3, 4])
    positions = torch.tensor([60, 25])
    with torch.no_grad():
        for slot, p in enumerate(prompts):
            prefill(full, p, slot), prefill(fp8, p, slot)
        want, got = decode_step(full, tokens, positions), decode_step(fp8, tokens, positions)
    err = relative_error(got, want)
    assert 0 < err < 0.1, err  # E4M3 rounds each K/V entry by up to 2^-4 relative


def test_engine_serves_with_an_fp8_cache_and_rejects_bad_settings(tiny_model_dirs: dict[str, Path]) -> None:
    opts = EngineOptions(model_dir=str(tiny_model_dirs["llama"]), device="cpu", max_batch_size=2,
                         max_input_tokens=32, max_new_tokens_limit=8, precision="fp32",
                         kv_cache_dtype="fp8")
    engine = build_engine(opts)
    out = engine.generate(["the quick brown fox", "a cat"], SamplingParams(max_tokens=8, ignore_eos=True))
    assert [len(o.token_ids or []) for o in out] == [8, 8] and engine.kv_cache_dtype == "fp8"
    with pytest.raises(EngineOptionsError, match="kv_cache_dtype"):
        EngineOptions(model_dir="m", kv_cache_dtype="int4")
    mla = load_transformer(tiny_model_dirs["deepseek_v3"], "cpu", torch.float32)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        mla.setup_caches(1, 16, kv_dtype=FP8)
