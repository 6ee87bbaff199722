"""A served replica over several processes: rank 0 (this process) drives real follower ranks.

TP=2 over gloo answers the same tokens as TP=1 through the ordinary engine (continuous
batching, streaming chunks, prefix cache); a follower killed with SIGKILL fails the
replica within seconds and the next request ends in an error instead of hanging.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions
from deepserve.engine.parallel.launcher import launch_replica
from deepserve.engine.sampling import SamplingParams

pytestmark = [pytest.mark.unit, pytest.mark.slow]

LONG = "The quick brown fox jumps over the lazy dog while the farmer sleeps in the barn"
PROMPTS = [LONG, "Once upon a time there was", LONG + " and dreams"]
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)


def _options(model_dir: Path, **changes: object) -> EngineOptions:
    return EngineOptions(model_dir=str(model_dir), device="cpu", precision="fp32",
                         max_batch_size=4, max_input_tokens=64, max_new_tokens_limit=32,
                         **changes)  # type: ignore[arg-type]


def _tokens(engine: object, prompts: list[str]) -> list[list[int]]:
    results = engine.generate(prompts, PARAMS)  # type: ignore[attr-defined]
    assert all(r.finish_reason == "length" for r in results), [r.error for r in results]
    return [list(r.token_ids) for r in results]


def test_tp2_replica_answers_like_tp1(tiny_model_dirs: dict[str, Path]) -> None:
    options = _options(tiny_model_dirs["llama"], tensor_parallel=2, prefix_cache_mib=1)
    reference = _tokens(build_engine(options.replace(tensor_parallel=1)), PROMPTS)
    failures: list[str] = []
    replica = launch_replica(options, failures.append, timeout_s=20)
    try:
        engine = replica.engine
        assert engine.model.args.num_kv_heads == 1  # rank 0 holds half the KV heads
        assert _tokens(engine, PROMPTS) == reference  # three requests batched together
        again = engine.generate([PROMPTS[0]], PARAMS)[0]  # served from the prefix cache
        assert again.reused_prompt_tokens > 0 and list(again.token_ids) == reference[0]
        engine.start()  # streaming from the engine thread: chunks arrive one by one
        chunks = list(engine.submit(PROMPTS[1], PARAMS))
        engine.stop()
        assert len(chunks) > 1 and chunks[-1].token_ids == reference[1]
    finally:
        codes = replica.close()
    assert failures == [] and codes == {1: 0}


def test_dead_rank_fails_the_replica_loudly(tiny_model_dirs: dict[str, Path]) -> None:
    failed = threading.Event()
    reasons: list[str] = []

    def on_failure(reason: str) -> None:
        reasons.append(reason)
        failed.set()

    replica = launch_replica(_options(tiny_model_dirs["llama"], tensor_parallel=2), on_failure,
                             timeout_s=10)
    try:
        assert replica.supervisor is not None
        follower = replica.supervisor.procs[1]
        os.kill(follower.pid, signal.SIGKILL)
        start = time.monotonic()
        assert failed.wait(5), "the supervisor did not notice the dead rank"
        assert "rank 1" in reasons[0] and str(-signal.SIGKILL) in reasons[0]
        assert not replica.healthy
        result = replica.engine.generate([PROMPTS[0]], PARAMS)[0]  # no hang: an error
        assert result.finish_reason == "error"
        assert time.monotonic() - start < 15
    finally:
        replica.close()


def test_worker_pod_joins_the_leader_from_the_lws_environment(
        tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-pod LeaderWorkerSet group played by two process trees: the leader (this
    process, rank 0) and a worker pod's node agent (rank 1) that finds the leader only
    through LWS_LEADER_ADDRESS / LWS_GROUP_SIZE / LWS_WORKER_INDEX."""
    import subprocess
    import sys

    from deepserve.engine.parallel.launcher import free_port
    from deepserve.engine.parallel.rank import OPTIONS_ENV

    options = _options(tiny_model_dirs["llama"], tensor_parallel=2)
    reference = _tokens(build_engine(options.replace(tensor_parallel=1)), PROMPTS[:2])
    port = free_port()
    lws = {"LWS_GROUP_SIZE": "2", "DEEPSERVE_MASTER_PORT": str(port)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "deepserve.engine.parallel.node"],
        env={**os.environ, **lws, "LWS_LEADER_ADDRESS": "127.0.0.1", "LWS_WORKER_INDEX": "1",
             OPTIONS_ENV: options.to_json(), "DEEPSERVE_COLLECTIVE_TIMEOUT_S": "10"})
    for key, value in lws.items():
        monkeypatch.setenv(key, value)
    failed = threading.Event()
    replica = launch_replica(options, lambda reason: failed.set(), timeout_s=10)
    try:
        assert replica.supervisor is not None and replica.supervisor.procs == {}  # rank 1 is remote
        assert _tokens(replica.engine, PROMPTS[:2]) == reference
        rank1 = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == worker.pid]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)  # the worker pod's rank dies
        assert worker.wait(timeout=10) == 1  # the pod fails (LWS recreates the whole group)
        assert failed.wait(10)  # and the leader notices through its next broadcast
    finally:
        replica.close()
        if worker.poll() is None:
            worker.kill()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
