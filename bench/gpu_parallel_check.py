"""On the one lent H200: NCCL initialisation, rank launch and supervision, ready for 2 GPUs.

1. ``world1``: rank 0 built by :func:`build_rank` with NCCL (world of 1): an all-reduce on
   the GPU, then the served engine (control channel attached) answers the same greedy
   tokens as a plain engine.
2. ``tp2``: :func:`launch_replica` at TP=2 with both ranks on GPU 0
   (``DEEPSERVE_RANK_DEVICE=0``). NCCL may refuse two ranks on one GPU; either way the
   outcome is reported, and a killed rank must fail the replica within seconds (no hang).
   Runs in a child process with a hard timeout.

    PYTHONUNBUFFERED=1 python3 bench/gpu_parallel_check.py   # writes $OUT/gpu_parallel.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROMPTS = ["The quick brown fox jumps over the lazy dog", "Once upon a time"]


def _options(model_dir: Path, tp: int = 1) -> Any:
    from deepserve.engine.options import EngineOptions

    return EngineOptions(model_dir=str(model_dir), device="cuda", precision="bf16",
                         max_batch_size=4, max_input_tokens=64, max_new_tokens_limit=32,
                         tensor_parallel=tp)


def _tokens(engine: Any) -> list[list[int]]:
    from deepserve.engine.sampling import SamplingParams

    results = engine.generate(PROMPTS, SamplingParams(max_tokens=24, ignore_eos=True))
    return [[int(t) for t in (r.token_ids or [])] + ([] if r.finish_reason == "length"
                                                      else [-1]) for r in results]


def world1(model_dir: Path) -> dict[str, Any]:
    """NCCL world of 1 through build_rank; served tokens equal a plain engine's."""
    import torch
    import torch.distributed as dist

    from deepserve.engine.build import build_engine
    from deepserve.engine.parallel.control import attach_leader
    from deepserve.engine.parallel.launcher import free_port
    from deepserve.engine.parallel.layout import RankLayout
    from deepserve.engine.parallel.rank import WorldSpec, build_rank

    cuda = torch.cuda.is_available()  # a CPU dry run of this script uses gloo
    reference = _tokens(build_engine(_options(model_dir)))
    start = time.monotonic()
    engine, channel = build_rank(_options(model_dir), RankLayout(1, 1, 0),
                                 WorldSpec("127.0.0.1", free_port(), "nccl" if cuda else "gloo", 30.0))
    built_s = time.monotonic() - start
    probe = torch.full((4,), 3.0, device="cuda" if cuda else "cpu")
    dist.all_reduce(probe)
    attach_leader(engine, channel)
    served = _tokens(engine)
    channel.close()
    backend = dist.get_backend()
    dist.destroy_process_group()
    return {"backend": backend, "build_s": round(built_s, 2),
            "all_reduce_ok": bool((probe == 3.0).all().item()),
            "tokens_equal_plain_engine": served == reference,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu"}


def tp2(model_dir: Path) -> dict[str, Any]:
    """TP=2, both ranks on GPU 0, through the launcher; then kill rank 1."""
    os.environ["DEEPSERVE_RANK_DEVICE"] = "0"
    from deepserve.engine.parallel.launcher import launch_replica

    failed = threading.Event()
    reasons: list[str] = []

    def on_failure(reason: str) -> None:
        reasons.append(reason)
        failed.set()

    out: dict[str, Any] = {}
    start = time.monotonic()
    try:
        replica = launch_replica(_options(model_dir, tp=2), on_failure, timeout_s=20)
    except Exception as exc:  # NCCL may refuse two ranks on one GPU: report it
        out.update(launched=False, error=f"{type(exc).__name__}: {exc}"[:600],
                   after_s=round(time.monotonic() - start, 2))
        return out
    out.update(launched=True, launch_s=round(time.monotonic() - start, 2))
    try:
        tokens = _tokens(replica.engine)
        out["tokens"] = "ok" if all(t and t[-1] != -1 for t in tokens) else "error"
        from deepserve.engine.build import build_engine

        out["tokens_equal_tp1"] = tokens == _tokens(build_engine(_options(model_dir)))
        if failed.is_set():
            out["failure_before_kill"] = reasons[0][:600]
        else:
            assert replica.supervisor is not None
            killed = time.monotonic()
            os.kill(replica.supervisor.procs[1].pid, signal.SIGKILL)
            out["failure_noticed"] = failed.wait(10)
            out["failure_after_s"] = round(time.monotonic() - killed, 2)
            out["failure_reason"] = reasons[0][:300] if reasons else None
            from deepserve.engine.sampling import SamplingParams

            after = replica.engine.generate([PROMPTS[0]], SamplingParams(max_tokens=4))
            out["request_after_kill"] = after[0].finish_reason
    finally:
        out["exit_codes"] = {str(k): v for k, v in replica.close().items()}
    return out


def main() -> None:
    """Run both checks; print and save the JSON."""
    if len(sys.argv) > 1 and sys.argv[1] == "tp2":
        print("TP2_RESULT " + json.dumps(tp2(Path(sys.argv[2]))), flush=True)
        return
    from deepserve.engine.tiny import make_tiny_checkpoint

    root = Path(tempfile.mkdtemp(prefix="gpu-parallel-"))
    model_dir = make_tiny_checkpoint(root / "llama", "llama", seed=3)
    result: dict[str, Any] = {"world1": world1(model_dir)}
    print(json.dumps(result), flush=True)
    start = time.monotonic()
    try:
        child = subprocess.run([sys.executable, __file__, "tp2", str(model_dir)],
                               capture_output=True, text=True, timeout=90)
        line = next((x for x in child.stdout.splitlines() if x.startswith("TP2_RESULT ")), None)
        result["tp2"] = (json.loads(line[len("TP2_RESULT "):]) if line else
                         {"exit": child.returncode, "stderr_tail": child.stderr[-1500:]})
        result["tp2"]["child_exit"] = child.returncode
    except subprocess.TimeoutExpired as exc:
        result["tp2"] = {"hung": True, "after_s": round(time.monotonic() - start, 1),
                         "stderr_tail": (exc.stderr or b"")[-1500:].decode(errors="replace")
                         if isinstance(exc.stderr, bytes) else str(exc.stderr)[-1500:]}
    text = json.dumps(result, indent=2)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_parallel.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
