"""Sampling filters and seeds; Triton request parsing and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepserve.engine.sampling import (
    InvalidRequestError,
    SamplingParams,
    filter_logits,
    make_generator,
    sample_token,
)
from deepserve.engine.triton.requests import parse_request

pytestmark = pytest.mark.unit


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    kept_k = torch.isfinite(filter_logits(logits, top_k=2, top_p=1.0))
    assert kept_k.tolist() == [True, True, False, False, False]
    kept_p = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.8))
    assert kept_p.tolist() == [True, True, True, False, False]  # 0.5+0.2 < 0.8 <= 0.85
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.01)).sum() == 1


def test_seeded_sampling_repeats_and_greedy_is_argmax() -> None:
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=7)
    draws = [[sample_token(logits, params, g) for _ in range(20)]
             for g in (make_generator(params), make_generator(params))]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
    assert sample_token(logits, SamplingParams(), None) == int(logits.argmax())


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k"), ({"seed": -1}, "seed"),
    ({"stop": ("",)}, "stop"),
])
def test_out_of_range_sampling_params_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def _arr(value: object, dtype: object) -> np.ndarray:
    return np.array([value], dtype=dtype)


def test_parse_request_reads_every_input() -> None:
    parsed = parse_request({
        "text_input": _arr("héllo".encode(), np.object_), "max_tokens": _arr(5, np.int32),
        "temperature": _arr(0.5, np.float32), "top_k": _arr(4, np.int32),
        "top_p": _arr(0.9, np.float32), "seed": _arr(11, np.int64),
        "stop": np.array([b"\n", b"END"], dtype=np.object_), "stream": _arr(False, np.bool_),
        "tenant": _arr(b"team-a", np.object_)})
    assert parsed.prompt == "héllo" and not parsed.stream and parsed.tenant == "team-a"
    p = parsed.params
    assert (p.max_tokens, p.top_k, p.seed, p.stop) == (5, 4, 11, ("\n", "END"))
    assert p.temperature == pytest.approx(0.5) and p.top_p == pytest.approx(0.9)


@pytest.mark.parametrize(("inputs", "field"), [
    ({}, "text_input"),
    ({"text_input": _arr(b"   ", np.object_)}, "text_input"),
    ({"text_input": _arr(b"\xff\xfe", np.object_)}, "text_input"),
    ({"text_input": _arr(b"hi", np.object_), "max_tokens": _arr(1.5, np.float32)}, "max_tokens"),
    ({"text_input": _arr(b"hi", np.object_), "top_p": _arr(2.0, np.float32)}, "top_p"),
    ({"text_input": np.array([b"a", b"b"], dtype=np.object_)}, "text_input"),
    ({"text_input": _arr(b"hi", np.object_), "stream": _arr(1, np.int32)}, "stream"),
])
def test_bad_requests_name_the_input(inputs: dict[str, np.ndarray], field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_request(inputs)
    assert err.value.field == field
