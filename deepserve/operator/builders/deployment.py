"""The Deployment of Triton serving one version."""

from __future__ import annotations

from typing import Any

from deepserve.engine.triton.local import ADMIN_KEY_HEADER, RESTRICTED_APIS, TRITON_STACK_BYTES
from deepserve.operator.builders.context import (
    ANNOTATION_CONFIG_HASH,
    CACHE_DIR,
    GRPC_PORT,
    HTTP_PORT,
    LABEL_POOL,
    METRICS_PORT,
    REPOSITORY_DIR,
    USAGE_SPOOL,
    BuildContext,
    child_name,
    labels,
    metadata,
    selector,
    version_of,
)
from deepserve.operator.builders.frontend import build_frontend_container
from deepserve.operator.builders.repository import (
    config_key,
    files_hash,
    repository_configmap_name,
    repository_files,
)
from deepserve.operator.builders.sources import fetch_init_containers, source_volumes
from deepserve.operator.builders.usage_credential import usage_credential_volume

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
READY_PATH, LIVE_PATH = "/v2/health/ready", "/v2/health/live"


def termination_grace_seconds(drain_s: int, exit_timeout_s: int) -> int:
    """preStop drain + Triton's exit timeout + a margin for process teardown."""
    return drain_s + exit_timeout_s + 10


# Starts tritonserver with its admin APIs (model loading, logging, trace, shared memory)
# behind a key drawn from /dev/urandom at container start: the key is in no manifest, Secret,
# env var or log, so nothing outside the Triton process can use those APIs. The stack limit
# is raised first: Triton's HTTP JSON parser recurses per nesting level and its threads take
# their stack size from it (docs/engine.md "Request bodies"). "$@" is the container's args
# (triton_args); $0 is "tritonserver".
TRITON_LAUNCH = (
    f"ulimit -s {TRITON_STACK_BYTES // 1024} || echo 'deepserve: cannot raise the stack limit' >&2; "
    "key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n'); "
    f'setting="{RESTRICTED_APIS}:{ADMIN_KEY_HEADER}=$key"; '
    'exec tritonserver "$@" --http-restricted-api="$setting" --grpc-restricted-protocol="$setting"'
)
TRITON_COMMAND = ["/bin/sh", "-c", TRITON_LAUNCH, "tritonserver"]


def triton_args(model: str, exit_timeout_s: int) -> list[str]:
    """tritonserver flags: fixed ports, strict readiness, graceful exit timeout."""
    return [
        f"--model-repository={REPOSITORY_DIR}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--strict-readiness=true",
        f"--exit-timeout-secs={exit_timeout_s}",
        "--model-control-mode=explicit",
        f"--load-model={model}",
        "--log-verbose=0",
    ]


def _volumes(ctx: BuildContext, version: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    files = repository_files(ctx, version)
    items = [{"key": config_key(p), "path": f"{ctx.model.name}/{p}"} for p in sorted(files)]
    v = version_of(ctx, version)
    res = ctx.spec.resources
    volumes: list[dict[str, Any]] = [
        {"name": "model-repository",
         "configMap": {"name": repository_configmap_name(ctx.model.name, version), "items": items}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shared_memory}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "usage-spool", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "model-repository", "mountPath": REPOSITORY_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "usage-spool", "mountPath": USAGE_SPOOL},
    ]
    if ctx.settings.usage_credentials:  # the model's usage write credential, read-only
        volume, mount, _ = usage_credential_volume(ctx.model.name)
        volumes.append(volume)
        mounts.append(mount)
    source_vols, source_mounts = source_volumes(v)  # pvc:// volume, fetch credentials
    return volumes + source_vols, mounts + source_mounts


def _env(ctx: BuildContext, version: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    env: list[dict[str, Any]] = [
        {"name": "DEEPSERVE_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if ctx.settings.usage_credentials:  # a path only: the token itself is never in env
        env.append(usage_credential_volume(ctx.model.name)[2])
    # source credentials reach only the fetch init container, as files (builders.sources)
    env_from: list[dict[str, Any]] = []
    return env, env_from


def _resources(ctx: BuildContext) -> dict[str, Any]:
    res = ctx.spec.resources
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    gpus = ctx.placement.gpus_per_replica
    if gpus > 0:
        requests[ctx.placement.gpu_resource] = str(gpus)
        limits[ctx.placement.gpu_resource] = str(gpus)
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 5, "failureThreshold": failures}


def _tolerations(ctx: BuildContext) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if ctx.placement.gpus_per_replica > 0:
        out.append(dict(GPU_TOLERATION, key=ctx.placement.gpu_resource))
    for t in (*ctx.placement.tolerations, *ctx.spec.placement.tolerations):
        if dict(t) not in out:
            out.append(dict(t))
    return out


def build_deployment(ctx: BuildContext, version: str) -> dict[str, Any]:
    """A Deployment of Triton for one version, placed on the chosen pool."""
    v = version_of(ctx, version)
    rt = ctx.spec.runtime
    volumes, mounts = _volumes(ctx, version)
    env, env_from = _env(ctx, version)
    container: dict[str, Any] = {
        "name": "triton",
        "image": v.image or ctx.settings.engine_image,
        "imagePullPolicy": rt.pull_policy,
        # a crash-looping engine's last log lines become the termination message, shown in Degraded
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "command": list(TRITON_COMMAND),
        "args": triton_args(ctx.model.name, rt.exit_timeout_s),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": _resources(ctx),
        "volumeMounts": mounts,
        # Loading weights can take long: the startup probe allows 30 minutes.
        "startupProbe": _probe(READY_PATH, 10, 180),
        "readinessProbe": _probe(READY_PATH, 5, 3),
        "livenessProbe": _probe(LIVE_PATH, 10, 3),
        # Endpoints drop the pod while it sleeps; then SIGTERM lets Triton finish
        # in-flight requests for up to --exit-timeout-secs.
        "lifecycle": {"preStop": {"sleep": {"seconds": rt.drain_s}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if env_from:
        container["envFrom"] = env_from
    pod_labels = {**labels(ctx.model.name, version), LABEL_POOL: ctx.placement.pool}
    if ctx.settings.engine_runner:
        pod_labels = {**pod_labels, "deepserve.io/runner": ctx.settings.engine_runner}
    uid = ctx.settings.run_as_user
    pod_spec: dict[str, Any] = {
        "containers": [container, build_frontend_container(
            ctx.model.name, container["image"], rt.pull_policy, rt.drain_s, container["securityContext"])],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(rt.drain_s, rt.exit_timeout_s),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "tolerations": _tolerations(ctx),
    }
    init = fetch_init_containers(ctx, v, container["securityContext"])
    if init:
        pod_spec["initContainers"] = init
    if ctx.placement.node_selector:
        pod_spec["nodeSelector"] = dict(ctx.placement.node_selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, child_name(ctx.model.name, version), version),
        "spec": {
            "replicas": ctx.replicas.get(version, 0),
            "selector": {"matchLabels": selector(ctx.model.name, version)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 1800,
            # Never drop below the desired count while rolling (one extra replica at a time).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        ANNOTATION_CONFIG_HASH: files_hash(repository_files(ctx, version)),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                    },
                },
                "spec": pod_spec,
            },
        },
    }
