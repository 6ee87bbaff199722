"""A real Triton (from the nvidia-pytriton wheel) serves a tiny deepserve model.

One server for the module (each start costs ~20 s on 2 cores). Outputs are compared with
the in-process engine, not only status codes (see NOTES.md on numpy 2).
"""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepserve.engine.options import EngineOptions
from deepserve.engine.triton.local import ADMIN_KEY_HEADER, LocalTriton
from deepserve.engine.triton.repository import write_model_repository

pytestmark = [pytest.mark.triton, pytest.mark.slow]
grpcclient = pytest.importorskip("tritonclient.grpc")
HOST = "127.0.0.2"  # a loopback address other than the default: the host must be honoured
MODEL = "tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from deepserve.engine.build import build_engine
    from deepserve.engine.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve")
    model_dir = make_tiny_checkpoint(root / "ckpt", "llama", seed=3)
    options = EngineOptions(model_dir=str(model_dir), device="cpu", max_batch_size=4,
                            max_input_tokens=64, max_new_tokens_limit=256,
                            usage_spool_dir=str(root / "spool"), served_model=MODEL,
                            namespace="team-a", billing_account="acme")
    write_model_repository(root / "repo", MODEL, options)
    reference = build_engine(options.replace(usage_spool_dir=""))
    with LocalTriton(root / "repo", host=HOST) as server:
        yield {"server": server, "reference": reference, "spool": root / "spool"}


def _expected(served: dict[str, Any], prompt: str, max_tokens: int) -> str:
    from deepserve.engine.sampling import SamplingParams

    return str(served["reference"].generate([prompt], SamplingParams(max_tokens=max_tokens))[0].text)


def _grpc_inputs(prompt: str, max_tokens: int) -> list[Any]:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    tenant = grpcclient.InferInput("tenant", [1], "BYTES")
    tenant.set_data_from_numpy(np.array([b"tenant-7"], dtype=np.object_))
    return [text, limit, tenant]


def _post(server: LocalTriton, path: str, body: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{MODEL}/{path}",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _grpc_stream(server: LocalTriton, prompt: str, max_tokens: int,
                 request_id: str) -> tuple[list[str], Any]:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(MODEL, _grpc_inputs(prompt, max_tokens), request_id=request_id)
        pieces, final = [], None
        while final is None:
            result, error = results.get(timeout=120)
            assert error is None, error
            pieces.append(result.as_numpy("text_output")[0].decode())
            if result.as_numpy("finish_reason")[0]:
                final = result
    finally:
        client.stop_stream()
        client.close()
    return pieces, final


def test_grpc_streaming_matches_in_process_engine(served: dict[str, Any]) -> None:
    pieces, final = _grpc_stream(served["server"], "The cache holds", 10, "grpc-1")
    assert len(pieces) > 1  # streamed, not one blob
    assert "".join(pieces) == _expected(served, "The cache holds", 10)
    assert final.as_numpy("finish_reason")[0] == b"length"
    assert int(final.as_numpy("generated_tokens")[0]) == 10
    prompt_ids = served["reference"].tokenizer.encode("The cache holds")
    assert int(final.as_numpy("prompt_tokens")[0]) == len(prompt_ids)
    assert final.as_numpy("precision")[0] == b"fp32"


def test_http_streaming_and_non_streaming_return_the_same_text(served: dict[str, Any]) -> None:
    server: LocalTriton = served["server"]
    expected = _expected(served, "Sampling turns", 8)
    status, body = _post(server, "generate_stream", {"text_input": "Sampling turns", "max_tokens": 8,
                                                     "stream": True})
    assert status == 200
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert len(events) > 1 and "".join(e["text_output"] for e in events) == expected
    status, body = _post(server, "generate", {"text_input": "Sampling turns", "max_tokens": 8,
                                              "stream": False})
    assert status == 200 and json.loads(body)["text_output"] == expected


def test_bad_request_is_refused_while_others_succeed(served: dict[str, Any]) -> None:
    server: LocalTriton = served["server"]
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(MODEL, _grpc_inputs("A request can be", 40), request_id="good-1")
        for body, field in (({"text_input": "", "max_tokens": 4}, "text_input"),
                            ({"text_input": "x", "max_tokens": 100000}, "max_tokens"),
                            ({"text_input": "x", "top_p": 7.5}, "top_p")):
            status, text = _post(server, "generate", body)
            assert status == 400 and field in json.loads(text)["error"]
        pieces = []
        while True:
            result, error = results.get(timeout=120)
            assert error is None, error
            pieces.append(result.as_numpy("text_output")[0].decode())
            if result.as_numpy("finish_reason")[0]:
                break
    finally:
        client.stop_stream()
        client.close()
    assert "".join(pieces) == _expected(served, "A request can be", 40)


def test_cancelled_stream_is_metered_as_cancelled(served: dict[str, Any]) -> None:
    server: LocalTriton = served["server"]
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(MODEL, _grpc_inputs("Metering counts", 250), request_id="cancel-me")
    assert results.get(timeout=120)[1] is None  # generation has started
    client.stop_stream(cancel_requests=True)
    client.close()
    event = _wait_for_event(served["spool"], "cancel-me")
    assert event.status == "cancelled" and 0 < event.generated_tokens < 250


def _wait_for_event(spool_dir: Path, request_id: str) -> Any:
    from deepserve.engine.usage import UsageSpool

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for event in UsageSpool(spool_dir).pending():
            if event.request_id == request_id:
                return event
        time.sleep(0.2)
    raise AssertionError(f"no usage event for {request_id}")


def test_metrics_and_usage_events_count_the_tokens(served: dict[str, Any]) -> None:
    server: LocalTriton = served["server"]
    _grpc_stream(server, "Prices per million", 6, "metered-1")
    assert _post(server, "generate", {"text_input": ""})[0] == 400
    event = _wait_for_event(served["spool"], "metered-1")
    assert (event.model, event.namespace, event.account, event.tenant) == (
        MODEL, "team-a", "acme", "tenant-7")
    assert event.status == "ok" and event.generated_tokens == 6 and event.precision == "fp32"
    with urllib.request.urlopen(server.metrics_url, timeout=30) as resp:
        lines = resp.read().decode().splitlines()

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    assert value("deepserve_generated_tokens_total{") >= 6
    assert value("deepserve_prompt_tokens_total{") >= event.prompt_tokens
    assert value("deepserve_rejected_requests_total{") >= 1
    assert value("deepserve_time_to_first_token_seconds_count{") >= 1
    assert value('deepserve_precision_info{model="tiny",precision="fp32"') == 1
    assert value("nv_inference_request_success{") > 0


def _admin(server: LocalTriton, method: str, path: str, key: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers[ADMIN_KEY_HEADER] = key
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=data, headers=headers,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v2/logging"),
                                              ("POST", "/v2/repository/index"),
                                              ("GET", "/v2/trace/setting")])
def test_admin_apis_need_the_admin_key(served: dict[str, Any], method: str, path: str) -> None:
    server: LocalTriton = served["server"]
    assert _admin(server, method, path, None) == 403
    assert _admin(server, method, path, "not-the-key") == 403
    assert _admin(server, method, path, server.admin_key) == 200
    # inference is not restricted: a tenant request still answers
    status, body = _post(server, "generate", {"text_input": "hi", "max_tokens": 2, "stream": False})
    assert status == 200 and json.loads(body)["text_output"] == _expected(served, "hi", 2)


def test_grpc_repository_index_needs_the_admin_key(served: dict[str, Any]) -> None:
    server: LocalTriton = served["server"]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(Exception, match="protocol is restricted"):
        client.get_model_repository_index()
    # Triton's gRPC side expects the header with its own prefix
    header = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
    with pytest.raises(Exception, match="protocol is restricted"):
        client.get_model_repository_index(headers={header: "not-the-key"})
    index = client.get_model_repository_index(headers={header: server.admin_key})
    assert MODEL in {m.name for m in index.models}


def test_deeply_nested_json_does_not_crash_the_server(served: dict[str, Any]) -> None:
    # With the default 8 MiB stack ~110k levels killed tritonserver (SIGSEGV in its recursive
    # JSON parser); LocalTriton raises the stack limit as the pod's launch command does.
    server: LocalTriton = served["server"]
    depth = 1_000_000  # a 2 MB body, nine times the old crash depth
    body = b'{"text_input": "hi", "max_tokens": 2, "stream": false, "pad": ' + b"[" * depth + b"]" * depth + b"}"
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{MODEL}/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=60)
    assert refused.value.code == 400 and b"pad" in refused.value.read()
    assert server.process is not None and server.process.poll() is None
    status, text = _post(server, "generate", {"text_input": "hi", "max_tokens": 2, "stream": False})
    assert status == 200 and json.loads(text)["text_output"] == _expected(served, "hi", 2)


def test_http_generate_errors_are_4xx_naming_the_input(served: dict[str, Any]) -> None:
    server: LocalTriton = served["server"]
    for bad, field in (({"text_input": "hi", "max_tokens": 0, "stream": False}, "max_tokens"),
                       ({"text_input": "hi", "stop": ["s"] * 17, "stream": False}, "stop"),
                       ({"text_input": "hi", "chat_messages": "[]", "stream": False}, "text_input"),
                       ({"chat_messages": "[]", "stream": False}, "chat_messages")):
        status, body = _post(server, "generate", bad)
        assert status == 400 and json.loads(body)["error"].startswith(field), body
