"""Dev/test-only local runner: plays the engine container of KWOK pods with a real Triton.

KWOK runs the pods of the local cluster without containers. For pods labelled
``deepserve.io/runner=local`` this runner does what a kubelet would do for the engine
container: it materialises the pod's volumes (ConfigMap items, Secret items, emptyDirs) into
a local folder, rewrites paths under their mount points, starts ``tritonserver`` bound to the
pod's own loopback IP (ports 8000/8001/8002, as in the pod spec), and reports the
container's readiness from Triton's ``/v2/health/ready`` into the pod's status. A crashed
server is restarted (restartCount grows); a deleted pod's server is stopped gracefully.
The pod's OpenAI frontend container (``deepserve engine openai-frontend``) is played too:
the same command, bound to the pod's IP and pointed at that pod's Triton.

Secret volumes (the model's usage write credential) are read from the API server as a
kubelet would, written as 0600 files and re-synced every ``SECRET_SYNC_S`` seconds, so a
rotated credential reaches the played engine the way it reaches a real pod.

It is small on purpose and is not part of the operator.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepserve.engine.triton.local import LocalTriton
from deepserve.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)

RUNNER_LABEL = "deepserve.io/runner"
SELECTOR = f"{RUNNER_LABEL}=local"
SECRET_SYNC_S = 10.0  # how often mounted Secrets are re-read (the kubelet's sync is ~1 minute)


@dataclass
class PlayedPod:
    """One pod whose engine container is played by a local Triton."""

    namespace: str
    name: str
    uid: str
    ip: str
    root: Path
    container: str
    triton: LocalTriton | None = None
    ready: bool | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    repo: Path | None = None
    frontend_args: list[str] | None = None  # the frontend container's deepserve arguments
    frontend: subprocess.Popen[bytes] | None = None
    secrets: list[tuple[dict[str, Any], Path]] = field(default_factory=list)  # (secret volume source, dir)
    secrets_at: float = 0.0


def frontend_command(pod: dict[str, Any]) -> list[str] | None:
    """The pod's frontend container as a local command on the pod's IP, or None if it has none."""
    ip = pod["status"]["podIP"]
    for c in pod["spec"]["containers"]:
        args = [str(a) for a in c.get("args", [])]
        if c.get("command") == ["deepserve"] and args[:2] == ["engine", "openai-frontend"]:
            local = [a.replace("127.0.0.1", ip).replace("0.0.0.0", ip) for a in args]
            return [str(Path(sys.executable).parent / "deepserve"), *local]
    return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_volumes(pod: dict[str, Any], root: Path) -> list[tuple[dict[str, Any], Path]]:
    """(secret volume source, local folder) of each Secret the engine container mounts."""
    container: dict[str, Any] = next(
        (c for c in pod["spec"]["containers"] if c.get("command", [""])[0] == "tritonserver"
         or any(str(a).startswith("--model-repository=") for a in c.get("args", []))), {})
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    return [(volumes[m["name"]]["secret"], root / "volumes" / m["name"])
            for m in container.get("volumeMounts", []) if "secret" in volumes.get(m["name"], {})]


def write_secret(kube: Kube, namespace: str, source: dict[str, Any], local: Path) -> None:
    """Write a Secret volume's items under ``local`` as 0600 files (each replaced atomically,
    so a reader never sees half a token). Raises ValueError when the Secret does not exist."""
    secret = kube.get("v1", "Secret", source["secretName"], namespace)
    if secret is None:
        if source.get("optional"):
            return
        raise ValueError(f"Secret {namespace}/{source['secretName']} does not exist yet")
    data = secret.get("data") or {}
    local.mkdir(parents=True, exist_ok=True)
    local.chmod(0o700)
    for it in source.get("items") or [{"key": k, "path": k} for k in data]:
        if it["key"] not in data:
            raise ValueError(f"Secret {namespace}/{source['secretName']} has no key {it['key']!r}")
        dest = local / it["path"]
        tmp = dest.with_name(f".{dest.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64decode(data[it["key"]]))
        os.replace(tmp, dest)


def materialise(pod: dict[str, Any], kube: Kube, root: Path,
                overrides: dict[str, str]) -> tuple[Path, dict[str, str], str]:
    """Write the pod's volumes under ``root``; return (model repository, env, container name).

    Raises ValueError when the pod has no Triton container with a model repository.
    """
    spec = pod["spec"]
    ns = pod["metadata"]["namespace"]
    container = next((c for c in spec["containers"] if c.get("command", [""])[0] == "tritonserver"
                      or any(str(a).startswith("--model-repository=") for a in c.get("args", []))),
                     None)
    if container is None:
        raise ValueError("pod has no tritonserver container")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts", []):
        local = root / "volumes" / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        mounts[m["mountPath"]] = local
        vol = volumes.get(m["name"], {})
        if "configMap" in vol:
            cm = kube.get("v1", "ConfigMap", vol["configMap"]["name"], ns)
            if cm is None:
                raise ValueError(f"ConfigMap {ns}/{vol['configMap']['name']} does not exist yet")
            data = cm.get("data") or {}
            items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                dest = local / it["path"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(data[it["key"]])
        elif "secret" in vol:
            write_secret(kube, ns, vol["secret"], local)

    def rewrite(value: str) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(mounts[mount_path]) + value[len(mount_path):]
        return value

    # Paths inside the model repository's files (e.g. the usage spool in the engine
    # options) refer to the container's mounts too: quoted absolute paths are rewritten.
    quoted = re.compile(r'(?<=["\'])(/[^"\'\\]*)')
    for m in container.get("volumeMounts", []):
        if "configMap" in volumes.get(m["name"], {}):
            for f in (root / "volumes" / m["name"]).rglob("*"):
                if f.is_file():
                    f.write_text(quoted.sub(lambda mt: rewrite(mt.group(1)), f.read_text()))

    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = rewrite(str(e["value"]))
        elif "valueFrom" in e and "fieldRef" in e["valueFrom"]:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": ns,
                              "status.podIP": pod["status"].get("podIP", ""),
                              "spec.nodeName": spec.get("nodeName", "")}.get(path, "")
    env["DEEPSERVE_DEVICE"] = "cpu"  # the pod may be placed on a GPU pool; this machine plays it on CPU
    env.update(overrides)
    repo_arg = next(str(a).split("=", 1)[1] for a in container.get("args", [])
                    if str(a).startswith("--model-repository="))
    return Path(rewrite(repo_arg)), env, container["name"]


class LocalRunner:
    """Watch runner-labelled pods and play their engine container with a local Triton."""

    def __init__(self, kubeconfig: str, env_overrides: dict[str, str] | None = None,
                 work_dir: Path | None = None, poll_s: float = 0.5) -> None:
        self.kube = Kube.from_kubeconfig(kubeconfig)
        self.overrides = dict(env_overrides or {})
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="deepserve-runner-")
        self.work_dir = Path(work_dir or self._tmp.name)  # type: ignore[union-attr]
        self.poll_s = poll_s
        self.pods: dict[str, PlayedPod] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> LocalRunner:
        """Run the loop in a background thread."""
        self._thread = threading.Thread(target=self.run, name="local-runner", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Reconcile until stopped."""
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep playing the other pods
                log.exception("local runner step failed")
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """Stop the loop and every Triton it started."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        # stop the servers in parallel: each drains for up to its exit timeout
        stoppers = [threading.Thread(target=self._forget, args=(key,)) for key in list(self.pods)]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=40)
        self.kube.close()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> LocalRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- one reconcile -----------------------------------------------------
    def step(self) -> None:
        """Start, probe, restart and stop servers so they match the pods that exist."""
        pods = self.kube.list("v1", "Pod", label_selector=SELECTOR)
        seen = set()
        for pod in pods:
            md, st = pod["metadata"], pod.get("status", {})
            key = md["uid"]
            if md.get("deletionTimestamp") or st.get("phase") != "Running" or not st.get("podIP"):
                continue
            seen.add(key)
            played = self.pods.get(key)
            if played is None:
                played = self._play(pod)
                if played is None:
                    continue
            self._sync_secrets(played)
            self._probe(played)
        for key in set(self.pods) - seen:
            self._forget(key)

    def _play(self, pod: dict[str, Any]) -> PlayedPod | None:
        md = pod["metadata"]
        root = self.work_dir / md["namespace"] / f"{md['name']}-{md['uid'][:8]}"
        try:
            repo, env, container = materialise(pod, self.kube, root, self.overrides)
        except (ValueError, KubeError) as e:
            log.warning("cannot play %s/%s yet: %s", md["namespace"], md["name"], e)
            return None
        played = PlayedPod(md["namespace"], md["name"], md["uid"], pod["status"]["podIP"], root,
                           container, env=env, repo=repo, frontend_args=frontend_command(pod),
                           secrets=secret_volumes(pod, root), secrets_at=time.monotonic())
        self.pods[md["uid"]] = played
        self._launch(played)
        return played

    def _sync_secrets(self, p: PlayedPod) -> None:
        """Re-read the pod's Secret volumes, as the kubelet does (a rotated credential)."""
        if not p.secrets or time.monotonic() - p.secrets_at < SECRET_SYNC_S:
            return
        p.secrets_at = time.monotonic()
        for source, local in p.secrets:
            try:
                write_secret(self.kube, p.namespace, source, local)
            except (ValueError, KubeError) as e:  # the kubelet keeps the last files too
                log.warning("cannot refresh Secret %s of %s/%s: %s", source.get("secretName"),
                            p.namespace, p.name, e)

    def _launch(self, p: PlayedPod) -> None:
        assert p.repo is not None
        p.triton = LocalTriton(p.repo, host=p.ip, http_port=8000, grpc_port=8001, metrics_port=8002,
                               env=p.env, log_path=p.root / f"triton-{p.restarts}.log")
        log.info("starting Triton for pod %s/%s at %s", p.namespace, p.name, p.ip)
        p.triton.start()
        self._launch_frontend(p)

    def _launch_frontend(self, p: PlayedPod) -> None:
        if p.frontend_args is None or (p.frontend is not None and p.frontend.poll() is None):
            return
        with open(p.root / f"frontend-{p.restarts}.log", "ab") as out:
            p.frontend = subprocess.Popen(p.frontend_args, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("starting the OpenAI frontend for pod %s/%s at %s:9000", p.namespace, p.name, p.ip)

    @staticmethod
    def _stop_frontend(p: PlayedPod) -> None:
        if p.frontend is not None and p.frontend.poll() is None:
            p.frontend.terminate()
            try:
                p.frontend.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.frontend.kill()
                p.frontend.wait()
        p.frontend = None

    def _probe(self, p: PlayedPod) -> None:
        assert p.triton is not None
        proc = p.triton.process
        if proc is not None and proc.poll() is not None:
            log.warning("Triton of %s/%s exited (%s); restarting:\n%s", p.namespace, p.name,
                        proc.returncode, p.triton.log_tail(15))
            p.triton.stop()
            p.restarts += 1
            self._set_ready(p, False, "ContainerRestarted")
            self._launch(p)
            return
        if p.frontend is not None and p.frontend.poll() is not None:
            log.warning("OpenAI frontend of %s/%s exited (%s); restarting", p.namespace, p.name,
                        p.frontend.returncode)
            p.frontend = None
            self._launch_frontend(p)
        ready = p.triton.is_ready()
        if ready != p.ready:
            self._set_ready(p, ready, "TritonReady" if ready else "TritonNotReady")

    def _set_ready(self, p: PlayedPod, ready: bool, reason: str) -> None:
        status = "True" if ready else "False"
        now = _now()
        body = {"status": {
            "conditions": [{"type": t, "status": status, "reason": reason, "lastTransitionTime": now}
                           for t in ("ContainersReady", "Ready")],
            "containerStatuses": [{"name": p.container, "ready": ready, "restartCount": p.restarts,
                                   "started": True, "image": "local-runner", "imageID": "",
                                   "state": {"running": {"startedAt": now}}}],
        }}
        try:
            # strategic merge: conditions merge by type and containerStatuses by name, as the kubelet's do
            self.kube.request("PATCH", f"/api/v1/namespaces/{p.namespace}/pods/{p.name}/status", body=body,
                              content_type="application/strategic-merge-patch+json")
            p.ready = ready
            log.info("pod %s/%s Ready=%s (%s)", p.namespace, p.name, status, reason)
        except KubeError as e:
            if e.status != 404:
                raise

    def _forget(self, key: str) -> None:
        p = self.pods.pop(key, None)
        if p is None:
            return
        self._stop_frontend(p)
        if p.triton is not None:
            log.info("stopping Triton of pod %s/%s", p.namespace, p.name)
            with contextlib.suppress(Exception):
                p.triton.stop(timeout=15)
        shutil.rmtree(p.root, ignore_errors=True)

    def wait_idle(self, timeout: float = 30) -> None:
        """Block until no pod is being played (all stopped)."""
        deadline = time.monotonic() + timeout
        while self.pods and time.monotonic() < deadline:
            time.sleep(0.2)
