"""The gateway's routes from the cluster: InferenceModels and their Ready pods.

Ported from the former activator's discovery. A background thread lists InferenceModels
and the operator's pods (in the given namespaces, or all) through
:class:`deepserve.operator.kube.Kube` (the one module that imports the kubernetes client),
and hands the gateway a fresh list of :class:`ModelRoute`:

- one route per InferenceModel ``namespace/name``, its labels, and ``spec.aliases``;
- its versions from the spec, each weight taken from ``status.versions[].weight`` (the
  weight in effect) when the operator reports one, else from the spec;
- each version's replicas: the model's pods of that version that are Ready, have a pod IP
  and are not being deleted, as ``http://<podIP>:9000`` (the pod's OpenAI frontend), with
  ``http://<podIP>:8000`` (Triton's KServe v2 HTTP API) beside each.

A model whose spec does not validate is left out (the operator reports why on it). It
also supplies the hold-and-wake ``scale_up`` callback (``scale_from_zero``).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.autoscaler.io import scale_from_zero
from deepserve.operator.builders.context import (
    HTTP_PORT,
    LABEL_MODEL,
    LABEL_VERSION,
    MANAGED_BY,
    OPENAI_PORT,
)
from deepserve.operator.gateway.routing import ModelRoute, VersionTarget
from deepserve.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)
POD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ok = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ok and bool(status.get("podIP")) and not pod.get("metadata", {}).get("deletionTimestamp")


def routes_from_objects(models: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]],
                        port: int = OPENAI_PORT, kserve_port: int = HTTP_PORT) -> list[ModelRoute]:
    """The routes plain API objects describe (InferenceModels and pods, any namespaces)."""
    ready: dict[tuple[str, str, str], list[str]] = defaultdict(list)  # pod IPs
    for pod in pods:
        md = pod.get("metadata", {})
        labels = md.get("labels") or {}
        if _ready(pod):
            key = (md.get("namespace", ""), labels.get(LABEL_MODEL, ""), labels.get(LABEL_VERSION, ""))
            ready[key].append(pod["status"]["podIP"])
    out = []
    for m in models:
        md = m.get("metadata", {})
        namespace, name = md.get("namespace", ""), md["name"]
        try:
            spec = InferenceModelSpec.from_dict(m.get("spec") or {})
        except SpecError as exc:
            log.info("%s/%s left out of the routes: %s", namespace, name, exc)
            continue
        in_effect = {v.get("name"): v.get("weight") for v in (m.get("status") or {}).get("versions") or []}
        versions = []
        for v in spec.versions:
            weight = in_effect.get(v.name)
            ips = sorted(ready.get((namespace, name, v.name), []))
            versions.append(VersionTarget(
                v.name, weight if isinstance(weight, int) else v.weight,
                tuple(f"http://{ip}:{port}" for ip in ips), tuple(f"http://{ip}:{kserve_port}" for ip in ips)))
        aliases = tuple(getattr(spec, "aliases", ()) or ())
        out.append(ModelRoute(namespace, name, labels=dict(md.get("labels") or {}), aliases=aliases,
                              versions=tuple(versions)))
    return out


class KubeDiscovery:
    """Polls the cluster every ``every_s`` and hands the routes to the gateway."""

    def __init__(self, kube: Kube, namespaces: Iterable[str] | None = None, every_s: float = 1.0,
                 port: int = OPENAI_PORT, kserve_port: int = HTTP_PORT) -> None:
        self.kube, self.port, self.kserve_port = kube, port, kserve_port
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[ModelRoute]:
        """One look at the cluster: the routes it describes now."""
        models: list[dict[str, Any]] = []
        pods: list[dict[str, Any]] = []
        for ns in self.namespaces:
            models += self.kube.list(API_VERSION, "InferenceModel", ns)
            pods += self.kube.list("v1", "Pod", ns, label_selector=POD_SELECTOR)
        return routes_from_objects(models, pods, self.port, self.kserve_port)

    def scale_up(self, namespace: str, model: str, version: str) -> None:
        """Hold-and-wake's callback (runs in a worker thread): scale the model from zero."""
        scale_from_zero(self.kube, namespace, model)

    def start(self, apply: Callable[[list[ModelRoute]], None]) -> None:
        """Poll once now, then in a daemon thread until :meth:`stop`, passing every result to ``apply``.

        The first poll runs before the gateway serves, so a (re)started gateway never answers
        404 for a model that exists just because its routes have not arrived yet.
        """
        try:
            apply(self.poll_once())
        except KubeError as exc:
            log.warning("gateway discovery: %s", exc)

        def run() -> None:
            self._stop.wait(self.every_s)
            while not self._stop.is_set():
                try:
                    apply(self.poll_once())
                except KubeError as exc:  # keep the last routes; try again next tick
                    log.warning("gateway discovery: %s", exc)
                self._stop.wait(self.every_s)

        self._thread = threading.Thread(target=run, name="gateway-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
