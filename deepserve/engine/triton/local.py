"""Run a real Triton Inference Server locally, from the ``nvidia-pytriton`` wheel (no torch).

The wheel ships ``tritonserver``, the Python backend and one backend stub per Python
version. :class:`LocalTriton` assembles a private backend directory (so the installed
wheel is never modified), points the stub at the running interpreter's packages, binds
all three endpoints to ``host`` (loopback by default) and stops the server gracefully.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class TritonNotFoundError(RuntimeError):
    """The tritonserver binary, Python backend or stub could not be found."""


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready in time."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths of a Triton installation usable on this machine."""

    server: Path
    python_backend: Path  # directory holding libtriton_python.so
    stub: Path
    library_dirs: tuple[Path, ...]


def find_triton() -> TritonInstall:
    """Locate tritonserver, the Python backend and the stub for this Python.

    ``DEEPSERVE_TRITON_HOME`` (a directory with ``bin/tritonserver`` and
    ``backends/python``, as in the NGC image's ``/opt/tritonserver``) wins over the
    ``nvidia-pytriton`` wheel. Raises :class:`TritonNotFoundError` naming what is missing.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    home = os.environ.get("DEEPSERVE_TRITON_HOME")
    if home:
        root = Path(home)
        stub = root / "backends" / "python" / "triton_python_backend_stub"
        libs: tuple[Path, ...] = (root / "lib",)
    else:
        try:
            import pytriton  # type: ignore[import-untyped]
        except ImportError as exc:
            raise TritonNotFoundError(
                "nvidia-pytriton is not installed (pip install 'deepserve[triton]') "
                "and DEEPSERVE_TRITON_HOME is not set"
            ) from exc
        root = Path(pytriton.__file__).parent / "tritonserver"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        libs = (root.parent.parent / "nvidia_pytriton.libs",)
    install = TritonInstall(
        server=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=stub,
        library_dirs=libs,
    )
    for path in (install.server, install.python_backend / "libtriton_python.so", install.stub):
        if not path.exists():
            raise TritonNotFoundError(f"missing {path} (Python {version})")
    return install


def check_stub_numpy() -> None:
    """Refuse numpy 2 in the stub's environment (this interpreter's).

    With numpy 2 the Python backend stub of Triton 2.51 answers with empty output
    tensors and reports no error, so fail loudly before starting.
    """
    try:
        import numpy
    except ImportError as exc:
        raise TritonStartError("numpy<2 must be installed for the Python backend stub") from exc
    if int(numpy.__version__.split(".")[0]) >= 2:
        raise TritonStartError(
            f"numpy {numpy.__version__} is installed; the Triton Python backend stub needs numpy<2")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])




#: Triton admin APIs (HTTP) / protocols (gRPC) that need the per-server admin key header:
#: loading/unloading models, changing log settings, tracing and shared-memory registration
#: are never for tenants. See tritonserver --help (--http-restricted-api).
RESTRICTED_APIS = "model-repository,logging,trace,shared-memory"
ADMIN_KEY_HEADER = "deepserve-triton-admin-key"
#: Triton's HTTP inference API (``/generate``, ``/infer``) can be put behind the key too
#: (``restrict_http_inference``): the restriction is checked before the body is parsed.
HTTP_INFERENCE_API = "inference"
#: Triton parses HTTP JSON bodies with a recursive parser: with the usual 8 MiB stack a body
#: nested ~110k levels deep (220 kB of "[") overflows an HTTP thread's stack and the server
#: dies with SIGSEGV. Threads take their stack size from RLIMIT_STACK, so tritonserver starts
#: with 1 GiB (address space; pages are touched only as deep as a request goes): the ceiling
#: rises to ~14M levels, above any body the gateway (16 MiB) or the frontend (1 MiB) forwards.
#: See docs/engine.md "Request bodies".
TRITON_STACK_BYTES = 1 << 30


def raise_stack_limit() -> None:
    """Set this process's soft stack limit to ``TRITON_STACK_BYTES`` (capped by the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = TRITON_STACK_BYTES if hard == resource.RLIM_INFINITY else min(TRITON_STACK_BYTES, hard)
    if soft == resource.RLIM_INFINITY or soft < want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def restricted_api_args(admin_key: str, *, http_inference: bool = False) -> list[str]:
    """tritonserver flags that refuse the admin APIs unless ``ADMIN_KEY_HEADER`` carries ``admin_key``.

    ``http_inference`` restricts HTTP inference as well (gRPC inference stays open).
    """
    apis = f"{RESTRICTED_APIS},{HTTP_INFERENCE_API}" if http_inference else RESTRICTED_APIS
    key = f"{ADMIN_KEY_HEADER}={admin_key}"
    return [f"--http-restricted-api={apis}:{key}", f"--grpc-restricted-protocol={RESTRICTED_APIS}:{key}"]


class LocalTriton:
    """A tritonserver child process serving ``model_repository`` on ``host``.

    Ports default to free ports on ``host``. Use as a context manager, or call
    :meth:`start`, :meth:`wait_ready` and :meth:`stop`. ``env`` adds variables for the
    server and the Python backend stubs it starts; ``restrict_http_inference`` puts HTTP
    inference behind the admin key as in a pod.
    """

    def __init__(
        self,
        model_repository: str | Path,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        *,
        log_verbose: int = 0,
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        restrict_http_inference: bool = False,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        taken = {p for p in (http_port, grpc_port, metrics_port) if p}

        def pick(port: int | None) -> int:
            while not port or (port in taken and port not in (http_port, grpc_port, metrics_port)):
                port = free_port(host)
            taken.add(port)
            return port

        self.http_port = pick(http_port)
        self.grpc_port = pick(grpc_port)
        self.metrics_port = pick(metrics_port)
        self.log_verbose = log_verbose
        self.extra_env = dict(env or {})
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path = Path(log_path) if log_path else None
        self._log_file: object | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_key = secrets.token_hex(16)
        self.restrict_http_inference = restrict_http_inference

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (the form tritonclient expects)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics page."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        """Where the server's stdout/stderr go."""
        return self._log_path

    def _prepare(self, install: TritonInstall) -> tuple[Path, dict[str, str]]:
        self._workdir = tempfile.TemporaryDirectory(prefix="deepserve-triton-")
        work = Path(self._workdir.name)
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        for item in install.python_backend.iterdir():
            if item.is_file():
                shutil.copy2(item, backend / item.name)
        shutil.copy2(install.stub, backend / "triton_python_backend_stub")
        env = dict(os.environ)
        # The stub runs Python isolated (PYTHONPATH is ignored) and finds its prefix by
        # looking up "python3" on PATH; putting this interpreter's bin first makes the
        # stub use the same environment (venv site-packages, editable installs).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        lib_dirs = [str(d) for d in install.library_dirs]
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and Path(libdir, sysconfig.get_config_var("INSTSONAME") or "").is_file():
            lib_dirs.insert(0, libdir)  # the stub embeds this interpreter's libpython
        if env.get("LD_LIBRARY_PATH"):
            lib_dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
        env.update(self.extra_env)
        if self._log_path is None:
            self._log_path = work / "tritonserver.log"
        return work / "backends", env

    def command(self, backend_dir: Path, server: Path) -> list[str]:
        """Return the tritonserver command line (every endpoint bound to ``host``)."""
        return [
            str(server),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            f"--log-verbose={self.log_verbose}",
            "--exit-timeout-secs=30",
            *restricted_api_args(self.admin_key, http_inference=self.restrict_http_inference),
        ]

    def start(self) -> None:
        """Start tritonserver in the background (returns before it is ready)."""
        if self.process is not None:
            raise RuntimeError("LocalTriton already started")
        install = find_triton()
        check_stub_numpy()
        backend_dir, env = self._prepare(install)
        cmd = self.command(backend_dir, install.server)
        assert self._log_path is not None
        log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_file = log_file
        log.info("starting tritonserver on %s (http %d, grpc %d, metrics %d)",
                 self.host, self.http_port, self.grpc_port, self.metrics_port)
        self.process = subprocess.Popen(
            cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=raise_stack_limit,
        )

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the server log."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def is_ready(self) -> bool:
        """True when ``/v2/health/ready`` answers 200."""
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the server is ready; raise :class:`TritonStartError` otherwise."""
        if self.process is None:
            raise RuntimeError("LocalTriton not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TritonStartError(f"tritonserver exited with {code}:\n{self.log_tail()}")
            if self.is_ready():
                log.info("tritonserver ready at %s", self.http_url)
                return
            time.sleep(0.25)
        raise TritonStartError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 40.0) -> int | None:
        """Stop gracefully (SIGTERM lets Triton drain in-flight requests); kill if stuck.

        Returns the exit code, or None if the server was never started.
        """
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not stop in %.0fs; killing it", timeout)
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
            # Python-backend stubs Triton gave up on at its exit timeout outlive it (~700 MB
            # each); they share its session's process group, so nothing of it survives.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        if self._workdir is not None:
            keep = self._log_path and self._log_path.is_relative_to(self._workdir.name)
            if keep and self._log_path is not None and self._log_path.exists():
                log.debug("tritonserver log tail:\n%s", self.log_tail())
            self._workdir.cleanup()
            self._workdir = None
        return code

    def __enter__(self) -> LocalTriton:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
