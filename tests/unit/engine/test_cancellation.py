"""A request whose client went away stops at the next decode step, and is accounted once.

The backend passes Triton's ``response_sender.is_cancelled`` as ``is_cancelled``; the
end-to-end half (dropped HTTP client -> cancelled Triton request -> one usage event) is
tests/integration/engine/test_openai_frontend.py::test_dropped_client_cancels_the_engine_and_is_billed_once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import GenerationChunk
from deepserve.engine.sampling import SamplingParams

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cancel_after", [1, 5])
def test_engine_stops_within_one_step_of_the_cancel(tiny_dirs: dict[str, Path], cancel_after: int) -> None:
    engine = build_engine(EngineOptions(model_dir=str(tiny_dirs["llama"]), device="cpu",
                                        max_batch_size=2, max_input_tokens=32, max_new_tokens_limit=64))
    chunks: list[GenerationChunk] = []
    other: list[GenerationChunk] = []
    gone = [False]

    def on_chunk(chunk: GenerationChunk) -> None:
        chunks.append(chunk)
        if chunk.generated_tokens >= cancel_after:
            gone[0] = True  # the client disconnects after seeing this token

    engine.submit("The client leaves", SamplingParams(max_tokens=60), request_id="c",
                  on_chunk=on_chunk, is_cancelled=lambda: gone[0])
    engine.submit("Another stays", SamplingParams(max_tokens=8), request_id="o", on_chunk=other.append)
    engine.run_until_idle()
    final = chunks[-1]
    assert final.finished and final.finish_reason == "cancelled"
    # the step under way finishes (the first token comes from prefill, and the same step
    # decodes the next), then nothing more: at most one token after the cancel
    assert cancel_after <= final.generated_tokens <= cancel_after + 1
    if cancel_after > 1:  # cancelled between decode steps: not one more token
        assert final.generated_tokens == cancel_after
    assert final.stats is not None and final.stats.generated_tokens == final.generated_tokens
    assert sum(c.finished for c in chunks) == 1  # one final chunk: one usage event
    assert other[-1].finished and other[-1].finish_reason in ("stop", "length")  # unaffected
