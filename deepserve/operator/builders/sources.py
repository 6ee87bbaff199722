"""How a version's model source reaches the engine: a volume, or an init container that fetches.

- ``pvc://<claim>/<path>``: the claim mounted read-only at ``/mnt/models``; the engine reads
  ``/mnt/models/<path>``.
- ``s3://`` and ``hf://``: an init container runs ``deepserve engine fetch`` (same image as
  the engine) into the pod's cache volume; the engine reads that directory. The
  ``credentialsSecret`` is mounted as files into the init container only, so no credential
  is in an env var, in argv or in the engine container.
- ``builtin://``: the engine creates the tiny checkpoint itself.
"""

from __future__ import annotations

from typing import Any

from deepserve.engine.fetch import FETCHED_SCHEMES, fetched_model_dir
from deepserve.operator.api.views import Version
from deepserve.operator.builders.context import CACHE_DIR, MODEL_STORE, BuildContext

SOURCE_CREDENTIALS_DIR = "/var/run/secrets/deepserve/source"
FETCH_CONTAINER = "fetch-model"
_CREDENTIALS_VOLUME = "source-credentials"


def model_dir_for(version: Version) -> str:
    """EngineOptions.model_dir for a version's source (a local directory, or builtin://)."""
    src = version.source
    if src.scheme == "pvc":
        path = src.location.split("/", 1)[1] if "/" in src.location else ""
        return f"{MODEL_STORE}/{path}".rstrip("/")
    if src.scheme in FETCHED_SCHEMES:
        return fetched_model_dir(CACHE_DIR, src.uri, src.revision)
    return src.uri


def source_volumes(version: Version) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Extra pod volumes and the engine container's mounts for the source."""
    src = version.source
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if src.scheme == "pvc":
        claim = src.location.split("/", 1)[0]
        volumes.append({"name": "model-store", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model-store", "mountPath": MODEL_STORE, "readOnly": True})
    if src.scheme in FETCHED_SCHEMES and src.credentials_secret:
        volumes.append({"name": _CREDENTIALS_VOLUME,
                        "secret": {"secretName": src.credentials_secret, "defaultMode": 0o400}})
    return volumes, mounts


def fetch_init_containers(ctx: BuildContext, version: Version,
                          security_context: dict[str, Any]) -> list[dict[str, Any]]:
    """The init container fetching an s3:// or hf:// source (none for other schemes)."""
    src = version.source
    if src.scheme not in FETCHED_SCHEMES:
        return []
    command = ["deepserve", "engine", "fetch", src.uri, "--dest", model_dir_for(version)]
    if src.revision:
        command += ["--revision", src.revision]
    mounts: list[dict[str, Any]] = [{"name": "cache", "mountPath": CACHE_DIR},
                                    {"name": "tmp", "mountPath": "/tmp"}]
    if src.credentials_secret:
        command += ["--credentials-dir", SOURCE_CREDENTIALS_DIR]
        mounts.append({"name": _CREDENTIALS_VOLUME, "mountPath": SOURCE_CREDENTIALS_DIR, "readOnly": True})
    res = ctx.spec.resources
    return [{
        "name": FETCH_CONTAINER,
        "image": version.image or ctx.settings.engine_image,
        "imagePullPolicy": ctx.spec.runtime.pull_policy,
        "command": command,
        "env": [{"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"}],
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": {"memory": res.memory}},
        "volumeMounts": mounts,
        "securityContext": dict(security_context),
    }]
