"""Continuous batching engine: streaming, stop strings, limits, cancellation, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import InvalidRequestError, SamplingParams
from deepserve.engine.tokenizer import StreamDecoder

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engine(tiny_dirs: dict[str, Path]) -> InferenceEngine:
    return build_engine(EngineOptions(model_dir=str(tiny_dirs["llama"]), device="cpu",
                                      max_batch_size=2, max_input_tokens=24,
                                      max_new_tokens_limit=24))


def test_streamed_pieces_join_to_the_decoded_completion(engine: InferenceEngine) -> None:
    handle = engine.submit("The quick brown fox", SamplingParams(max_tokens=12, ignore_eos=True))
    engine.run_until_idle()
    chunks = handle.drain()
    final = chunks[-1]
    assert final.finished and final.finish_reason == "length" and final.generated_tokens == 12
    assert all(not c.finished for c in chunks[:-1]) and len(chunks) > 2
    assert "".join(c.text for c in chunks) == engine.tokenizer.decode(final.token_ids or [])
    assert final.stats is not None and final.stats.time_to_first_token_s is not None


def test_stop_string_ends_generation_and_is_not_emitted(engine: InferenceEngine) -> None:
    full = engine.generate(["Numbers such as"], SamplingParams(max_tokens=16, ignore_eos=True))[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = engine.generate(["Numbers such as"],
                          SamplingParams(max_tokens=16, ignore_eos=True, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_cancel_frees_the_slot_and_reports_cancelled(engine: InferenceEngine) -> None:
    handle = engine.submit("A request", SamplingParams(max_tokens=20, ignore_eos=True))
    engine.step()
    engine.step()
    handle.cancel()
    engine.run_until_idle()
    final = handle.drain()[-1]
    assert final.finish_reason == "cancelled" and 0 < final.generated_tokens < 20
    # both slots are free again: two new requests run side by side
    results = engine.generate(["a b", "c d"], SamplingParams(max_tokens=3, ignore_eos=True))
    assert [r.generated_tokens for r in results] == [3, 3]


@pytest.mark.parametrize(("prompt", "params", "field"), [
    ("", SamplingParams(), "text_input"),
    ("word " * 100, SamplingParams(), "text_input"),
    ("hi", SamplingParams(max_tokens=25), "max_tokens"),
])
def test_invalid_requests_are_refused_and_engine_keeps_serving(
        engine: InferenceEngine, prompt: str, params: SamplingParams, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        engine.submit(prompt, params)
    assert err.value.field == field
    assert engine.generate(["ok"], SamplingParams(max_tokens=2, ignore_eos=True))[0].generated_tokens == 2


def test_background_thread_streams_to_an_iterating_client(engine: InferenceEngine) -> None:
    engine.start()
    try:
        handle = engine.submit("Streaming sends", SamplingParams(max_tokens=8, ignore_eos=True))
        chunks = list(handle)
    finally:
        engine.stop()
    assert chunks[-1].finished and chunks[-1].generated_tokens == 8


def test_stream_decoder_holds_back_partial_characters_and_stop_prefixes(engine: InferenceEngine) -> None:
    text = "héllo ✓ wörld END tail"
    ids = engine.tokenizer.encode(text)[1:]  # without BOS
    decoder = StreamDecoder(engine.tokenizer, stop=("END",))
    pieces = []
    for token in ids:
        pieces.append(decoder.push(token))
        assert "\ufffd" not in pieces[-1]
        if decoder.stopped:
            break
    assert decoder.stopped and "".join(pieces) == "héllo ✓ wörld "
