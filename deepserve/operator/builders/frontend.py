"""The OpenAI frontend container of an engine pod (the gateway's upstream on port 9000).

Same image as Triton; it runs ``deepserve engine openai-frontend`` and talks to the Triton
next to it over loopback gRPC (``deepserve.engine.openai_frontend``). Ready only when
Triton and the model are ready (its ``/health``); ``/metrics`` on the same port carries the
Gateway API Inference Extension model-server gauges.
"""

from __future__ import annotations

from typing import Any

from deepserve.operator.builders.context import GRPC_PORT, METRICS_PORT, OPENAI_PORT

FRONTEND_CONTAINER = "openai-frontend"
FRONTEND_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def frontend_args(model: str) -> list[str]:
    """The ``deepserve`` arguments of the frontend for Triton model ``model``."""
    return ["engine", "openai-frontend", "--model", model,
            "--triton-grpc", f"127.0.0.1:{GRPC_PORT}",
            "--triton-metrics", f"http://127.0.0.1:{METRICS_PORT}/metrics",
            "--host", "0.0.0.0", "--port", str(OPENAI_PORT)]


def build_frontend_container(model: str, image: str, pull_policy: str, drain_s: int,
                             security_context: dict[str, Any]) -> dict[str, Any]:
    """The frontend container; ``security_context`` is the Triton container's (non-root, RO root)."""
    return {
        "name": FRONTEND_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["deepserve"],
        "args": frontend_args(model),
        "ports": [{"name": "openai", "containerPort": OPENAI_PORT, "protocol": "TCP"}],
        "env": [],  # nothing from the model source (its credentials stay with the fetch step)
        "resources": FRONTEND_RESOURCES,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "openai"}, "periodSeconds": 5,
                           "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "openai"}, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 3},
        # the same drain as Triton: endpoints drop the pod, then in-flight streams finish
        "lifecycle": {"preStop": {"sleep": {"seconds": drain_s}}},
        "securityContext": dict(security_context),
    }
