"""The one module of the operator that talks to the Kubernetes API (kubernetes client).

Everything else is plain Python over dicts. :class:`Kube` is a small typed seam over
``kubernetes.client.ApiClient``: server-side apply, get, list, delete with a UID
precondition, status merge-patch, and discovery. Tests and benchmarks use it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

FIELD_MANAGER = "deepserve-operator"
_PLURALS = {
    "Ingress": "ingresses", "PodDisruptionBudget": "poddisruptionbudgets", "HTTPRoute": "httproutes",
    "InferenceModel": "inferencemodels", "GPUNodePool": "gpunodepools", "Endpoints": "endpoints",
    "CustomResourceDefinition": "customresourcedefinitions", "ClusterKopfPeering": "clusterkopfpeerings",
    "KopfPeering": "kopfpeerings", "Lease": "leases", "NetworkPolicy": "networkpolicies",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}
_CLUSTER_SCOPED = {"Node", "Namespace", "GPUNodePool", "Tenant", "CustomResourceDefinition", "ClusterKopfPeering",
                   "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                   "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


class KubeError(RuntimeError):
    """An API call failed; ``status`` is the HTTP code, ``message`` the server's message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient from ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config / in-cluster)."""
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except config.ConfigException:
        if kubeconfig or context:
            raise
        config.load_incluster_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def connection_fields(kubeconfig: str) -> dict[str, Any]:
    """Server, TLS files and credentials of a kubeconfig, for kopf's ConnectionInfo."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return {"server": cfg.host, "ca_path": cfg.ssl_ca_cert, "insecure": not cfg.verify_ssl,
            "username": cfg.username or None, "password": cfg.password or None, "scheme": scheme,
            "token": token, "certificate_path": cfg.cert_file, "private_key_path": cfg.key_file}


def resource_path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """REST path of a collection or object, e.g. ``/apis/apps/v1/namespaces/a/deployments/b``."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = _PLURALS.get(kind, kind.lower() + "s")
    ns = f"/namespaces/{namespace}" if namespace and kind not in _CLUSTER_SCOPED else ""
    return f"{base}{ns}/{plural}" + (f"/{name}" if name else "")


class Kube:
    """Synchronous, thread-safe access to the API server through one ApiClient."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        """Connect using a kubeconfig file (None: the usual lookup) and context (None: its current)."""
        return cls(load_api_client(kubeconfig, context))

    def request(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, Any]] | None = None,
                content_type: str = "application/json", timeout: float = 30) -> dict[str, Any]:
        """One REST call; returns the decoded JSON body or raises KubeError."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, hdrs, data, _ = self.api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(m, url, header_params=hdrs, body=data, _request_timeout=timeout)
            raw = resp.read()
        except ApiException as e:  # transport-level errors raised by the client
            raise KubeError(e.status or 0, str(e.reason), str(e.body or e)) from e
        if not 200 <= resp.status <= 299:
            try:
                doc = json.loads(raw)
                raise KubeError(resp.status, doc.get("reason", ""), doc.get("message", raw.decode()))
            except ValueError:
                raise KubeError(resp.status, str(resp.reason), raw.decode(errors="replace")) from None
        return json.loads(raw) if raw else {}

    def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
        """Server-side apply ``obj``; a no-op on the server when nothing changed."""
        md = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"])
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        return self.request("PATCH", path, body=obj, query=query, content_type="application/apply-patch+yaml")

    def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Create ``obj`` (POST); raises KubeError 409 when it exists.

        ``dry_run``: the server runs defaulting, validation and admission and stores nothing.
        """
        md = obj["metadata"]
        query = [("dryRun", "All")] if dry_run else []
        return self.request("POST", resource_path(obj["apiVersion"], obj["kind"], md.get("namespace")), body=obj,
                            query=query)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None, field_selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in a namespace, or all namespaces when None)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        query += [("fieldSelector", field_selector)] if field_selector else []
        path = resource_path(api_version, kind, namespace)
        return list(self.request("GET", path, query=query, timeout=120).get("items", []))

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               uid: str | None = None) -> bool:
        """Delete (background propagation) if it still has ``uid``; False when already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
            return True
        except KubeError as e:
            if e.status in (404, 409):
                return False
            raise

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str | None,
                     status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource with ``status``."""
        path = resource_path(api_version, kind, namespace, name) + "/status"
        return self.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    def replace_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """PUT the status subresource (optimistic: fails with 409 if ``obj`` is stale)."""
        md = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"]) + "/status"
        body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "status": status,
                "metadata": {"name": md["name"], "namespace": md.get("namespace"),
                             "resourceVersion": md.get("resourceVersion")}}
        return self.request("PUT", path, body=body)

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the server serves ``kind`` in ``api_version`` (e.g. Gateway API HTTPRoute)."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            doc = self.request("GET", base)
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("kind") == kind for r in doc.get("resources", []))

    def watch(self, api_version: str, kind: str, namespace: str | None = None, *,
              label_selector: str | None = None, timeout_s: int = 300) -> Iterator[dict[str, Any]]:
        """Watch events (``{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": ...}``) of a kind,
        starting with an ADDED event per existing object, until the server ends the watch after
        about ``timeout_s``. Raises KubeError when the watch is refused or reports an ERROR."""
        query: list[tuple[str, Any]] = [("watch", "true"), ("timeoutSeconds", int(timeout_s)),
                                        ("allowWatchBookmarks", "true")]
        query += [("labelSelector", label_selector)] if label_selector else []
        m, url, hdrs, _, _ = self.api.param_serialize(
            "GET", resource_path(api_version, kind, namespace), query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        try:  # the client streams the body (preload_content=False); read timeout between events
            resp = self.api.call_api(m, url, header_params=hdrs, _request_timeout=(10, timeout_s + 30))
        except ApiException as e:
            raise KubeError(e.status or 0, str(e.reason), str(e.body or e)) from e
        raw = resp.response
        try:
            if resp.status != 200:
                raise KubeError(resp.status, str(resp.reason), raw.read().decode(errors="replace"))
            pending = b""
            for chunk in raw.stream(65536):  # one JSON event per line
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise KubeError(int(status.get("code") or 0), str(status.get("reason", "")),
                                        str(status.get("message", "")))
                    yield event
        finally:  # closed, not pooled: an unfinished body must not be left on a reused connection
            raw.close()
            raw.release_conn()

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()
