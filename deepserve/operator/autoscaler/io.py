"""The autoscaler's I/O: Ready pods, their Triton metrics, HPAs, and the scale subresource.

All Kubernetes calls go through :class:`deepserve.operator.kube.Kube` (the one module that
imports the kubernetes client); metrics are scraped with the metering package's
``scrape_many`` (prometheus_client's parser, counter resets handled there).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.autoscaler.signals import PodLoad, pod_load
from deepserve.operator.builders.context import LABEL_MODEL, LABEL_VERSION, METRICS_PORT
from deepserve.operator.kube import Kube, KubeError, resource_path
from deepserve.operator.metering.scrape import MetricsSample, ScrapeError, scrape_many

log = logging.getLogger(__name__)
AUTOSCALER_MANAGER = "deepserve-autoscaler"
ACTIVATOR_MANAGER = "deepserve-activator"


@dataclass(frozen=True)
class PodEndpoint:
    """A pod of the model as the autoscaler sees it."""

    uid: str
    name: str
    version: str
    ip: str
    ready: bool
    node: str

    @property
    def metrics_url(self) -> str:
        """Triton's Prometheus endpoint of the pod."""
        return f"http://{self.ip}:{METRICS_PORT}/metrics"


def model_pods(kube: Kube, namespace: str, model: str) -> list[PodEndpoint]:
    """Every live pod of ``model`` (Ready or not; terminating pods are left out)."""
    out = []
    for pod in kube.list("v1", "Pod", namespace, label_selector=f"{LABEL_MODEL}={model}"):
        md, st = pod.get("metadata", {}), pod.get("status") or {}
        if md.get("deletionTimestamp") or st.get("phase") in ("Succeeded", "Failed"):
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        out.append(PodEndpoint(md.get("uid", ""), md.get("name", ""), (md.get("labels") or {}).get(LABEL_VERSION, ""),
                               st.get("podIP", "") or "", ready and bool(st.get("podIP")),
                               (pod.get("spec") or {}).get("nodeName", "") or ""))
    return out


class MetricsSampler:
    """Scrape Ready pods and turn consecutive scrapes into :class:`PodLoad` values."""

    def __init__(self, scrape: Callable[[list[str]], Mapping[str, MetricsSample | ScrapeError]] | None = None,
                 timeout: float = 1.0) -> None:
        self._scrape = scrape or (lambda urls: scrape_many(urls, timeout=timeout, workers=16))
        self._last: dict[str, tuple[float, MetricsSample]] = {}

    def sample(self, pods: list[PodEndpoint], now: float) -> dict[str, PodLoad]:
        """Loads of Ready pods since their previous scrape (a pod's first scrape gives none)."""
        ready = [p for p in pods if p.ready]
        results = self._scrape([p.metrics_url for p in ready]) if ready else {}
        loads: dict[str, PodLoad] = {}
        for pod in ready:
            got = results.get(pod.metrics_url)
            if not isinstance(got, MetricsSample):
                continue  # unreachable pods give no sample: unknown, never idle
            previous = self._last.get(pod.uid)
            self._last[pod.uid] = (now, got)
            if previous is not None:
                load = pod_load(previous[1], got, now - previous[0])
                if load is not None:
                    loads[pod.uid] = load
        live = {p.uid for p in pods}
        for uid in [u for u in self._last if u not in live]:
            del self._last[uid]
        return loads


def scale_path(namespace: str, model: str) -> str:
    """REST path of the InferenceModel's scale subresource."""
    return resource_path(API_VERSION, "InferenceModel", namespace, model) + "/scale"


def read_scale(kube: Kube, namespace: str, model: str) -> dict[str, Any]:
    """The autoscaling/v1 Scale of the model (spec.replicas, status.replicas, selector)."""
    return kube.request("GET", scale_path(namespace, model))


def write_scale(kube: Kube, namespace: str, model: str, replicas: int, *, manager: str = AUTOSCALER_MANAGER,
                resource_version: str | None = None) -> dict[str, Any]:
    """PUT the replica count through the scale subresource (optimistic when a version is given)."""
    md: dict[str, Any] = {"name": model, "namespace": namespace}
    if resource_version:
        md["resourceVersion"] = resource_version
    body = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": md, "spec": {"replicas": int(replicas)}}
    return kube.request("PUT", scale_path(namespace, model), body=body, query=[("fieldManager", manager)])


def _current_scale(kube: Kube, namespace: str, model: str) -> tuple[int, str | None]:
    """(replicas, resourceVersion) of the model.

    The API server answers GET /scale with 500 while ``spec.scaling.replicas`` is unset
    (a fresh model at ``minReplicas``), so the count then comes from the object itself.
    """
    try:
        scale = read_scale(kube, namespace, model)
        return int((scale.get("spec") or {}).get("replicas") or 0), (scale.get("metadata") or {}).get(
            "resourceVersion")
    except KubeError as e:
        if e.status != 500 or "does not exist" not in e.message:
            raise
    obj = kube.get(API_VERSION, "InferenceModel", model, namespace)
    if obj is None:
        raise KubeError(404, "NotFound", f"InferenceModel {namespace}/{model} not found")
    scaling = (obj.get("spec") or {}).get("scaling") or {}
    return int(scaling.get("replicas", scaling.get("minReplicas", 1))), obj["metadata"].get("resourceVersion")


def scale_from_zero(kube: Kube, namespace: str, model: str, attempts: int = 5) -> bool:
    """Set replicas to 1 if the model is at 0 (the activator's ask); True when written.

    The write is optimistic on the object's resourceVersion, which every status write (the
    operator's, the autoscaler's) also moves: a 409 therefore re-reads, and gives up only when
    someone else has scaled the model up meanwhile.
    """
    for _ in range(attempts):
        replicas, resource_version = _current_scale(kube, namespace, model)
        if replicas > 0:
            return False
        try:
            write_scale(kube, namespace, model, 1, manager=ACTIVATOR_MANAGER, resource_version=resource_version)
        except KubeError as e:
            if e.status == 409:
                continue
            raise
        log.info("%s/%s: scaled from zero for a held request", namespace, model)
        return True
    raise KubeError(409, "Conflict", f"{namespace}/{model}: scale from zero lost {attempts} races in a row")


def list_hpas(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    """HorizontalPodAutoscalers of the namespace ([] where autoscaling/v2 is not served)."""
    try:
        return kube.list("autoscaling/v2", "HorizontalPodAutoscaler", namespace)
    except KubeError as e:
        if e.status in (403, 404):
            return []
        raise


def patch_scaling_status(kube: Kube, namespace: str, model: str, scaling: dict[str, Any] | None) -> None:
    """Merge ``status.scaling`` of the model (None removes it); the one writer of that field."""
    kube.patch_status(API_VERSION, "InferenceModel", model, namespace, {"scaling": scaling})


HELD_METRIC = "deepserve_activator_held_requests"


class ActivatorHeld:
    """Requests the activator of each namespace holds per model, read from its ``/metrics``.

    ``urls`` maps namespace to the activator's metrics URL. One scrape per URL serves every
    model of the namespace for ``ttl_s``; an activator that does not answer counts as holding
    nothing (it still asks for scale-from-zero itself), and says why in the log once a minute.
    """

    def __init__(self, urls: Mapping[str, str], *, ttl_s: float = 1.0, timeout_s: float = 1.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.urls = dict(urls)
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self._clock = clock or time.monotonic
        self._cache: dict[str, tuple[float, dict[str, int]]] = {}
        self._warned: dict[str, float] = {}
        self._lock = threading.Lock()

    def _fetch(self, url: str) -> dict[str, int]:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "localhost", parts.port, timeout=self.timeout_s)
        try:
            conn.request("GET", parts.path or "/metrics")
            response = conn.getresponse()
            body = response.read().decode("utf-8", errors="replace")
            if response.status != 200:
                raise ScrapeError(f"{url}: HTTP {response.status}")
        finally:
            conn.close()
        held: dict[str, int] = {}
        for family in text_string_to_metric_families(body):
            if family.name != HELD_METRIC:
                continue
            for sample in family.samples:
                model = sample.labels.get("model", "")
                held[model] = held.get(model, 0) + int(sample.value)
        return held

    def __call__(self, namespace: str, model: str) -> int:
        url = self.urls.get(namespace)
        if not url:
            return 0
        now = self._clock()
        with self._lock:
            hit = self._cache.get(url)
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1].get(model, 0)
            try:
                held = self._fetch(url)
            except (OSError, ValueError) as e:
                if now - self._warned.get(url, -1e18) >= 60:
                    self._warned[url] = now
                    log.warning("activator metrics %s: %s (counting no held requests)", url, e)
                held = {}
            self._cache[url] = (now, held)
            return held.get(model, 0)

