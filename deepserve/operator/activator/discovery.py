"""Keep the activator's :class:`Routes` in step with the cluster, and ask for scale-from-zero.

A background thread polls the namespace's InferenceModels (versions and weights, through
the typed spec view) and their pods (Ready ones with a pod IP become upstreams
``http://<podIP>:8000``), then hands the result to the activator's event loop. Polling a
list every ``every_s`` (default 0.5 s) keeps this small; a cluster with many models
would use a watch instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from typing import Any

from deepserve.operator.activator.routing import Routes
from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.autoscaler.io import scale_from_zero
from deepserve.operator.builders.context import HTTP_PORT, LABEL_MODEL, LABEL_VERSION, MANAGED_BY
from deepserve.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)


def routes_snapshot(models: list[dict[str, Any]], pods: list[dict[str, Any]]
                    ) -> dict[str, tuple[dict[str, int], dict[str, list[str]]]]:
    """model -> (weights, version -> Ready upstream URLs), from plain API objects."""
    ready: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pod in pods:
        md, st = pod.get("metadata", {}), pod.get("status") or {}
        labels = md.get("labels") or {}
        ok = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        if ok and st.get("podIP") and not md.get("deletionTimestamp"):
            ready[(labels.get(LABEL_MODEL, ""), labels.get(LABEL_VERSION, ""))].append(
                f"http://{st['podIP']}:{HTTP_PORT}")
    out = {}
    for m in models:
        name = m["metadata"]["name"]
        try:
            spec = InferenceModelSpec.from_dict(m.get("spec") or {})
        except SpecError:
            continue
        weights = {v.name: v.weight for v in spec.versions}
        out[name] = (weights, {v: sorted(ready.get((name, v), [])) for v in weights})
    return out


class KubeDiscovery:
    """Poll the cluster and update ``routes`` on ``loop``; also the activator's scale-up callback."""

    def __init__(self, kube: Kube, namespace: str, routes: Routes, loop: asyncio.AbstractEventLoop,
                 every_s: float = 0.5) -> None:
        self.kube, self.namespace, self.routes, self.loop = kube, namespace, routes, loop
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> None:
        """One poll; the routes change on the event loop."""
        models = self.kube.list(API_VERSION, "InferenceModel", self.namespace)
        pods = self.kube.list("v1", "Pod", self.namespace, label_selector=f"app.kubernetes.io/managed-by={MANAGED_BY}")
        snap = routes_snapshot(models, pods)
        self.loop.call_soon_threadsafe(self._apply, snap)

    def _apply(self, snap: dict[str, tuple[dict[str, int], dict[str, list[str]]]]) -> None:
        for gone in set(self.routes.models()) - set(snap):
            self.routes.remove_model(gone)
        for model, (weights, upstreams) in snap.items():
            self.routes.set_model(model, weights)
            for version, urls in upstreams.items():
                self.routes.set_upstreams(model, version, urls)

    def scale_up(self, model: str, version: str) -> None:
        """The activator's callback (runs in a worker thread): scale the model from zero."""
        scale_from_zero(self.kube, self.namespace, model)

    def start(self) -> KubeDiscovery:
        """Poll in a daemon thread until :meth:`stop`."""
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except KubeError as e:
                    log.warning("activator discovery: %s", e)
                self._stop.wait(self.every_s)

        self._thread = threading.Thread(target=run, name="activator-discovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
