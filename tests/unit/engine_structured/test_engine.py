"""Constrained and unconstrained requests batched in one engine (tiny random model, CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from deepserve.engine.options import EngineOptions
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import InvalidRequestError, SamplingParams
from deepserve.engine.structured.spec import ResponseFormat, parse_response_format

ITEM = {"type": "object", "properties": {"sku": {"type": "string", "maxLength": 5},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
        "required": ["sku", "qty"]}
ORDER = {"type": "object", "properties": {
    "status": {"enum": ["open", "paid", "shipped"]},
    "items": {"type": "array", "items": ITEM, "minItems": 1, "maxItems": 2},
    "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 8}]},
}, "required": ["status", "items", "note"]}
PROMPTS = ["The cache holds", "Sampling turns", "A request waits", "Tokens stream"]


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> InferenceEngine:
    from deepserve.engine.build import build_engine

    return build_engine(EngineOptions(model_dir=str(tiny_dir), device="cpu", max_batch_size=4,
                                      max_input_tokens=64, max_new_tokens_limit=256))


def _fmt(schema: dict[str, Any]) -> ResponseFormat:
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "order", "schema": schema}})
    assert fmt is not None
    return fmt


def _run(engine: InferenceEngine, jobs: list[tuple[str, SamplingParams]]) -> list[Any]:
    handles = [engine.submit(prompt, params) for prompt, params in jobs]
    engine.run_until_idle()
    finals = []
    for handle in handles:
        chunks = handle.drain()
        final = chunks[-1]
        final.text = "".join(c.text for c in chunks)
        finals.append(final)
    return finals


def test_mixed_batch_constrained_rows_validate_and_unconstrained_are_unchanged(engine: InferenceEngine) -> None:
    plain = SamplingParams(max_tokens=24)
    alone = [_run(engine, [(p, plain)])[0].text for p in PROMPTS[:2]]
    jobs = [(PROMPTS[0], plain), (PROMPTS[2], SamplingParams(max_tokens=200, response_format=_fmt(ORDER))),
            (PROMPTS[1], plain),
            (PROMPTS[3], SamplingParams(max_tokens=60, temperature=1.0, seed=7,
                                        response_format=ResponseFormat("regex", regex=r"[a-z]{2,6}(, [a-z]{2,6}){2}")))]
    out = _run(engine, jobs)
    assert [out[0].text, out[2].text] == alone  # the mask never touched their rows
    assert out[1].finish_reason == "stop", out[1].text
    jsonschema.validate(json.loads(out[1].text), ORDER)
    assert out[3].finish_reason == "stop" and re.fullmatch(r"[a-z]{2,6}(, [a-z]{2,6}){2}", out[3].text)


def test_sampled_and_greedy_outputs_validate_for_several_schemas(engine: InferenceEngine) -> None:
    schemas = [ORDER, {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 4},
               {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "number",
                "minimum": 0, "maximum": 1}}, "required": ["ok", "n"]}]
    jobs = [(PROMPTS[i % 4], SamplingParams(max_tokens=200, temperature=t, seed=i, top_p=0.9,
                                            response_format=_fmt(schema)))
            for i, (schema, t) in enumerate((s, t) for s in schemas for t in (0.0, 0.8, 1.5))]
    for (_, params), final in zip(jobs, _run(engine, jobs), strict=True):
        assert final.finish_reason == "stop", final.text
        assert params.response_format is not None
        jsonschema.validate(json.loads(final.text), json.loads(params.response_format.schema))


def test_max_tokens_reached_is_reported_as_length(engine: InferenceEngine) -> None:
    (final,) = _run(engine, [(PROMPTS[0], SamplingParams(max_tokens=3, response_format=_fmt(ORDER)))])
    assert final.finish_reason == "length" and final.generated_tokens == 3
    assert final.text.startswith('{"status": "') or final.text.startswith('{"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(final.text)  # cut short: said so by finish_reason, not passed off as complete


def test_json_object_mode_gives_an_object_or_says_length(engine: InferenceEngine) -> None:
    jobs = [(p, SamplingParams(max_tokens=120, temperature=0.7, seed=i,
                               response_format=ResponseFormat("json_object"))) for i, p in enumerate(PROMPTS)]
    finals = _run(engine, jobs)
    assert {f.finish_reason for f in finals} <= {"stop", "length"}
    for final in finals:
        if final.finish_reason == "stop":
            assert isinstance(json.loads(final.text), dict)
    assert any(f.finish_reason == "stop" for f in finals)


def test_bad_grammars_and_stop_strings_are_refused_at_submit(engine: InferenceEngine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.submit(PROMPTS[0], SamplingParams(response_format=ResponseFormat("regex", regex="[a-")))
    assert info.value.field == "response_format"
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(stop=("}",), response_format=ResponseFormat("json_object"))
    assert info.value.field == "stop"
    assert not engine.has_work()
