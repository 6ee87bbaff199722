"""Each model gets its own usage write credential: a Secret owned by the model, minted from
the ingest key, mounted read-only into that model's engine pods only, re-minted when the
key rotates. The token is scoped to the model; the key never leaves the operator."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fake_api import FakeApi
from model_cases import make_model

from deepserve.operator.builders import Settings, build_children
from deepserve.operator.builders.context import ModelRef
from deepserve.operator.builders.usage_credential import (
    ANNOTATION_KEY_ID,
    TOKEN_FILE_ENV,
    USAGE_TOKEN_DIR,
    USAGE_TOKEN_FILE,
    build_usage_credential_secret,
    usage_credential_name,
)
from deepserve.operator.controller.reconcile import Observed, decide, reconcile
from deepserve.operator.controller.usage_credentials import UsageCredentials
from deepserve.operator.metering.credentials import (
    IngestKeyFile,
    WriteScope,
    hmac_write_auth,
    key_id,
    mint_write_token,
)
from deepserve.operator.placement import PoolOffer

pytestmark = pytest.mark.unit
KEY = b"unit-ingest-key-0123456789abcdef"
NOW = "2026-11-29T00:00:00Z"
POOLS = [PoolOffer("l4", "nvidia-l4", 1, 3, 3, 0.7, "USD", 3, {"cloud.google.com/gke-nodepool": "l4"})]
ON = Settings(usage_credentials=True, usage_endpoint="http://billing:8080/v1/usage/events")


def _token(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


def test_the_secret_is_owned_by_the_model_labelled_and_holds_its_scoped_token() -> None:
    ref = ModelRef("chat", "team-a", "uid-1")
    secret = build_usage_credential_secret(ref, mint_write_token(KEY, "team-a", "chat"), key_id(KEY))
    md = secret["metadata"]
    assert (secret["kind"], md["name"], md["namespace"]) == ("Secret", "chat-usage-credential", "team-a")
    assert md["labels"]["deepserve.io/model"] == "chat"
    assert md["labels"]["app.kubernetes.io/managed-by"] == "deepserve-operator"
    assert md["ownerReferences"] == [{"apiVersion": "deepserve.io/v1alpha1", "kind": "InferenceModel",
                                      "name": "chat", "uid": "uid-1", "controller": True,
                                      "blockOwnerDeletion": True}]
    assert md["annotations"][ANNOTATION_KEY_ID] == key_id(KEY)
    assert hmac_write_auth(KEY)(_token(secret)) == WriteScope("team-a", "chat")
    assert KEY.decode() not in repr(secret)  # the key is in no object, only its id
    assert key_id(KEY) != key_id(b"another-ingest-key-0123456789ab") and len(key_id(KEY)) == 16


def test_engine_pods_mount_the_secret_read_only_and_env_names_only_the_path() -> None:
    model = make_model("llama").obj()
    model["metadata"]["uid"] = "u"
    deployment = next(c for c in decide(model, POOLS, ON).children if c["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "usage-credential")
    assert volume["secret"] == {"secretName": usage_credential_name("llama"), "defaultMode": 0o440,
                                "items": [{"key": "token", "path": "token"}]}
    triton, frontend = pod["containers"]
    mount = next(m for m in triton["volumeMounts"] if m["name"] == "usage-credential")
    assert mount == {"name": "usage-credential", "mountPath": USAGE_TOKEN_DIR, "readOnly": True}
    assert {"name": TOKEN_FILE_ENV, "value": USAGE_TOKEN_FILE} in triton["env"]
    assert USAGE_TOKEN_FILE.startswith(USAGE_TOKEN_DIR + "/")
    assert "usage-credential" not in str(frontend.get("volumeMounts"))  # only the engine ships usage
    assert "dsw1" not in repr(deployment) and "secretKeyRef" not in repr(deployment)
    # the Secret is no build_children child: the builders never see the key
    assert not [c for c in decide(model, POOLS, ON).children if c["kind"] == "Secret"]
    off = next(c for c in decide(model, POOLS, Settings()).children if c["kind"] == "Deployment")
    assert "usage-credential" not in repr(off) and TOKEN_FILE_ENV not in repr(off)


def test_leaderworkerset_pods_mount_it_too() -> None:
    from deepserve.operator.builders.leaderworkerset import build_leaderworkerset  # noqa: F401 (exists)

    model = make_model("big").obj()
    model["metadata"]["uid"] = "u"
    d = decide(model, POOLS, ON)
    assert d.plan is not None and d.plan.chosen is not None
    ctx_children = build_children(dataclasses.replace(
        _ctx(model, d), placement=dataclasses.replace(d.plan.chosen, nodes_per_replica=2)))
    lws = next(c for c in ctx_children if c["kind"] == "LeaderWorkerSet")
    assert USAGE_TOKEN_FILE in repr(lws) and usage_credential_name("big") in repr(lws)


def _ctx(model: dict[str, Any], d: Any) -> Any:
    from deepserve.operator.builders import BuildContext

    md = model["metadata"]
    return BuildContext(ModelRef(md["name"], md["namespace"], md["uid"]), d.spec, d.plan.chosen, ON, d.replicas)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run(api: FakeApi, model: dict[str, Any], creds: UsageCredentials, clock: float,
         last: dict[str, Any] | None = None, applied: dict[Any, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    seen = api.observed(model, POOLS)
    # the operator never lists Secrets (no RBAC to read them): they are not observed children
    seen = Observed(model=seen.model, children={k: v for k, v in seen.children.items() if k[0] != "Secret"},
                    deployments=seen.deployments, pools=POOLS)
    cache = getattr(api, "applied_cache", None) if applied is None else applied
    if cache is None:
        cache = api.applied_cache = {}  # type: ignore[attr-defined]
    return reconcile(seen, api, ON, cache, NOW, last, clock=clock, credentials=creds)


def test_reconcile_applies_it_first_then_only_on_rotation_recreation_or_refresh(tmp_path: Path) -> None:
    key_file = tmp_path / "ingest-key"
    key_file.write_bytes(KEY)
    ticks = _Clock()
    creds = UsageCredentials(IngestKeyFile(key_file, refresh_s=5.0, clock=ticks), refresh_s=300.0)
    api = FakeApi()
    order: list[str] = []
    sent: list[dict[str, Any]] = []
    applied_by_api = api.apply
    api.apply = lambda obj: (order.append(obj["kind"]), sent.append(obj),  # type: ignore[method-assign]
                             applied_by_api(obj))[2]
    model = make_model("chat", "team-a").obj()
    model["metadata"].update(uid="uid-1", generation=1)
    model["status"] = {}

    result, status = _run(api, model, creds, clock=0.0)
    assert "Secret/chat-usage-credential" in result.applied
    assert order.index("Secret") < order.index("Deployment")  # the pod's volume exists first
    secret = api.objects[("Secret", "chat-usage-credential")]
    assert hmac_write_auth(KEY)(_token(secret)) == WriteScope("team-a", "chat")

    order.clear()
    result, status = _run(api, model, creds, clock=10.0, last=status)
    assert "Secret" not in order and result.applied == []

    new_key = b"rotated-ingest-key-0123456789abc"
    key_file.write_bytes(new_key)
    ticks.t = 6.0  # the key file is re-read at most every refresh_s
    result, status = _run(api, model, creds, clock=20.0, last=status)
    secret = api.objects[("Secret", "chat-usage-credential")]
    assert result.applied == ["Secret/chat-usage-credential"]
    assert secret["metadata"]["annotations"][ANNOTATION_KEY_ID] == key_id(new_key)
    assert hmac_write_auth(new_key)(_token(secret)) == WriteScope("team-a", "chat")
    assert hmac_write_auth(KEY)(_token(secret)) is None

    order.clear()
    result, status = _run(api, model, creds, clock=20.0 + 301.0, last=status)
    assert order == ["Secret"] and result.applied == []  # a periodic refresh posts no Event

    recreated = {**model, "metadata": {**model["metadata"], "uid": "uid-2"}}
    order.clear()
    _run(api, recreated, creds, clock=330.0)
    assert "Secret" in order
    secret = next(o for o in reversed(sent) if o["kind"] == "Secret")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-2"


def test_an_unreadable_key_file_keeps_the_last_key(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_bytes(KEY)
    ticks = _Clock()
    keys = IngestKeyFile(key_file, refresh_s=1.0, clock=ticks)
    key_file.unlink()  # the kubelet swapping the Secret's files
    ticks.t = 2.0
    assert keys.current() == KEY and "cannot read" in (keys.error or "")
    key_file.write_bytes(b"short")
    ticks.t = 4.0
    assert keys.current() == KEY and "at least 16 bytes" in (keys.error or "")
    assert KEY.decode() not in (keys.error or "")
