"""Paged KV cache (issue #19.3): blocks on demand, freed on finish/cancel, shared prefix
blocks, and attention through block tables equal to the contiguous cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import decode_step, prefill
from deepserve.engine.kernels import decode_attention_reference
from deepserve.engine.kernels import flash_decode as kernel_module
from deepserve.engine.kernels.flash_decode import paged_decode_attention, paged_gather
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import EngineOptions, EngineOptionsError
from deepserve.engine.paged_kv import BlockTables, OutOfBlocksError
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import SamplingParams

pytestmark = pytest.mark.unit


def test_blocks_come_on_demand_go_back_on_release_and_prefixes_are_shared() -> None:
    tables = BlockTables(num_blocks=6, page=4)
    prompt = list(range(100, 110))  # 10 tokens: 2 full blocks + 2 rows
    assert tables.add("a", prompt) == 0
    assert len(tables.grow("a", 10)) == 3 and tables.free_blocks == 3
    assert len(tables.grow("a", 12)) == 3  # still inside the third block: nothing new
    tables.publish("a", prompt)
    assert tables.add("b", [*prompt[:9], 7, 7]) == 8  # both full blocks reused
    b_blocks = tables.grow("b", 11)
    a_blocks = tables.grow("a", 13)
    assert b_blocks[:2] == a_blocks[:2] and b_blocks[2] != a_blocks[2] and tables.free_blocks == 1
    with pytest.raises(OutOfBlocksError):
        tables.grow("b", 20)  # needs 3 more, 1 free: nothing is taken
    assert tables.free_blocks == 1
    tables.release("a")  # finished: its own blocks return, the shared ones stay for b
    assert tables.free_blocks == 3
    assert tables.add("c", prompt) == 8  # the prefix is still indexed while b holds it
    tables.release("b")
    tables.release("c")  # cancelled: everything back, the index forgets freed blocks
    assert tables.free_blocks == 6 and tables.add("d", prompt) == 0
    with pytest.raises(ValueError, match="already"):
        tables.add("d", prompt)


def _shuffled_pool(bsz: int, lengths: list[int], page: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pool with each sequence's rows in shuffled blocks; blocks no table names are NaN."""
    per_seq = -(-max(lengths) // page)
    blocks = torch.randperm(bsz * per_seq + 3, generator=gen)
    table = blocks[: bsz * per_seq].view(bsz, per_seq).to(torch.int32)
    k = torch.full((bsz * per_seq + 3, 2, page, 32), float("nan"))
    v = torch.full_like(k, float("nan"))
    k[table.long().flatten()] = torch.randn(bsz * per_seq, 2, page, 32, generator=gen)
    v[table.long().flatten()] = torch.randn(bsz * per_seq, 2, page, 32, generator=gen)
    return k, v, table, torch.tensor(lengths, dtype=torch.int32)


def test_kernel_through_a_block_table_equals_attention_over_gathered_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported without TRITON_INTERPRET=1 (tests/unit/conftest.py)")
    monkeypatch.setattr(kernel_module, "RUN_ON_CPU", True)
    gen = torch.Generator().manual_seed(9)
    k, v, table, lengths = _shuffled_pool(3, [37, 5, 64], 8, gen)
    q = torch.randn(3, 8, 32, generator=gen)
    out = paged_decode_attention(q, k, v, table, lengths, 32**-0.5)
    rows = paged_gather(k, table, 64), paged_gather(v, table, 64)
    ref = decode_attention_reference(q, rows[0].nan_to_num(), rows[1].nan_to_num(), lengths, 32**-0.5)
    assert not out.isnan().any() and (out - ref).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="bad shapes"):
        paged_decode_attention(q[:2], k, v, table, lengths, 1.0)


def _paged_step(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor,
                table: torch.Tensor, fresh: bool = False) -> torch.Tensor:
    return model(tokens, positions, None, last=torch.full((tokens.shape[0],), tokens.shape[1] - 1),
                 fresh=fresh, block_table=table)[:, 0]


@pytest.mark.parametrize("interpreted", [False, True])
def test_paged_model_equals_the_contiguous_cache_with_a_shared_prefix(
        tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, interpreted: bool) -> None:
    if interpreted:  # decode through the Triton kernel (else the gathered-rows path)
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton was imported without TRITON_INTERPRET=1")
        monkeypatch.setattr(kernel_module, "RUN_ON_CPU", True)
    contiguous = load_transformer(tiny_model_dirs["llama"], "cpu", torch.float32)
    paged = load_transformer(tiny_model_dirs["llama"], "cpu", torch.float32)
    contiguous.setup_caches(2, 64)
    paged.setup_paged_caches(num_blocks=20, page=8, max_seq_len=64)
    tables = BlockTables(20, 8)
    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, paged.args.vocab_size, (21,), generator=gen).tolist()
    with torch.no_grad():
        want = prefill(contiguous, torch.tensor(prompt), 0)
        tables.add("a", prompt)
        tables.grow("a", 21)
        table = tables.table(["a"], 8, "cpu")
        got = _paged_step(paged, torch.tensor([prompt]), torch.arange(21)[None], table, fresh=True)[0]
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-5)
        tables.publish("a", prompt)
        # b repeats a's prompt: 16 rows come from a's shared blocks, 5 are prefilled
        reused = tables.add("b", prompt)
        tables.grow("b", 21)
        assert reused == 16
        table = tables.table(["b"], 8, "cpu")
        got_b = _paged_step(paged, torch.tensor([prompt[reused:]]), torch.arange(reused, 21)[None], table)[0]
        torch.testing.assert_close(got_b.float(), want, rtol=1e-5, atol=1e-5)
        prefill(contiguous, torch.tensor(prompt), 1)
        tokens, positions = torch.tensor([5, 6]), torch.tensor([21, 21])
        for _ in range(4 if interpreted else 12):  # rows 21..24+: each grows into a new block
            want_step = decode_step(contiguous, tokens, positions)
            for name, pos in zip("ab", positions.tolist(), strict=True):
                tables.grow(name, pos + 1)
            table = tables.table(["a", "b"], 8, "cpu")
            got_step = _paged_step(paged, tokens[:, None], positions[:, None], table)
            torch.testing.assert_close(got_step.float(), want_step, rtol=1e-4, atol=1e-4)
            tokens, positions = want_step.argmax(-1), positions + 1
    tables.release("a")
    tables.release("b")
    assert tables.free_blocks == 20


def _engine(path: Path, **kw: object) -> InferenceEngine:
    opts: dict[str, object] = {"max_batch_size": 4, **kw}
    return build_engine(EngineOptions(model_dir=str(path), device="cpu", max_input_tokens=40,
                                      max_new_tokens_limit=12, precision="fp32",
                                      **opts))  # type: ignore[arg-type]


def test_paged_engine_serves_like_the_static_cache_and_returns_every_block(
        tiny_model_dirs: dict[str, Path]) -> None:
    static = _engine(tiny_model_dirs["llama"])
    paged = _engine(tiny_model_dirs["llama"], kv_page_tokens=8)
    assert paged.paged is not None and paged.paged.tables.num_blocks == 4 * 7  # 52 tokens: 7 blocks
    prompts = ["the quick brown fox jumps over the lazy dog", "a cat", "numbers such as one two three"]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    want = [r.token_ids for r in static.generate(prompts, params)]
    assert [r.token_ids for r in paged.generate(prompts, params)] == want
    assert paged.paged.tables.free_blocks == 4 * 7 and paged.paged.reserved == 0
    # a repeated prompt maps the running sequence's full prompt blocks instead of prefilling them
    first = paged.submit(prompts[0], params)
    paged.step()
    second = paged.submit(prompts[0], params)
    paged.step()
    third = paged.submit(prompts[1], params)
    paged.step()
    third.cancel()  # cancelled mid-way: its blocks return at the next step
    paged.run_until_idle()
    assert second.final is not None and first.final is not None and third.final is not None
    assert second.final.reused_prompt_tokens >= 8 and second.final.token_ids == want[0]
    assert third.final.finish_reason == "cancelled"
    assert paged.paged.tables.free_blocks == 4 * 7 and paged.paged.reserved == 0


def test_paged_engine_waits_for_blocks_instead_of_failing(tiny_model_dirs: dict[str, Path]) -> None:
    engine = _engine(tiny_model_dirs["llama"], kv_page_tokens=8, kv_cache_tokens=56)  # 7 blocks
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    prompt = "the quick brown fox jumps over the lazy dog and the cat sat on the warm mat"
    assert engine.paged is not None and engine.paged.tables.num_blocks == 7
    need = engine.paged.tables.blocks_for(len(engine.tokenizer.encode(prompt)) + 10)
    assert 2 * need > 7  # two such requests do not fit at once
    handles = [engine.submit(prompt, params) for _ in range(2)]
    engine.step()
    assert len(engine._running) == 1  # the second waits for blocks
    engine.run_until_idle()
    outs = [h.final.token_ids for h in handles if h.final is not None]
    assert len(outs) == 2 and outs[0] == outs[1] and len(outs[0] or []) == 10
    with pytest.raises(EngineOptionsError, match="kv_page_tokens"):
        EngineOptions(model_dir="m", kv_page_tokens=-1)


def test_paged_engine_runs_more_sequences_than_static_slots_in_the_same_memory(
        tiny_model_dirs: dict[str, Path]) -> None:
    budget = {"max_batch_size": 8, "kv_cache_tokens": 104}  # 2 static slots of 40 + 12 tokens
    static = _engine(tiny_model_dirs["llama"], **budget)
    paged = _engine(tiny_model_dirs["llama"], kv_page_tokens=8, **budget)  # 13 blocks of 8
    params = SamplingParams(max_tokens=4, ignore_eos=True)  # short requests: 1 block each
    for engine in (static, paged):
        for _ in range(8):
            engine.submit("a cat", params)
        engine.step()
    assert static.slots == 2 and len(static._running) == 2
    assert len(paged._running) == 8  # 4x the sequences in the same KV memory
    paged.run_until_idle()
    static.run_until_idle()
