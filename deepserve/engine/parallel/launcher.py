"""The serving rank starts and supervises the other ranks of its replica.

:func:`launch_replica` is what the Triton model instance calls: with
``tensor_parallel x pipeline_parallel == 1`` it just builds the engine; otherwise it
starts one follower process per other rank (``python -m deepserve.engine.parallel.rank``,
options in the environment), builds rank 0 itself, and attaches the control channel. A
:class:`RankSupervisor` thread watches the followers' exit codes; a follower that exits,
a broadcast that fails, or a collective that times out marks the replica failed, logs one
line naming the rank, and calls ``on_failure`` (the Triton backend stops the server so
the pod turns not-ready and restarts). Nothing waits forever: collectives carry the
group's timeout and the rendezvous is polled while the supervisor watches.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch.distributed as dist

from deepserve.engine.build import build_engine, resolve_device
from deepserve.engine.options import EngineOptions
from deepserve.engine.parallel.control import ControlChannel, attach_leader
from deepserve.engine.parallel.layout import ParallelLayoutError, RankLayout
from deepserve.engine.parallel.rank import (
    OPTIONS_ENV,
    TIMEOUT_ENV,
    WorldSpec,
    build_rank,
    collective_timeout_s,
)
from deepserve.engine.runtime import InferenceEngine

log = logging.getLogger(__name__)

FailureHandler = Callable[[str], None]
LWS_GROUP_SIZE = "LWS_GROUP_SIZE"  # set by the LeaderWorkerSet controller in every pod
MASTER_PORT_ENV = "DEEPSERVE_MASTER_PORT"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for the rendezvous store)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def python_executable() -> str:
    """The interpreter for follower ranks (inside Triton ``sys.executable`` is the stub)."""
    explicit = os.environ.get("DEEPSERVE_PYTHON")
    if explicit:
        return explicit
    candidate = os.path.join(sys.prefix, "bin", "python3")
    return candidate if os.path.exists(candidate) else sys.executable


def follower_env(options: EngineOptions, rank: int, world: WorldSpec) -> dict[str, str]:
    """The environment of follower ``rank`` (the options travel here, never in argv)."""
    return {**os.environ, OPTIONS_ENV: options.to_json(), "RANK": str(rank),
            "WORLD_SIZE": str(options.tensor_parallel * options.pipeline_parallel),
            "MASTER_ADDR": world.master_addr, "MASTER_PORT": str(world.master_port),
            "DEEPSERVE_BACKEND": world.backend, TIMEOUT_ENV: str(world.timeout_s)}


def stop_serving_process(reason: str) -> None:
    """Fail loudly inside Triton: log, then SIGTERM the server so the pod turns not-ready.

    The Python backend runs in a stub process whose parent is ``tritonserver``; the
    server stops answering readiness and exits, so the kubelet restarts the container.
    Outside Triton (no such parent) it only logs: the caller sees ``Replica.healthy``.
    """
    log.critical("a rank of this replica failed, stopping the server: %s", reason)
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/comm", encoding="utf-8") as comm:
            name = comm.read().strip()
    except OSError:
        return
    if name.startswith("tritonserver"):
        os.kill(parent, signal.SIGTERM)


def local_rank_count(world: int, environ: Mapping[str, str]) -> int:
    """Ranks this pod runs: all of them, or ``world / LWS_GROUP_SIZE`` in a LeaderWorkerSet."""
    group = int(environ.get(LWS_GROUP_SIZE, "1"))
    if group < 1 or world % group:
        raise ParallelLayoutError(f"{LWS_GROUP_SIZE}: {group} pods cannot split {world} ranks evenly")
    return world // group


def start_follower(options: EngineOptions, rank: int, world: WorldSpec) -> subprocess.Popen[bytes]:
    """Start follower ``rank`` (``python -m deepserve.engine.parallel.rank``)."""
    return subprocess.Popen([python_executable(), "-m", "deepserve.engine.parallel.rank"],
                            env=follower_env(options, rank, world))


class RankSupervisor:
    """Watches follower processes; the first one to exit fails the replica."""

    def __init__(self, procs: dict[int, subprocess.Popen[bytes]], on_failure: FailureHandler,
                 poll_s: float = 0.1) -> None:
        self.procs, self.on_failure, self.poll_s = procs, on_failure, poll_s
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="deepserve-rank-supervisor",
                                        daemon=True)

    def start(self) -> None:
        """Begin watching (from before the followers have even loaded)."""
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code is not None and not self._stopping.is_set():
                    self.failure = f"rank {rank} (pid {proc.pid}) exited with code {code}"
                    self.on_failure(self.failure)
                    return

    def stop(self, timeout_s: float = 30.0) -> dict[int, int | None]:
        """Stop watching; wait for the followers to exit, kill those that do not."""
        self._stopping.set()
        codes: dict[int, int | None] = {}
        for rank, proc in self.procs.items():
            try:
                codes[rank] = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[rank] = proc.wait(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=1)
        return codes


@dataclass
class Replica:
    """The serving rank's view of its replica: the engine and, when parallel, its ranks."""

    engine: InferenceEngine
    layout: RankLayout
    channel: ControlChannel | None = None
    supervisor: RankSupervisor | None = None
    failure: str | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def healthy(self) -> bool:
        """False once any rank failed."""
        return self.failure is None

    def close(self) -> dict[int, int | None]:
        """Stop the followers (after the engine has stopped); returns their exit codes."""
        if self._closed or self.channel is None or self.supervisor is None:
            return {}
        self._closed = True
        self.channel.close()
        codes = self.supervisor.stop()
        if dist.is_initialized():
            dist.destroy_process_group()
        return codes


def launch_replica(options: EngineOptions, on_failure: FailureHandler | None = None, *,
                   master_addr: str = "127.0.0.1", port: int | None = None,
                   timeout_s: float | None = None) -> Replica:
    """Build the engine of a (possibly multi-process) replica as its rank 0.

    ``on_failure(reason)`` runs once, on a supervisor or engine thread, when a rank dies
    or a collective fails. Raises what the build raises (after stopping the followers).
    """
    layout = RankLayout(options.tensor_parallel, options.pipeline_parallel, 0)
    if layout.world == 1:
        return Replica(build_engine(options), layout)
    backend = "nccl" if resolve_device(options).type == "cuda" else "gloo"
    port = port or int(os.environ.get(MASTER_PORT_ENV, "0")) or free_port(master_addr)
    world = WorldSpec(master_addr, port, backend,
                      timeout_s if timeout_s is not None else collective_timeout_s())
    local = local_rank_count(layout.world, os.environ)  # the rest join from worker pods
    replica_box: list[Replica] = []
    failures: list[str] = []

    def failed(reason: str) -> None:
        if failures:
            return
        failures.append(reason)
        log.error("tensor/pipeline replica failed: %s", reason)
        if replica_box:
            replica_box[0].failure = reason
            if replica_box[0].channel is not None:
                replica_box[0].channel.failure = replica_box[0].channel.failure or reason
        if on_failure is not None:
            on_failure(reason)

    procs = {rank: start_follower(options, rank, world) for rank in range(1, local)}
    supervisor = RankSupervisor(procs, failed)
    supervisor.start()
    try:
        engine, channel = build_rank(options, layout, world,
                                     abort=lambda: failures[0] if failures else None)
    except BaseException:
        supervisor.stop(timeout_s=0)
        for proc in procs.values():
            proc.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    channel.on_failure = failed
    replica = Replica(engine, layout, channel, supervisor, failures[0] if failures else None)
    replica_box.append(replica)
    attach_leader(engine, channel)
    log.info("replica of %d ranks ready (TP %d x PP %d, %s)", layout.world,
             layout.tensor_parallel, layout.pipeline_parallel, backend)
    return replica
