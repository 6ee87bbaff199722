"""``make demo``: the local-cluster demo, end to end, with progress for people.

Starts the local control plane, installs the Helm chart, starts the operator (as the
chart's ServiceAccount), the billing endpoint and the dev-only local runner, applies the
sample model and price list, waits for Ready, sends a few prompts, and shows the model,
its placement reasons and the bill so far. Everything keeps running afterwards;
``python -m deepserve.operator.dev.demo --down`` (``make demo-down``) stops it all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from deepserve.operator.dev.cluster import LocalCluster
from deepserve.operator.dev.demo_flow import (
    CallResult,
    FrontDoor,
    call_through_gateway,
    expected_cost,
    pod_frontend_up,
    wait_current_rollout,
)
from deepserve.operator.dev.stack import REPO_ROOT, Stack, StackError, helm_install, run_tool
from deepserve.operator.kube import Kube

NAMESPACE = "demo"
MODEL = "tiny-chat"  # builtin://tiny-chat: trained at first start (~30 s), then cached
TENANT = "acme"
PROMPTS = ["A model server answers", "Metering counts prompt tokens", "Sparse attention reads"]
MANIFEST = {"apiVersion": "deepserve.io/v1alpha1", "kind": "InferenceModel", "metadata": {"name": MODEL},
            "spec": {"source": {"uri": f"builtin://{MODEL}"}, "aliases": ["chat"]}}


def say(msg: str) -> None:
    print(f"\033[1m==>\033[0m {msg}", flush=True)


def pids_file(cluster: LocalCluster) -> Path:
    return cluster.state_dir / "demo" / "pids.json"


def down(cluster: LocalCluster) -> int:
    """Stop the demo's processes and the local cluster."""
    f = pids_file(cluster)
    if f.exists():
        for name, pid in json.loads(f.read_text()).items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                say(f"stopped {name} (pid {pid})")
        f.unlink()
    stopped = cluster.stop()
    say("stopped the local cluster: " + (", ".join(stopped) or "it was not running"))
    return 0


def kubectl(cluster: LocalCluster, *args: str) -> str:
    return run_tool("kubectl", *args, kubeconfig=str(cluster.kubeconfig)).stdout


def up() -> int:
    """Run the demo; leaves everything running."""
    cluster = LocalCluster(say=say)
    say("starting the local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)")
    cluster.start()
    kc = str(cluster.kubeconfig)
    say("installing the deepserve Helm chart into deepserve-system")
    helm_install(kc, {"replicaCount": 1, "persistence": {"enabled": False},
                      "operator": {"peering": {"enabled": False}}, "gateway": {"enabled": True}})
    sa = json.loads(kubectl(cluster, "get", "sa", "-n", "deepserve-system", "-l",
                            "app.kubernetes.io/instance=deepserve,app.kubernetes.io/component=operator",
                            "-o", "json"))["items"][0]["metadata"]["name"]
    work = cluster.state_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(admin_kubeconfig=kc, work_dir=work, service_account=sa)
    say("starting the billing endpoint, the operator (as the chart's ServiceAccount) and the local runner")
    stack.start_billing()
    stack.start_operator()
    stack.start_runner()
    door = FrontDoor(kc, work, stack.billing_url, work / "billing-token")
    say("starting the gateway (as the chart's gateway ServiceAccount)")
    door.start_gateway()
    pids_file(cluster).write_text(json.dumps(
        {p.name: p.proc.pid for p in (stack.operator, stack.billing, stack.runner, door.gateway) if p}))
    say(f"applying GPU node pool prices and the model {MODEL} (builtin://{MODEL}, alias 'chat')")
    kubectl(cluster, "apply", "-f", str(REPO_ROOT / "examples" / "05-gpu-node-pool.yaml"))
    run_tool("kubectl", "create", "namespace", NAMESPACE, kubeconfig=kc, check=False)
    run_tool("kubectl", "apply", "-n", NAMESPACE, "-f", "-", kubeconfig=kc, input=json.dumps(MANIFEST))
    say("waiting for the current rollout to be Ready (the runner starts a real Triton per engine pod)")
    kube = Kube.from_kubeconfig(kc)

    def alive() -> None:
        for p in (stack.operator, stack.billing, stack.runner, door.gateway):
            if p is not None and not p.alive():
                raise StackError(f"{p.name} exited:\n{p.tail()}")

    status, ips = wait_current_rollout(kube, NAMESPACE, MODEL, timeout=300, say=say, check_alive=alive)
    code = _finish(cluster, stack, status, ips[0])
    if pod_frontend_up(ips[0]):
        front_door(kube, door, stack)
    else:
        say(f"the engine pod at {ips[0]} serves no OpenAI frontend on :9000 in this build, so the "
            "gateway step (tenant, key, openai client, tenant bill) is skipped")
    kube.close()
    return code


def _generate(ip: str, prompt: str, max_tokens: int, request_id: str) -> dict[str, Any]:
    import urllib.request

    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens, "stream": False,
                       "id": request_id}).encode()
    req = urllib.request.Request(f"http://{ip}:8000/v2/models/{MODEL}/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return dict(json.loads(r.read()))


def _finish(cluster: LocalCluster, stack: Stack, status: dict[str, Any], ip: str) -> int:
    say(f"sending {len(PROMPTS)} prompts to the engine pod at {ip}:8000 "
        f"(builtin://{MODEL} is trained on deepserve/engine/tiny_corpus.txt: it answers in its sentences)")
    for i, prompt in enumerate(PROMPTS):
        # KServe v2 /generate takes raw text: give it the chat template's rendering of the turn.
        out = _generate(ip, f"user: {prompt}\nassistant:", 24, f"demo-{int(time.time())}-{i}")
        print(f"    {prompt!r} -> {out['text_output']!r} "
              f"({out['prompt_tokens']} prompt + {out['generated_tokens']} generated tokens)")
    print(kubectl(cluster, "get", "inferencemodels", "-A"))
    placement = status.get("placement", {})
    say(f"placement: pool {placement.get('pool')} ({placement.get('acceleratorId') or placement.get('accelerator', '?')})")
    for key in ("reasons", "reason", "estimates", "alternatives"):
        if key in placement:
            print(f"    {key}: {json.dumps(placement[key])[:600]}")
    say("the bill so far (waiting for the usage events to arrive)")
    rows: list[str] = []
    for _ in range(60):
        rows = [r for r in stack.export("csv").splitlines() if r.strip()]
        if len(rows) > 1:
            break
        time.sleep(1)
    print("\n".join("    " + r for r in rows[:12]))
    print(f"""
deepserve is running on the local cluster. Keep exploring:
  export KUBECONFIG={cluster.kubeconfig}
  $(ls ~/.cache/deepserve/tools/*/bin/kubectl) get inferencemodels -A -o wide
  .venv/bin/deepserve billing export --ledger {stack.ledger} --from 2000-01-01T00:00:00Z --to 2100-01-01T00:00:00Z --format focus
  logs: {stack.work_dir / 'logs'}
Stop everything: make demo-down
""")
    return 0


def front_door(kube: Kube, door: FrontDoor, stack: Stack) -> None:
    """Tenant + key (CLI), calls through the gateway (openai client), the tenant's bill in money."""
    from datetime import UTC, datetime

    say(f"creating Tenant {TENANT} (plan: models in namespace {NAMESPACE}, 600 req/min, 100 USD/month) "
        "and an API key with `deepserve keys create`")
    key = door.create_tenant(kube, TENANT, [NAMESPACE])
    print(f"    key {key[:16]}... (printed once by the CLI; only its salted hash is stored)")
    door.set_prices(stack.ledger)
    month = datetime.now(UTC).strftime("%Y-%m")
    before, currency = door.spend(TENANT, month)
    model = "chat"  # the model's alias (also callable as f"{NAMESPACE}/{MODEL}")
    say(f"calling {model} through the gateway at {door.url} with the openai client")
    calls: list[CallResult] = []
    for i, prompt in enumerate(PROMPTS):
        stream = i % 2 == 1
        print(f"    [{'stream' if stream else 'whole '}] {prompt!r} -> ", end="", flush=True)
        echo = (lambda t: print(repr(t)[1:-1], end="", flush=True)) if stream else (lambda _t: None)
        result = call_through_gateway(door.url, key, model, prompt, stream=stream, echo=echo, chat=True)
        if not stream:
            print(repr(result.text), end="")
        print(f"  ({result.prompt_tokens} prompt + {result.completion_tokens} generated tokens)")
        calls.append(result)
    want = before + expected_cost(calls)
    say(f"{TENANT}'s bill (token prices: 150 USD per 1M prompt, 600 per 1M generated, 0.0001 per request)")
    amount = before
    for _ in range(60):
        amount, currency = door.spend(TENANT, month)
        if amount >= want:
            break
        time.sleep(1)
    verdict = "matches the usage the gateway saw" if amount == want else f"expected {want}"
    print(f"    {TENANT} month-to-date {month}: {amount} {currency} ({verdict})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--down", action="store_true", help="stop the demo and the local cluster")
    a = ap.parse_args(argv)
    if a.down:
        return down(LocalCluster(say=say))
    try:
        return up()
    except StackError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
