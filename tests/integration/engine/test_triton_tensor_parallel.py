"""A real Triton serves a tiny model at TP=2: its instance (rank 0) starts rank 1 itself.

The streamed answer equals the in-process TP=1 engine's; killing rank 1 makes the server
report not-ready and exit within seconds (the pod would restart), never a hang.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepserve.engine.options import EngineOptions
from deepserve.engine.triton.local import LocalTriton
from deepserve.engine.triton.repository import write_model_repository

pytestmark = [pytest.mark.triton, pytest.mark.slow]
grpcclient = pytest.importorskip("tritonclient.grpc")
MODEL = "tiny-tp2"
RANK_MODULE = b"deepserve.engine.parallel.rank"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_processes(server_pid: int) -> list[int]:
    found = []
    for pid in _descendants(server_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if RANK_MODULE in cmdline.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def _stream(server: LocalTriton, prompt: str, max_tokens: int) -> str:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    try:
        client.async_stream_infer(MODEL, [text, limit], request_id="tp2")
        pieces = []
        while True:
            result, error = results.get(timeout=120)
            assert error is None, error
            pieces.append(result.as_numpy("text_output")[0].decode())
            if result.as_numpy("finish_reason")[0]:
                return "".join(pieces)
    finally:
        client.stop_stream()
        client.close()


def test_tp2_in_one_triton_instance_and_a_dead_rank(tmp_path: Path) -> None:
    from deepserve.engine.build import build_engine
    from deepserve.engine.sampling import SamplingParams
    from deepserve.engine.tiny import make_tiny_checkpoint

    model_dir = make_tiny_checkpoint(tmp_path / "ckpt", "llama", seed=3)
    options = EngineOptions(model_dir=str(model_dir), device="cpu", precision="fp32",
                            max_batch_size=4, max_input_tokens=64, max_new_tokens_limit=64,
                            served_model=MODEL, tensor_parallel=2)
    write_model_repository(tmp_path / "repo", MODEL, options)
    reference = build_engine(options.replace(tensor_parallel=1))
    prompt = "The cache holds"
    expected = reference.generate([prompt], SamplingParams(max_tokens=12))[0].text
    with LocalTriton(tmp_path / "repo", env={"DEEPSERVE_COLLECTIVE_TIMEOUT_S": "10"}) as server:
        assert server.process is not None
        assert _stream(server, prompt, 12) == expected
        ranks = _rank_processes(server.process.pid)
        assert len(ranks) == 1, ranks  # rank 1, started by the model instance
        os.kill(ranks[0], signal.SIGKILL)
        start = time.monotonic()
        while server.is_ready() and time.monotonic() - start < 20:
            time.sleep(0.2)
        not_ready_after = time.monotonic() - start
        assert not server.is_ready(), server.log_tail()
        print(f"server not ready {not_ready_after:.2f}s after rank 1 was killed")
        assert not_ready_after < 10
        server.process.wait(timeout=60)  # the server exits: the kubelet restarts the pod
        assert "rank 1" in server.log_tail(200) and "exited with code -9" in server.log_tail(200)
