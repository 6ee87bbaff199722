"""The local runner mounts a pod's Secret volumes like a kubelet: 0600 files with the
decoded values, paths in env rewritten to them, refused while the Secret is missing."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from deepserve.operator.dev.runner import materialise, secret_volumes, write_secret

pytestmark = pytest.mark.unit


class FakeKube:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Any:
        return self.objects.get((kind, name))


def _pod() -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "status": {"podIP": "127.0.0.5"},
            "spec": {"containers": [{
                "name": "triton", "command": ["/bin/sh", "-c", "exec tritonserver"],
                "args": ["--model-repository=/models"],
                "env": [{"name": "DEEPSERVE_USAGE_TOKEN_FILE",
                         "value": "/var/run/secrets/deepserve.io/usage/token"}],
                "volumeMounts": [{"name": "model-repository", "mountPath": "/models"},
                                 {"name": "usage-credential", "readOnly": True,
                                  "mountPath": "/var/run/secrets/deepserve.io/usage"}]}],
                "volumes": [{"name": "model-repository", "configMap": {"name": "repo"}},
                            {"name": "usage-credential", "secret": {
                                "secretName": "m-usage-credential",
                                "items": [{"key": "token", "path": "token"}]}}]}}


def test_secret_volume_is_written_0600_and_the_env_path_points_at_it(tmp_path: Path) -> None:
    kube = FakeKube({("ConfigMap", "repo"): {"data": {"config.pbtxt": "x"}},
                     ("Secret", "m-usage-credential"): {"data": {"token": base64.b64encode(b"dsw1:tok").decode()}}})
    _, env, _ = materialise(_pod(), kube, tmp_path, {})  # type: ignore[arg-type]
    token = Path(env["DEEPSERVE_USAGE_TOKEN_FILE"])
    assert token.is_relative_to(tmp_path) and token.read_text() == "dsw1:tok"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700

    (source, local), = secret_volumes(_pod(), tmp_path)
    kube.objects[("Secret", "m-usage-credential")] = {"data": {"token": base64.b64encode(b"dsw1:new").decode()}}
    write_secret(kube, "ns", source, local)  # type: ignore[arg-type]
    assert token.read_text() == "dsw1:new"  # a rotated credential reaches the played engine


def test_a_missing_secret_means_the_pod_cannot_start_yet(tmp_path: Path) -> None:
    kube = FakeKube({("ConfigMap", "repo"): {"data": {"config.pbtxt": "x"}}})
    with pytest.raises(ValueError, match="Secret ns/m-usage-credential does not exist yet"):
        materialise(_pod(), kube, tmp_path, {})  # type: ignore[arg-type]
