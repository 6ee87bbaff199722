"""`deepserve gateway run` as a process: keys from the real API server, the real openai client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from upstreams import WORDS, LoopThread, billing_app, pod_app

from deepserve.operator.commands.keys import create_key, revoke_key
from deepserve.operator.kube import Kube
from deepserve.operator.tenancy.tenants import API_VERSION, build_tenant

pytestmark = pytest.mark.integration
BILLING_TOKEN = "billing-read-token-" + uuid.uuid4().hex


@pytest.fixture
def upstreams() -> Iterator[tuple[LoopThread, list[dict[str, Any]], dict[str, str]]]:
    loop = LoopThread()
    seen: list[dict[str, Any]] = []
    amounts: dict[str, str] = {}
    yield loop, seen, amounts
    loop.close()


@pytest.fixture
def tenants(tenancy_kube: Kube) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    free, capped = f"free-{suffix}", f"capped-{suffix}"
    tenancy_kube.create(build_tenant(free, {"plan": {"models": {"namespaces": ["demo"]}}}))
    tenancy_kube.create(build_tenant(capped, {"plan": {"models": {"allowAll": True},
                                                       "monthlySpendCap": {"amount": "1.50"}}}))
    yield free, capped
    for name in (free, capped):
        tenancy_kube.delete(API_VERSION, "Tenant", name)


def _wait(check: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.05)
    return time.monotonic() - start


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def test_gateway_run_serves_tenants_through_keys(cluster: Any, tenancy_kube: Kube, namespace: str,
                                                 tenants: tuple[str, str], upstreams: Any,
                                                 tmp_path: Path) -> None:
    loop, seen, amounts = upstreams
    free, capped = tenants
    pod = loop.serve(pod_app(seen))
    billing = loop.serve(billing_app(BILLING_TOKEN, amounts))
    routes = tmp_path / "routes.yaml"
    routes.write_text(json.dumps([{"namespace": "demo", "name": "tiny", "upstream": pod,
                                   "aliases": ["tiny-chat"]},
                                  {"namespace": "other", "name": "secret-model", "upstream": pod}]))
    token_file = tmp_path / "billing-token"
    token_file.write_text(BILLING_TOKEN + "\n")
    key, _ = create_key(tenancy_kube, namespace, free, None)
    capped_key, _ = create_key(tenancy_kube, namespace, capped, None)
    amounts[capped] = "1.50"  # at the cap

    port_file = tmp_path / "port"
    log_path = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "deepserve.operator.cli", "-v", "gateway", "run",
           "--kubeconfig", cluster.kubeconfig, "--keys-namespace", namespace,
           "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--port-file", str(port_file),
           "--routes-file", str(routes),
           "--billing-url", billing, "--billing-token-file", str(token_file)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        _wait(lambda: port_file.exists() and port_file.read_text(), 30, "gateway port")
        public, admin = port_file.read_text().split()
        url = f"http://127.0.0.1:{public}"
        assert _status(url + "/readyz") == 200
        assert _status(f"http://127.0.0.1:{admin}/metrics") == 200
        assert _status(url + "/metrics") == 404  # other tenants' model names stay off the public port
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)

        answer = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert answer.choices[0].message.content == "".join(WORDS)
        assert answer.usage is not None and answer.usage.total_tokens == 9
        assert seen[-1]["X-Deepserve-Tenant"] == free and "Authorization" not in seen[-1]

        stream = client.chat.completions.create(
            model="demo/tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

        assert [m.id for m in client.models.list()] == ["demo/tiny"]  # only its plan's models
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other/secret-model",
                                           messages=[{"role": "user", "content": "hi"}])
        calls = len(seen)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key=key[:-1] + "x", max_retries=0).models.list()
        capped_client = openai.OpenAI(base_url=url + "/v1", api_key=capped_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            capped_client.chat.completions.create(model="tiny-chat",
                                                  messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 402
        assert len(seen) == calls  # refused requests never reached the pod

        assert revoke_key(tenancy_kube, namespace, key.split("-")[1])

        def refused() -> bool:
            try:
                client.models.list()
            except openai.AuthenticationError:
                return True
            return False

        latency = _wait(refused, 5.0, "revoked key still accepted after 5 s")
        print(f"gateway refused the revoked key {latency:.2f} s after the Secret was deleted")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = log_path.read_text()
    for secret in (key.split("-", 2)[2], capped_key.split("-", 2)[2], BILLING_TOKEN):
        assert secret not in text
    assert BILLING_TOKEN not in " ".join(cmd)  # from a file, never argv
    assert "gateway serving" in text


def test_gateway_run_refuses_bad_flags(tmp_path: Path) -> None:
    redis_file = tmp_path / "redis-url"
    redis_file.write_text("localhost:6379\n")
    base = [sys.executable, "-m", "deepserve.operator.cli", "gateway", "run"]
    for extra, field in ((["--listen", "nowhere"], "--listen"),
                         (["--tls-cert-file", str(tmp_path / "c.pem")], "--tls-key-file"),
                         (["--billing-url", "http://x"], "--billing-token-file"),
                         (["--redis-url-file", str(redis_file)], "--redis-url-file"),
                         (["--admin-listen", "x"], "--admin-listen")):
        out = subprocess.run(base + extra, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and field in out.stderr, out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gateway_processes_share_limits_through_redis(cluster: Any, tenancy_kube: Kube, namespace: str,
                                                         upstreams: Any, tmp_path: Path) -> None:
    """requestsPerMinute: 3 holds across two replicas when both get --redis-url-file (real redis-server)."""
    loop, seen, _ = upstreams
    pod = loop.serve(pod_app(seen))
    tenant = f"limited-{uuid.uuid4().hex[:6]}"
    tenancy_kube.create(build_tenant(tenant, {"plan": {"models": {"allowAll": True}, "requestsPerMinute": 3}}))
    key, _ = create_key(tenancy_kube, namespace, tenant, None)
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps([{"namespace": "demo", "name": "tiny", "upstream": pod}]))
    redis_port = _free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis_file = tmp_path / "redis-url"
    redis_file.write_text(f"redis://127.0.0.1:{redis_port}/0\n")
    procs = []
    try:
        for i in range(2):
            port_file = tmp_path / f"port-{i}"
            cmd = [sys.executable, "-m", "deepserve.operator.cli", "gateway", "run",
                   "--kubeconfig", cluster.kubeconfig, "--keys-namespace", namespace,
                   "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--routes-file", str(routes),
                   "--redis-url-file", str(redis_file)]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port_file))
        urls = []
        for _proc, port_file in procs:
            _wait(lambda pf=port_file: pf.exists() and pf.read_text(), 30, "gateway port")
            urls.append(f"http://127.0.0.1:{port_file.read_text().split()[0]}")
        codes = []
        for i in range(5):  # alternate replicas: 3 admitted in all, then 429
            client = openai.OpenAI(base_url=urls[i % 2] + "/v1", api_key=key, max_retries=0)
            try:
                client.chat.completions.create(model="demo/tiny", messages=[{"role": "user", "content": "x"}])
                codes.append(200)
            except openai.RateLimitError:
                codes.append(429)
        assert codes == [200, 200, 200, 429, 429]
        assert len(seen) == 3
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(15)
        redis.terminate()
        redis.wait(10)
        tenancy_kube.delete(API_VERSION, "Tenant", tenant)
