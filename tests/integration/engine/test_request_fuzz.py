"""Property-based fuzzing of the pod's entry points on a real Triton + frontend (#20.1).

hypothesis generates OpenAI request bodies (known and unknown fields, every JSON type,
unicode, sizes around the limits, nesting, malformed bytes) for both endpoints, streaming
or not. Every answer must be a 2xx or a 4xx with OpenAI error JSON (never a 5xx, never a
dropped connection), and every ``CHECK_EVERY`` requests a known good request must still get
the engine's exact text while both processes stay up. ``DEEPSERVE_FUZZ_EXAMPLES`` sets the
number of generated requests (CI: 300; docs/engine.md records a longer run).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.slow]
MODEL = "tiny-chat"  # conftest.py's FRONT_MODEL
EXAMPLES = int(os.environ.get("DEEPSERVE_FUZZ_EXAMPLES", "300"))
CHECK_EVERY = 25

texts = st.text(max_size=40) | st.sampled_from(["", " ", "\x00", "\ud7ff\ue000", "é" * 300, "🙂" * 50])
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
           | texts)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
small_ints = st.integers(-3, 6) | st.sampled_from([0, 1001, 2**31, -2**31, 2**64])
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", ""]), "content": texts | json_values}),
    max_size=3) | json_values
FIELDS: dict[str, Any] = {
    "model": st.just(MODEL) | texts | json_values,
    "prompt": texts | json_values | st.just("x" * 70_000),
    "messages": messages,
    "max_tokens": small_ints | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "top_p": st.floats(-0.5, 1.5) | json_values,
    "seed": st.integers(-2**63, 2**64) | json_values,
    "stop": st.lists(texts, max_size=6) | texts | json_values,
    "n": small_ints,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
}


@st.composite
def bodies(draw: Any) -> tuple[str, bytes]:
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    kind = draw(st.sampled_from(["object", "object", "object", "raw", "nested", "huge"]))
    if kind == "raw":
        return path, draw(st.binary(max_size=200))
    if kind == "nested":
        depth = draw(st.integers(1, 400_000))
        return path, b'{"model": "tiny-chat", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge":
        return path, json.dumps({"model": MODEL, "prompt": "y" * draw(st.integers(1 << 20, 3 << 20))}).encode()
    names = draw(st.sets(st.sampled_from([*FIELDS, "logprobs", "x" * 5, "user"]), max_size=7))
    body = {n: draw(FIELDS.get(n, json_values)) for n in names}
    if draw(st.booleans()):
        body = {"model": MODEL, "max_tokens": draw(st.integers(1, 6)),
                "prompt" if path == "/v1/completions" else "messages":
                    draw(texts) if path == "/v1/completions" else [{"role": "user", "content": draw(texts)}],
                **{k: v for k, v in body.items() if k not in ("model", "max_tokens")}}
    return path, json.dumps(body, ensure_ascii=draw(st.booleans())).encode()


def _send(url: str, body: bytes) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _check_answer(status: int, raw: bytes, content_type: str) -> None:
    assert status in (200, 400, 404, 413), (status, raw[:300])
    if status != 200:
        error = json.loads(raw)["error"]
        assert error["message"] and error["type"] == "invalid_request_error", error
        return
    if content_type.startswith("text/event-stream"):
        events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]", raw[-200:]
        for event in events[:-1]:
            assert "error" not in json.loads(event), event
    else:
        answer = json.loads(raw)
        assert answer["usage"]["completion_tokens"] >= 1 and answer["choices"], answer


def test_generated_requests_never_take_the_pod_down(frontend: Any) -> None:
    sent = [0]
    good = json.dumps({"model": MODEL, "prompt": "The cache holds", "max_tokens": 6,
                       "temperature": 0}).encode()
    expected = frontend.expected("The cache holds", 6)

    def still_serving() -> None:
        assert frontend.alive()
        status, raw, _ = _send(f"{frontend.url}/v1/completions", good)
        assert status == 200 and json.loads(raw)["choices"][0]["text"] == expected

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies())
    def one_request(case: tuple[str, bytes]) -> None:
        path, body = case
        _check_answer(*_send(frontend.url + path, body))
        sent[0] += 1
        if sent[0] % CHECK_EVERY == 0:
            still_serving()

    one_request()
    still_serving()
    print(f"fuzz: {sent[0]} generated requests, a good one checked every {CHECK_EVERY}")
    assert sent[0] >= EXAMPLES * 0.9
