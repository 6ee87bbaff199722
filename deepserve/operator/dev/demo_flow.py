"""The demo's steps after the stack is up: wait for the current rollout, then the front door.

- :func:`wait_current_rollout` waits until the model's status describes *this* spec
  (``status.observedGeneration`` and the ``Ready`` condition's ``observedGeneration`` equal
  ``metadata.generation``), its Deployments finished rolling out (observed, all replicas
  updated, ready and available, no old replicas left) and returns the pod IPs of the
  current ReplicaSets only. A second ``make demo`` on the same etcd therefore never trusts
  the previous run's ``Ready=True`` nor a pod IP of an old ReplicaSet (#20 item 6).
- :class:`FrontDoor` creates a Tenant and a key with the CLI, sets token prices, runs the
  gateway out of cluster as the chart's gateway ServiceAccount, calls the model through it
  with the real ``openai`` client (stream and not) and reads the tenant's bill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from deepserve.operator.dev.stack import (
    ManagedProcess,
    StackError,
    _free_port,
    service_account_kubeconfig,
    spawn,
)

IM = "deepserve.io/v1alpha1"
LABEL_MODEL = "deepserve.io/model"
REVISION = "deployment.kubernetes.io/revision"
#: Token prices the demo bills with (per million tokens, and per request).
DEMO_TOKEN_PRICES = {"promptPerMillion": "150", "generatedPerMillion": "600", "perRequest": "0.0001"}
DEMO_PRICES: dict[str, Any] = {"currency": "USD", "default": DEMO_TOKEN_PRICES}


def _ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "Ready"), {})


def rollout_state(model: dict[str, Any], deployments: list[dict[str, Any]],
                  replica_sets: list[dict[str, Any]], pods: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """``("", ips)`` when the current spec is Ready and rolled out, else ``(why not, [])``."""
    gen = model["metadata"].get("generation")
    status = model.get("status") or {}
    ready = _ready_condition(model)
    if status.get("observedGeneration") != gen:
        return f"status is for generation {status.get('observedGeneration')}, spec is {gen}", []
    if ready.get("observedGeneration", gen) != gen or ready.get("status") != "True":
        return f"Ready={ready.get('status', 'Unknown')} ({ready.get('reason', '')})", []
    if not deployments:
        return "no Deployment yet", []
    hashes: set[str] = set()
    for d in deployments:
        ds, want = d.get("status") or {}, (d.get("spec") or {}).get("replicas", 1)
        name = d["metadata"]["name"]
        if ds.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
            return f"Deployment {name} not observed yet", []
        if not (ds.get("updatedReplicas", 0) == ds.get("readyReplicas", 0) == ds.get("availableReplicas", 0)
                == ds.get("replicas", 0) == want):
            return (f"Deployment {name} rolling out ({ds.get('updatedReplicas', 0)}/{want} updated, "
                    f"{ds.get('readyReplicas', 0)} ready, {ds.get('replicas', 0)} total)"), []
        revision = (d["metadata"].get("annotations") or {}).get(REVISION)
        for rs in replica_sets:
            owners = {o.get("uid") for o in rs["metadata"].get("ownerReferences") or []}
            if d["metadata"].get("uid") in owners and (rs["metadata"].get("annotations") or {}).get(REVISION) == revision:
                hashes.add((rs["metadata"].get("labels") or {}).get("pod-template-hash", ""))
    ips = sorted(
        p["status"]["podIP"] for p in pods
        if (p["metadata"].get("labels") or {}).get("pod-template-hash") in hashes
        and not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("podIP")
        and any(c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions") or []))
    return ("" if ips else "no Ready pod of the current ReplicaSet"), ips


def wait_current_rollout(kube: Any, namespace: str, model: str, *, timeout: float, say: Callable[[str], None],
                         check_alive: Callable[[], None] = lambda: None) -> tuple[dict[str, Any], list[str]]:
    """Wait for :func:`rollout_state` to pass; returns the model's status and current pod IPs."""
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        check_alive()
        obj = kube.get(IM, "InferenceModel", model, namespace)
        if obj is not None:
            sel = f"{LABEL_MODEL}={model}"
            why, ips = rollout_state(obj, kube.list("apps/v1", "Deployment", namespace, label_selector=sel),
                                     kube.list("apps/v1", "ReplicaSet", namespace, label_selector=sel),
                                     kube.list("v1", "Pod", namespace, label_selector=sel))
            if not why:
                return dict(obj.get("status") or {}), ips
            if why != shown:
                say(f"  {why}")
                shown = why
        time.sleep(1)
    raise StackError(f"{namespace}/{model}: current rollout not Ready after {timeout:.0f}s (last: {shown})")


def pod_frontend_up(ip: str, port: int = 9000) -> bool:
    """Whether the engine pod at ``ip`` answers on its OpenAI frontend port."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=3) as r:
            return int(r.status) == 200
    except urllib.error.HTTPError:
        return True  # it answers (the health path may differ); the gateway can reach it
    except OSError:
        return False


@dataclass
class FrontDoor:
    """The demo's tenant, its key and the gateway process (keys held in files, never argv)."""

    admin_kubeconfig: str
    work_dir: Path
    billing_url: str
    billing_token_file: Path
    keys_namespace: str = "deepserve-system"
    gateway_sa: str = "deepserve-gateway"
    port: int = field(default_factory=_free_port)
    gateway: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, kubeconfig: str | None = None) -> subprocess.CompletedProcess[str]:
        """The ``deepserve`` console script (its stdout is returned, never logged)."""
        cmd = [sys.executable, "-m", "deepserve.operator.cli", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "KUBECONFIG": kubeconfig or self.admin_kubeconfig})
        if out.returncode != 0:
            raise StackError(f"deepserve {args[0]} {args[1]} failed: {out.stderr.strip()}")
        return out

    def create_tenant(self, kube: Any, tenant: str, namespaces: list[str]) -> str:
        """Apply the Tenant, revoke its keys from earlier runs, mint one key; returns the key."""
        kube.apply({"apiVersion": IM, "kind": "Tenant", "metadata": {"name": tenant},
                    "spec": {"plan": {"models": {"namespaces": namespaces}, "requestsPerMinute": 600,
                                      "monthlySpendCap": {"amount": "100"}}}},
                   field_manager="deepserve-demo")
        listing = self.cli("keys", "--namespace", self.keys_namespace, "list", "--tenant", tenant).stdout
        for line in listing.splitlines()[1:]:
            self.cli("keys", "--namespace", self.keys_namespace, "revoke", line.split()[0])
        return self.cli("keys", "--namespace", self.keys_namespace, "create", "--tenant", tenant,
                        "--expires", "1d").stdout.strip()

    def set_prices(self, ledger: Path) -> None:
        """Record the demo's token prices, effective from the start of this UTC hour.

        Usage is billed in hourly rows priced by the sheet in effect when the row's hour
        starts, so a sheet from "now" would leave this hour's calls at 0.
        """
        from datetime import UTC, datetime

        sheet = self.work_dir / "demo-prices.json"
        sheet.write_text(json.dumps(DEMO_PRICES))
        hour = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00Z")
        self.cli("billing", "prices", "--ledger", str(ledger), str(sheet), "--since", hour)

    def start_gateway(self) -> ManagedProcess:
        """Run ``deepserve gateway run`` as the chart's gateway ServiceAccount."""
        kc = service_account_kubeconfig(self.admin_kubeconfig, self.keys_namespace, self.gateway_sa,
                                        self.work_dir / "gateway.kubeconfig")
        args = [sys.executable, "-m", "deepserve.operator.cli", "gateway", "run", "--kubeconfig", str(kc),
                "--listen", f"127.0.0.1:{self.port}", "--keys-namespace", self.keys_namespace,
                "--billing-url", self.billing_url, "--billing-token-file", str(self.billing_token_file)]
        self.gateway = spawn("gateway", args, self.work_dir / "logs")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.gateway.alive():
                raise StackError(f"the gateway exited:\n{self.gateway.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self.gateway
            except OSError:
                pass
            time.sleep(0.3)
        raise StackError(f"the gateway did not get ready:\n{self.gateway.tail()}")

    def spend(self, tenant: str, month: str) -> tuple[Decimal, str]:
        """The tenant's month-to-date bill from the billing endpoint: (amount, currency)."""
        req = urllib.request.Request(f"{self.billing_url}/v1/tenants/{tenant}/spend?month={month}",
                                     headers={"Authorization": f"Bearer {self.billing_token_file.read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            doc = json.loads(r.read())
        return Decimal(doc["amount"]), str(doc["currency"])


@dataclass(frozen=True)
class CallResult:
    """What one call through the gateway returned: text and the usage it reported."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def call_through_gateway(url: str, key: str, model: str, prompt: str, *, stream: bool, chat: bool = False,
                         max_tokens: int = 32, echo: Callable[[str], None] = lambda _t: None) -> CallResult:
    """One chat (``chat``) or text completion through the gateway with the real ``openai`` client."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=2, timeout=120)
    messages: Any = [{"role": "user", "content": prompt}]
    common: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0, "seed": 7}
    if not stream:
        if chat:
            answer: Any = client.chat.completions.create(messages=messages, **common)
            text = answer.choices[0].message.content or ""
        else:
            answer = client.completions.create(prompt=prompt, **common)
            text = answer.choices[0].text
        if answer.usage is None:
            raise StackError("the gateway's answer carried no usage")
        return CallResult(text, answer.usage.prompt_tokens, answer.usage.completion_tokens)
    extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
    chunks: Any = (client.chat.completions.create(messages=messages, **common, **extra) if chat
                   else client.completions.create(prompt=prompt, **common, **extra))
    parts: list[str] = []
    prompt_tokens = completion_tokens = -1
    for chunk in chunks:
        piece = (chunk.choices[0].delta.content if chat else chunk.choices[0].text) if chunk.choices else None
        if piece:
            parts.append(piece)
            echo(piece)
        if chunk.usage is not None:
            prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
    if prompt_tokens < 0:
        raise StackError("the gateway's stream carried no usage chunk")
    return CallResult("".join(parts), prompt_tokens, completion_tokens)


def expected_cost(calls: list[CallResult]) -> Decimal:
    """What :data:`DEMO_PRICES` bill for ``calls`` (the spend endpoint must say exactly this)."""
    d = DEMO_TOKEN_PRICES
    million = Decimal(1_000_000)
    return sum((Decimal(c.prompt_tokens) * Decimal(d["promptPerMillion"]) / million
                + Decimal(c.completion_tokens) * Decimal(d["generatedPerMillion"]) / million
                + Decimal(d["perRequest"]) for c in calls), Decimal(0))
