"""Per-model usage write credentials on the real control plane, with the chart's RBAC and
admission policy: the operator (as the chart's ServiceAccount) creates each model's Secret,
the Deployment mounts it, the real billing server accepts usage signed with it for that
model only, a rotated key is re-minted, deleting the model deletes the Secret, and no
secret shows in the operator's log, Events or metrics."""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from model_cases import make_model
from ops_helpers import IM, wait_for

from deepserve.engine.usage import UsageEvent, encode_batch
from deepserve.operator.dev.stack import Stack, helm_install, run_tool
from deepserve.operator.kube import Kube
from deepserve.operator.metering.credentials import key_id, mint_write_token

pytestmark = [pytest.mark.integration]
RELEASE, SYSTEM_NS = "ucred", "deepserve-ucred"


def _post(url: str, token: str, events: list[UsageEvent]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{url}/v1/usage/events", data=encode_batch(events), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _event(namespace: str, model: str, i: int) -> UsageEvent:
    end = datetime.now(UTC) - timedelta(seconds=5)
    return UsageEvent.create(model=model, version="main", namespace=namespace, account="acme",
                             request_id=f"{model}-{i}-{secrets.token_hex(4)}", prompt_tokens=3,
                             generated_tokens=4, compute_ms=1.0, precision="bf16",
                             started_at=end - timedelta(seconds=1), ended_at=end)


def _token(kube: Kube, namespace: str, model: str) -> str:
    secret = kube.get("v1", "Secret", f"{model}-usage-credential", namespace)
    assert secret is not None, f"no Secret {namespace}/{model}-usage-credential"
    return base64.b64decode(secret["data"]["token"]).decode()


@pytest.fixture
def stack(cluster: Any, kube: Kube, tmp_path: Path) -> Any:
    helm_install(cluster.kubeconfig, {"replicaCount": 1, "persistence": {"enabled": False},
                                      "operator": {"peering": {"enabled": False}},
                                      "gateway": {"enabled": False}},
                 namespace=SYSTEM_NS, release=RELEASE)
    sa = json.loads(run_tool("kubectl", "get", "sa", "-n", SYSTEM_NS, "-l",
                             f"app.kubernetes.io/instance={RELEASE}", "-o", "json",
                             kubeconfig=cluster.kubeconfig).stdout)["items"][0]["metadata"]["name"]
    work = tmp_path / "stack"
    work.mkdir()
    st = Stack(admin_kubeconfig=cluster.kubeconfig, work_dir=work, namespace=SYSTEM_NS, service_account=sa)
    try:
        st.start_billing()
        st.start_operator()
        yield st
    finally:
        st.stop()
        run_tool("helm", "uninstall", RELEASE, "-n", SYSTEM_NS, kubeconfig=cluster.kubeconfig, check=False)


def test_each_model_gets_its_own_write_credential_end_to_end(cluster: Any, kube: Kube, namespace: str,
                                                             stack: Any) -> None:
    sa_user = f"system:serviceaccount:{SYSTEM_NS}:{stack.service_account}"
    # the operator writes Secrets but can never read one through the API
    for verb in ("get", "list", "watch"):
        can = run_tool("kubectl", "auth", "can-i", verb, "secrets", "-n", namespace, f"--as={sa_user}",
                       kubeconfig=cluster.kubeconfig, check=False)
        assert can.stdout.strip() == "no", verb
    # ... and the admission policy keeps its writes to its models' usage credentials
    foreign = run_tool("kubectl", "create", "secret", "generic", "db-password", "-n", namespace,
                       "--from-literal=p=x", f"--as={sa_user}", kubeconfig=cluster.kubeconfig, check=False)
    assert foreign.returncode != 0 and "usage-credential" in foreign.stderr, foreign.stderr

    for name in ("a", "b"):
        kube.create(make_model(name, namespace).obj())
    uid_a = kube.get(IM, "InferenceModel", "a", namespace)["metadata"]["uid"]
    wait_for(lambda: all(kube.get("v1", "Secret", f"{m}-usage-credential", namespace) for m in "ab"),
             "both usage-credential Secrets", 60)
    secret = kube.get("v1", "Secret", "a-usage-credential", namespace)
    md = secret["metadata"]
    assert md["labels"]["deepserve.io/model"] == "a"
    assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in md["ownerReferences"]] == [
        ("InferenceModel", "a", uid_a, True)]
    assert md["annotations"]["deepserve.io/ingest-key-id"] == key_id(stack.ingest_key.encode())

    deployment = wait_for(lambda: kube.get("apps/v1", "Deployment", "a-main", namespace), "Deployment a-main", 60)
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "usage-credential")
    assert volume["secret"]["secretName"] == "a-usage-credential"
    triton = pod["containers"][0]
    mount = next(m for m in triton["volumeMounts"] if m["name"] == "usage-credential")
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["DEEPSERVE_USAGE_TOKEN_FILE"].startswith(mount["mountPath"] + "/")

    token_a, token_b = _token(kube, namespace, "a"), _token(kube, namespace, "b")
    ok = _event(namespace, "a", 0)
    status, body = _post(stack.billing_url, token_a, [ok])
    assert status == 200 and body["accepted"] == [ok.event_id], body
    status, body = _post(stack.billing_url, token_a, [_event(namespace, "b", 1)])
    assert status == 403 and body["field"] == "model", body
    assert f"{namespace}/a only" in body["error"] and f"{namespace}/b" in body["error"]
    status, body = _post(stack.billing_url, token_a.replace(f"{namespace}/a", f"{namespace}/b"),
                         [_event(namespace, "b", 2)])
    assert status == 401 and "write credential" in body["error"], body  # a forged scope
    status, body = _post(stack.billing_url, stack.billing_token, [_event(namespace, "a", 3)])
    assert status == 403 and "read credential cannot ingest" in body["error"], body
    status, body = _post(stack.billing_url, token_b, [_event(namespace, "b", 4)])
    assert status == 200, body

    # rotation: the key file changes in place (as the kubelet swaps a Secret's files)
    new_key = secrets.token_hex(32)
    tmp = stack.ingest_key_file.with_name(".ingest-key.new")
    tmp.write_text(new_key)
    tmp.chmod(0o600)
    os.replace(tmp, stack.ingest_key_file)

    def reminted() -> bool:
        s = kube.get("v1", "Secret", "b-usage-credential", namespace) or {}
        return (s.get("metadata") or {}).get("annotations", {}).get("deepserve.io/ingest-key-id") == key_id(
            new_key.encode())

    wait_for(reminted, "b's Secret re-minted under the new key", 60)
    new_b = _token(kube, namespace, "b")
    assert new_b == mint_write_token(new_key.encode(), namespace, "b") != token_b
    assert _post(stack.billing_url, new_b, [_event(namespace, "b", 5)])[0] == 200
    assert _post(stack.billing_url, token_b, [_event(namespace, "b", 6)])[0] == 200  # within the grace

    kube.delete(IM, "InferenceModel", "a", namespace)
    wait_for(lambda: kube.get("v1", "Secret", "a-usage-credential", namespace) is None,
             "a's Secret deleted with its model (garbage collector)", 90)
    assert kube.get("v1", "Secret", "b-usage-credential", namespace) is not None

    # no secret in the operator's or billing's log, in Events or in metrics
    leaks = [stack.ingest_key, new_key, token_a, token_b, new_b, stack.billing_token]
    logs = {p.name: p.log.read_text(errors="replace") for p in (stack.operator, stack.billing) if p}
    assert "applied" in logs["operator"], logs["operator"][-2000:]  # the log is there to search
    events = json.dumps(kube.list("v1", "Event", namespace))
    req = urllib.request.Request(f"{stack.billing_url}/metrics",
                                 headers={"Authorization": f"Bearer {stack.billing_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        metrics = r.read().decode()
    for where, text in {**logs, "events": events, "metrics": metrics}.items():
        for value in leaks:
            assert value not in text, f"a secret appears in the {where}"
        assert "dsw1:" not in text, where
