"""The chart gives the operator what per-model usage write credentials need, and no more:
the ingest key as a read-only file (never the read token, never env), create/patch on
Secrets, and an admission policy narrowing those writes to <model>-usage-credential."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit
INGEST_KEY_FILE = "--ingest-key-file=/var/run/secrets/deepserve/ingest/ingest-key"


def test_the_ingest_key_reaches_operator_and_billing_as_a_file_only(render) -> None:
    out = render({"billing": {"token": {"ingestKeySecret": "signing", "ingestKeySecretKey": "k"}}})
    assert out.returncode == 0, out.stderr
    chart_secret = out.one("Secret")["data"]
    assert "k" not in chart_secret and "ingestKey" not in chart_secret and "token" in chart_secret
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ingest-key"]["secret"] == {"secretName": "signing", "defaultMode": 0o440,
                                               "items": [{"key": "k", "path": "ingest-key"}]}
    containers = out.containers()
    for name in ("operator", "billing"):
        c = containers[name]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["ingest-key"]["readOnly"] is True and "subPath" not in mounts["ingest-key"]
        assert INGEST_KEY_FILE in c["args"], c["args"]
        assert "secretKeyRef" not in str(c.get("env", [])) and "--dev-wildcard-ingest" not in c["args"]
    assert "billing-token" not in {m["name"] for m in containers["operator"]["volumeMounts"]}


def test_by_default_the_key_comes_from_the_token_secret(render) -> None:
    out = render()
    secret = out.one("Secret")
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "ingest-key")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert "ingestKey" in secret["data"]


def test_secret_writes_are_narrowed_to_usage_credentials_by_admission_policy(render) -> None:
    out = render()
    policy = out.one("ValidatingAdmissionPolicy")
    sa = out.one("ServiceAccount")["metadata"]
    match = policy["spec"]["matchConditions"][0]["expression"]
    assert f'system:serviceaccount:{sa["namespace"]}:{sa["name"]}' in match
    rule = policy["spec"]["matchConstraints"]["resourceRules"][0]
    assert rule["resources"] == ["secrets"] and rule["operations"] == ["CREATE", "UPDATE"]
    checks = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "oldObject == null" in checks and "-usage-credential" in checks and "InferenceModel" in checks
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = out.one("ValidatingAdmissionPolicyBinding")["spec"]
    assert binding == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert not render({"rbac": {"create": False}}).of_kind("ValidatingAdmissionPolicy")
