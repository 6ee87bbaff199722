"""The token mask: what it allows is exactly what the grammar allows, only on constrained rows,
and every keyword the spec accepts is enforced (random logits, outputs validated by jsonschema)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from deepserve.engine.sampling import InvalidRequestError
from deepserve.engine.structured.grammar import GrammarCompiler, TokenConstraint, mask_logits
from deepserve.engine.structured.spec import (
    SUPPORTED_FORMATS,
    SUPPORTED_KEYWORDS,
    ResponseFormat,
    parse_response_format,
)
from deepserve.engine.tokenizer import TextTokenizer

S = {"type": "string", "maxLength": 6}
# one case per supported keyword (at least); random logits must never leave the schema
CASES: dict[str, dict[str, Any]] = {
    "required": {"type": "object", "properties": {"a": {"type": "integer"}, "b": S}, "required": ["a", "b"]},
    "additional": {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2},
    "min_properties": {"type": "object", "additionalProperties": {"type": "boolean"}, "propertyNames": {"pattern": "^[a-z]$"},
                       "minProperties": 1, "maxProperties": 2},
    "pattern_properties": {"type": "object", "patternProperties": {"^x[0-9]$": {"type": "integer"}},
                           "additionalProperties": False, "maxProperties": 2},
    "property_names": {"type": "object", "propertyNames": {"pattern": "^[a-c]$"}, "maxProperties": 2},
    "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 4},
    "prefix_items": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False},
    "min_items": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
    "string_length": {"type": "string", "minLength": 3, "maxLength": 5},
    "pattern": {"type": "string", "pattern": "^[a-z]{2}[0-9]$"},
    "formats": {"type": "array", "prefixItems": [{"type": "string", "format": f} for f in sorted(SUPPORTED_FORMATS)],
                "items": False, "minItems": len(SUPPORTED_FORMATS)},
    "int_range": {"type": "integer", "minimum": 3, "maximum": 17},
    "exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "multiple_of": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100},
    "enum_const": {"type": "object", "properties": {"e": {"enum": ["red", "green", 3, None]},
                                                    "c": {"const": {"k": [1, 2]}}}, "required": ["e", "c"]},
    "any_of": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
    "type_list": {"type": ["integer", "null"]},
    "ref": {"$defs": {"p": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
            "definitions": {"q": {"enum": [1, 2]}},
            "type": "array", "prefixItems": [{"$ref": "#/definitions/q"}], "items": {"$ref": "#/$defs/p"},
            "maxItems": 3},
    "nested": {"type": "object", "properties": {"p": {"type": "object", "properties": {
        "q": {"type": "array", "items": {"type": "object", "properties": {"r": {"enum": ["x", "y"]}},
                                         "required": ["r"]}, "maxItems": 2}}, "required": ["q"]}},
        "required": ["p"]},
}


@pytest.fixture(scope="module")
def compiler(tiny_dir: Path) -> GrammarCompiler:
    vocab = json.loads((tiny_dir / "config.json").read_text())["vocab_size"]
    return GrammarCompiler(TextTokenizer.from_dir(tiny_dir), vocab)


def _schema_format(schema: dict[str, Any]) -> ResponseFormat:
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert fmt is not None
    return fmt


def _sample(compiler: GrammarCompiler, fmt: ResponseFormat, seed: int, steps: int = 120) -> str | None:
    """Text drawn from random logits under the mask; None if the grammar did not finish."""
    constraint = compiler.constraint(fmt)
    bitmask = compiler.bitmask(1)
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(steps):
        logits = torch.randn(1, compiler.vocab_size, generator=gen) * 3
        mask_logits(compiler, logits, {0: constraint}, bitmask)
        token = int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=gen))
        assert constraint.accept(token)
        ids.append(token)
        if constraint.finished:
            return compiler.tokenizer.decode(ids)
    return None


def test_every_supported_keyword_has_a_case() -> None:
    assert set(jsonschema.FormatChecker().checkers) >= SUPPORTED_FORMATS  # checked, not passed by default
    used = set()
    for schema in CASES.values():
        used |= set(json.dumps(schema).replace('"', " ").split()) & SUPPORTED_KEYWORDS
    assert used == SUPPORTED_KEYWORDS


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_logits_under_the_mask_always_validate(compiler: GrammarCompiler, name: str) -> None:
    schema = CASES[name]
    fmt = _schema_format(schema)
    finished = 0
    for seed in range(25):
        text = _sample(compiler, fmt, seed)
        if text is None:
            continue
        finished += 1
        assert not re.search(r"[\x00-\x1f]", text), text  # compact JSON, no raw control characters
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
    assert finished >= 5, f"only {finished}/25 samples finished within 120 tokens"


def test_json_object_and_regex(compiler: GrammarCompiler) -> None:
    objects = [_sample(compiler, ResponseFormat("json_object"), seed, 300) for seed in range(10)]
    done = [json.loads(t) for t in objects if t is not None]
    assert len(done) >= 3 and all(isinstance(o, dict) for o in done)
    pattern = r"(yes|no) [A-Z][a-z]{1,4}-\d{2}"
    for seed in range(10):
        text = _sample(compiler, ResponseFormat("regex", regex=pattern), seed)
        assert text is not None and re.fullmatch(pattern, text), text


def test_mask_allows_exactly_the_grammars_tokens_and_leaves_other_rows_alone(
        compiler: GrammarCompiler) -> None:
    constraint = compiler.constraint(ResponseFormat("regex", regex=r"[0-9]+"))
    logits = torch.randn(3, compiler.vocab_size)
    before = logits.clone()
    mask_logits(compiler, logits, {1: constraint}, compiler.bitmask(3))
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    vocab = compiler.tokenizer.tokenizer
    expected = [t for t in range(compiler.vocab_size)
                if (piece := vocab.decode([t])) and piece.isdigit() and piece.isascii()]
    assert allowed == expected and expected  # digits-only tokens, nothing else (no eos yet)
    assert torch.equal(logits[1][allowed], before[1][allowed])  # allowed logits untouched


def test_control_byte_tokens_are_masked_in_json_but_not_in_regex(compiler: GrammarCompiler) -> None:
    control = [t for t in range(compiler.vocab_size)
               if re.search(r"[\x00-\x1f]", compiler.tokenizer.tokenizer.decode([t]))]
    assert control  # the byte-level vocabulary has them
    json_rows = _allowed(compiler, compiler.constraint(_schema_format({"type": "string", "maxLength": 9})))
    regex_rows = _allowed(compiler, compiler.constraint(ResponseFormat("regex", regex=r"\"[^\"]{0,9}\"")))
    assert not set(control) & set(json_rows)
    assert set(control) <= set(regex_rows)


def _allowed(compiler: GrammarCompiler, constraint: TokenConstraint) -> list[int]:
    assert constraint.accept(compiler.tokenizer.tokenizer.token_to_id('"'))  # open the string
    logits = torch.zeros(1, compiler.vocab_size)
    mask_logits(compiler, logits, {0: constraint}, compiler.bitmask(1))
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_end_of_grammar_allows_only_eos(compiler: GrammarCompiler) -> None:
    constraint = compiler.constraint(ResponseFormat("regex", regex="ab"))
    for piece in ("a", "b"):
        assert constraint.accept(compiler.tokenizer.tokenizer.token_to_id(piece))
    logits = torch.zeros(1, compiler.vocab_size)
    mask_logits(compiler, logits, {0: constraint}, compiler.bitmask(1))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == sorted(compiler.tokenizer.eos_ids)
    assert not constraint.finished
    assert constraint.accept(min(compiler.tokenizer.eos_ids)) and constraint.finished


@pytest.mark.parametrize("fmt", [ResponseFormat("regex", regex="(unclosed"),
                                 ResponseFormat("json_schema", schema='{"type": "integer", "minimum": 5, "maximum": 1}')])
def test_grammars_that_cannot_be_built_are_invalid_requests(compiler: GrammarCompiler, fmt: ResponseFormat) -> None:
    with pytest.raises(InvalidRequestError) as info:
        compiler.constraint(fmt)
    assert info.value.field == "response_format"
