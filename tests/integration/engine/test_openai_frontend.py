"""The pod's OpenAI frontend, driven by the real ``openai`` client, on a real Triton.

Texts are compared with an in-process engine of the same weights; chat prompts with what
Hugging Face transformers renders from the same tokenizer_config.json.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]
openai = pytest.importorskip("openai")
TENANT = "tenant-42"
FRONT_MODEL = "tiny-chat"  # conftest.py's
Frontend = Any  # conftest.Frontend (conftest modules are not importable)


def _client(front: Frontend, **headers: str) -> Any:
    return openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused-at-the-pod", max_retries=0,
                         default_headers=headers or None)


def _post(front: Frontend, path: str, body: bytes, headers: dict[str, str] | None = None,
          ) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{front.url}{path}", data=body,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _events(spool: Path, request_id: str, timeout: float = 30) -> list[Any]:
    from deepserve.engine.usage import UsageSpool

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in UsageSpool(spool).pending() if e.request_id == request_id]
        if found:
            time.sleep(0.5)  # a second event for the same request would show up by now
            return [e for e in UsageSpool(spool).pending() if e.request_id == request_id]
        time.sleep(0.2)
    raise AssertionError(f"no usage event for {request_id}")


def _hf_chat_prompt(front: Frontend, messages: list[dict[str, str]]) -> str:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(front.model_dir))
    text = str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return text[len(tok.bos_token):] if text.startswith(tok.bos_token) else text


def test_completion_matches_the_engine_and_bills_the_tenant(frontend: Frontend) -> None:
    client = _client(frontend, **{"X-Deepserve-Tenant": TENANT, "X-Request-Id": "front-c1"})
    out = client.completions.create(model=FRONT_MODEL, prompt="The cache holds", max_tokens=9,
                                    temperature=0)
    assert out.choices[0].text == frontend.expected("The cache holds", 9)
    assert out.choices[0].finish_reason == "length"
    prompt_tokens = len(frontend.reference.tokenizer.encode("The cache holds"))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, 9)
    (event,) = _events(frontend.spool, "front-c1")
    assert (event.tenant, event.generated_tokens, event.prompt_tokens, event.status) == (
        TENANT, 9, prompt_tokens, "ok")


def test_streamed_completion_with_usage_ends_with_done(frontend: Frontend) -> None:
    client = _client(frontend)
    chunks = list(client.completions.create(model=FRONT_MODEL, prompt="Sampling turns", max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 1 and "".join(texts) == frontend.expected("Sampling turns", 8)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    body = json.dumps({"model": FRONT_MODEL, "prompt": "Sampling turns", "max_tokens": 3,
                       "stream": True}).encode()
    req = urllib.request.Request(f"{frontend.url}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read().decode()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert raw.endswith("data: [DONE]\n\n") and '"usage":null' in raw


def test_chat_uses_the_models_template_like_transformers(frontend: Frontend) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    expected = frontend.expected(_hf_chat_prompt(frontend, messages), 7)
    client = _client(frontend)
    out = client.chat.completions.create(model=FRONT_MODEL, messages=messages, max_tokens=7,
                                         temperature=0)
    assert out.choices[0].message.content == expected and out.usage.completion_tokens == 7
    stream = client.chat.completions.create(model=FRONT_MODEL, messages=messages, max_tokens=7,
                                            temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_models_health_and_inference_gateway_metrics(frontend: Frontend) -> None:
    assert [m.id for m in _client(frontend).models.list()] == [FRONT_MODEL]
    with urllib.request.urlopen(f"{frontend.url}/health", timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{frontend.url}/metrics", timeout=10) as resp:
        page = resp.read().decode()
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc", "vllm:lora_requests_info"):
        assert f"# TYPE {name} gauge" in page and f'{name}{{model_name="{FRONT_MODEL}"' in page


@pytest.mark.parametrize(("body", "status", "param"), [
    (b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": "3"}', 400, "max_tokens"),
    (b'{"model": "tiny-chat", "prompt": ', 400, None),
    (b'{"model": "nope", "prompt": "hi"}', 404, "model"),
    (b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": 1001}', 400, "max_tokens"),
    (b'{"model": "tiny-chat", "prompt": "hi", "logprobs": 2}', 400, "logprobs"),
    (b'{"model": "tiny-chat", "prompt": "' + b"word " * 300 + b'"}', 400, "prompt"),
])
def test_bad_requests_get_4xx_naming_the_field(frontend: Frontend, body: bytes, status: int,
                                               param: str | None) -> None:
    code, answer = _post(frontend, "/v1/completions", body)
    assert code == status and answer["error"]["param"] == param, answer
    assert frontend.alive()


def test_prompt_plus_max_tokens_beyond_the_context_names_max_tokens(frontend: Frontend) -> None:
    prompt = "word " * 10
    prompt_tokens = len(frontend.reference.tokenizer.encode(prompt))
    assert 24 < prompt_tokens <= 128  # within the prompt limit; + 1000 is beyond the 1024 context
    code, answer = _post(frontend, "/v1/completions", json.dumps(
        {"model": FRONT_MODEL, "prompt": prompt, "max_tokens": 1000}).encode())
    assert code == 400 and answer["error"]["param"] == "max_tokens"
    assert "context" in answer["error"]["message"]


def test_oversized_and_deeply_nested_bodies_are_refused_and_nothing_crashes(frontend: Frontend) -> None:
    big = json.dumps({"model": FRONT_MODEL, "prompt": "x" * (4 << 20)}).encode()
    assert _post(frontend, "/v1/completions", big)[0] == 413
    nested = b'{"model": "tiny-chat", "prompt": "hi", "pad": ' + b"[" * 600000 + b"]" * 600000 + b"}"
    assert _post(frontend, "/v1/completions", nested)[0] == 413
    nested = b'{"model": "tiny-chat", "prompt": "hi", "pad": ' + b"[" * 200000 + b"]" * 200000 + b"}"
    code, answer = _post(frontend, "/v1/chat/completions", nested)
    assert code == 400, answer
    # Triton's own HTTP inference is behind the admin key: its JSON parser never sees the body
    req = urllib.request.Request(f"http://{frontend.triton.http_url}/v2/models/{FRONT_MODEL}/generate",
                                 data=nested, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 403
    assert frontend.alive()
    out = _client(frontend).completions.create(model=FRONT_MODEL, prompt="Still", max_tokens=4,
                                               temperature=0)
    assert out.choices[0].text == frontend.expected("Still", 4)


def _open_stream(front: Frontend, request_id: str, max_tokens: int) -> http.client.HTTPConnection:
    url = urllib.parse.urlparse(front.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    body = json.dumps({"model": FRONT_MODEL, "prompt": "Cancel me", "max_tokens": max_tokens,
                       "temperature": 0, "stream": True})
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Content-Type": "application/json", "X-Request-Id": request_id})
    return conn


def _generated_total(front: Frontend) -> float:
    with urllib.request.urlopen(front.triton.metrics_url, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("deepserve_generated_tokens_total{"))


def test_dropped_client_cancels_the_engine_and_is_billed_once(frontend: Frontend) -> None:
    before = _generated_total(frontend)
    conn = _open_stream(frontend, "front-cancel-1", 790)
    resp = conn.getresponse()
    assert resp.status == 200
    seen = 0
    while seen < 3:  # three chunks of text arrived: generation is under way
        line = resp.fp.readline()
        seen += line.startswith(b"data: ")
    dropped = time.monotonic()
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    (event,) = _events(frontend.spool, "front-cancel-1")
    assert event.status == "cancelled" and 3 <= event.generated_tokens < 790
    # how far past the drop the engine went (docs/engine.md "Cancellation")
    rate = event.generated_tokens / max(event.compute_ms / 1000, 1e-3)
    print(f"cancel: {event.generated_tokens} tokens billed, ~{seen} seen by the client, "
          f"{rate:.0f} tok/s, event {time.monotonic() - dropped:.2f}s after the drop")
    # billing equals the work: the engine's own token counter moved by exactly the billed tokens
    assert _generated_total(frontend) - before == event.generated_tokens
    # non-streaming caller that times out: cancelled too. The timeout is a fraction of the time
    # 790 tokens take at the rate just measured (which includes the prefill, so it is low): a
    # fixed 1 s let a quiet machine finish all 790 tokens before the client gave up
    timeout = min(1.0, max(0.2, 0.4 * 790 / max(rate, 1.0)))
    with pytest.raises(openai.APITimeoutError):
        _client(frontend, **{"X-Request-Id": "front-cancel-2"}).with_options(timeout=timeout).completions.create(
            model=FRONT_MODEL, prompt="Cancel me", max_tokens=790, temperature=0)
    (event,) = _events(frontend.spool, "front-cancel-2")
    assert event.status == "cancelled" and event.generated_tokens < 790
