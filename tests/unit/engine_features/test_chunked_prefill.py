"""Chunked prefill (issue #19.4): a long prompt is prefilled a budget of tokens per step,
between decode steps of the running sequences, with the same greedy output as one-shot
prefill (static and paged caches, prefix cache and fp8 KV on and off)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions, EngineOptionsError
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import SamplingParams

pytestmark = pytest.mark.unit

SHORT = ["a cat", "the dog ran", "one two three four"]
LONG = ("the quick brown fox jumps over the lazy dog while the small cat sleeps on the warm "
        "mat and the birds sing in the tall green trees near the river bank all day long")


def _engine(path: Path, **kw: object) -> InferenceEngine:
    opts: dict[str, object] = {"max_batch_size": 4, **kw}
    return build_engine(EngineOptions(model_dir=str(path), device="cpu", max_input_tokens=96,
                                      max_new_tokens_limit=16, precision="fp32",
                                      **opts))  # type: ignore[arg-type]


def _staggered(engine: InferenceEngine, params: SamplingParams) -> list[list[int]]:
    """Short prompts start decoding, then long ones arrive while they run; every output."""
    handles = [engine.submit(p, params) for p in SHORT[:2]]
    engine.step()
    engine.step()
    handles += [engine.submit(LONG, params), engine.submit(SHORT[2] + " " + LONG[:150], params)]
    engine.step()
    handles.append(engine.submit(LONG, params))  # repeated: a prefix-cache / shared-block hit
    engine.run_until_idle()
    outs = []
    for h in handles:
        assert h.final is not None and h.final.finish_reason == "length", h.final
        outs.append(list(h.final.token_ids or []))
    return outs


CONFIGS = [
    pytest.param("llama", {}, id="llama-static"),
    pytest.param("llama", {"prefix_cache_mib": 4}, id="llama-prefix-cache"),
    pytest.param("llama", {"kv_page_tokens": 8}, id="llama-paged"),
    pytest.param("llama", {"kv_cache_dtype": "fp8"}, id="llama-fp8-kv"),
    pytest.param("llama", {"kv_page_tokens": 8, "kv_cache_dtype": "fp8"}, id="llama-paged-fp8"),
    pytest.param("deepseek_v3", {}, id="mla-static"),
    pytest.param("deepseek_v3", {"prefix_cache_mib": 4}, id="mla-prefix-cache"),
]


@pytest.mark.parametrize(("arch", "options"), CONFIGS)
def test_chunked_prefill_gives_the_same_greedy_output_as_one_shot_prefill(
        tiny_model_dirs: dict[str, Path], arch: str, options: dict[str, object]) -> None:
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    want = _staggered(_engine(tiny_model_dirs[arch], **options), params)
    assert len(_engine(tiny_model_dirs[arch]).tokenizer.encode(LONG)) > 3 * 7  # several chunks
    for chunk in (7, 32):
        engine = _engine(tiny_model_dirs[arch], prefill_chunk_tokens=chunk, **options)
        assert _staggered(engine, params) == want, (chunk, options)
        if engine.paged is not None:
            assert engine.paged.tables.free_blocks == engine.paged.tables.num_blocks
            assert engine.paged.reserved == 0


def test_running_sequences_decode_while_a_long_prompt_is_prefilled(
        tiny_model_dirs: dict[str, Path]) -> None:
    engine = _engine(tiny_model_dirs["llama"], prefill_chunk_tokens=8)
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    short = engine.submit(SHORT[0], params)
    engine.step()
    long_ids = engine.tokenizer.encode(LONG)
    long = engine.submit(LONG, params)
    before = short.drain()
    steps = 0
    while not long.drain():  # no token of the long prompt yet: it is still prefilling
        engine.step()
        steps += 1
        assert steps < 50
    assert steps == -(-len(long_ids) // 8)  # one chunk of 8 prompt tokens per step
    during = short.drain()
    # the short request got a token in every step (at most 8 prompt tokens of work each)
    assert sum(c.generated_tokens for c in during[-1:]) - before[-1].generated_tokens == steps
    engine.run_until_idle()


def test_unchunked_engine_prefills_a_whole_prompt_in_one_step(tiny_model_dirs: dict[str, Path]) -> None:
    engine = _engine(tiny_model_dirs["llama"])
    handle = engine.submit(LONG, SamplingParams(max_tokens=4, ignore_eos=True))
    engine.step()
    assert handle.drain(), "one step streams the first token"


@pytest.mark.parametrize("options", [{}, {"kv_page_tokens": 8}])
def test_cancelled_while_prefilling_frees_its_slot_and_blocks(
        tiny_model_dirs: dict[str, Path], options: dict[str, object]) -> None:
    engine = _engine(tiny_model_dirs["llama"], prefill_chunk_tokens=8, **options)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    long = engine.submit(LONG, params)
    engine.step()
    engine.step()
    assert 0 < engine._running[0].prefill_pos < len(engine.tokenizer.encode(LONG))  # type: ignore[operator]
    long.cancel()
    engine.step()
    assert long.final is not None and long.final.finish_reason == "cancelled"
    assert long.final.generated_tokens == 0 and not engine._running
    if engine.paged is not None:
        assert engine.paged.tables.free_blocks == engine.paged.tables.num_blocks
        assert engine.paged.reserved == 0
    # the slot serves the next request normally
    again = engine.generate([SHORT[1]], params)[0]
    assert again.finish_reason == "length" and again.generated_tokens == 8


def test_prefill_chunk_tokens_is_validated() -> None:
    with pytest.raises(EngineOptionsError, match="prefill_chunk_tokens"):
        EngineOptions(model_dir="m", prefill_chunk_tokens=-1)
    assert EngineOptions.from_json(EngineOptions(model_dir="m", prefill_chunk_tokens=512)
                                   .to_json()).prefill_chunk_tokens == 512
