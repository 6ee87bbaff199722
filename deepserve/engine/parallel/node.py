"""A LeaderWorkerSet worker pod: start this node's ranks and join the leader's world.

The LWS controller sets ``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX``
in every pod of a group (https://github.com/kubernetes-sigs/lws, api/leaderworkerset/v1).
Pod ``i`` of ``n`` runs ranks ``i * world / n ... (i + 1) * world / n - 1`` (the leader,
index 0, runs rank 0 inside Triton and its node's other ranks); they rendezvous on the
leader's store at ``LWS_LEADER_ADDRESS:DEEPSERVE_MASTER_PORT``. The agent exits non-zero
as soon as one of its ranks fails, so the pod restarts and, with
``RecreateGroupOnPodRestart``, the whole group with it; it exits 0 when every rank was
stopped by the leader.

    python -m deepserve.engine.parallel.node     # the worker container's command
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

from deepserve.engine.build import resolve_device
from deepserve.engine.options import EngineOptions
from deepserve.engine.parallel.launcher import (
    LWS_GROUP_SIZE,
    MASTER_PORT_ENV,
    local_rank_count,
    start_follower,
)
from deepserve.engine.parallel.rank import OPTIONS_ENV, WorldSpec, collective_timeout_s

log = logging.getLogger("deepserve.engine.parallel.node")
LWS_LEADER_ADDRESS, LWS_WORKER_INDEX = "LWS_LEADER_ADDRESS", "LWS_WORKER_INDEX"
DEFAULT_MASTER_PORT = 29500


def node_ranks(world: int, environ: Mapping[str, str]) -> list[int]:
    """The global ranks this pod runs, from the LWS environment."""
    per_pod = local_rank_count(world, environ)
    index = int(environ.get(LWS_WORKER_INDEX, "0"))
    group = int(environ.get(LWS_GROUP_SIZE, "1"))
    if not 0 <= index < group:
        raise ValueError(f"{LWS_WORKER_INDEX}: {index} is outside the group of {group}")
    return list(range(index * per_pod, (index + 1) * per_pod))


def node_main(environ: Mapping[str, str] | None = None, poll_s: float = 0.2) -> int:
    """Run this node's ranks until they all stop; the exit code of the pod."""
    env = os.environ if environ is None else environ
    logging.basicConfig(level=env.get("DEEPSERVE_LOG_LEVEL", "INFO"))
    options = EngineOptions.from_json(env[OPTIONS_ENV])
    world_size = options.tensor_parallel * options.pipeline_parallel
    ranks = node_ranks(world_size, env)
    if 0 in ranks:
        log.error("worker index 0 is the leader: it runs Triton, not this agent")
        return 2
    backend = "nccl" if resolve_device(options).type == "cuda" else "gloo"
    world = WorldSpec(env[LWS_LEADER_ADDRESS],
                      int(env.get(MASTER_PORT_ENV, DEFAULT_MASTER_PORT)), backend,
                      collective_timeout_s())
    procs = {rank: start_follower(options, rank, world) for rank in ranks}
    log.info("node agent: ranks %s of %d joining %s:%d", ranks, world_size, world.master_addr,
             world.master_port)
    stopping = False

    def terminate(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, terminate)
    while True:
        codes = {rank: proc.poll() for rank, proc in procs.items()}
        failed = {r: c for r, c in codes.items() if c not in (None, 0)}
        if failed and not stopping:
            log.error("rank(s) %s failed (%s): stopping this node's other ranks", sorted(failed),
                      ", ".join(f"rank {r} exited with code {c}" for r, c in failed.items()))
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
            return 1
        if all(c is not None for c in codes.values()):
            return 0 if not failed else 1
        time.sleep(poll_s)


if __name__ == "__main__":
    sys.exit(node_main())
