"""Pipeline x tensor parallelism: TP2 x PP2 over 4 gloo processes equals one process.

The 4 ranks are built exactly as in serving (:func:`build_rank`); rank 0 drives them
through the control channel. For Llama, Qwen2 and DeepSeek-V3 (MLA + MoE) tiny
checkpoints: the logits of two prompts' prefill and of every decode step agree with a
single-process engine within 1e-5, and 64 greedy tokens per sequence are identical. The
decode batch of two slots is cut into two micro-batches, so both stages hold one at once.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from deepserve.engine.options import EngineOptions

pytestmark = [pytest.mark.unit, pytest.mark.slow]

ARCHS = ("llama", "qwen2", "deepseek_v3")
PROMPTS = [list(range(3, 30)), list(range(40, 51))]
STEPS = 64


def _options(model_dir: Path, tp: int = 1, pp: int = 1) -> EngineOptions:
    return EngineOptions(model_dir=str(model_dir), device="cpu", precision="fp32",
                         max_batch_size=2, max_input_tokens=32, max_new_tokens_limit=STEPS + 2,
                         tensor_parallel=tp, pipeline_parallel=pp)


def _generate(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Prefill both prompts, then STEPS greedy decode steps; (logits [1+STEPS, 2, V], tokens)."""
    from deepserve.engine.generate import decode_step, prefill

    with torch.inference_mode():
        first = torch.stack([prefill(model, torch.tensor(p), slot) for slot, p in enumerate(PROMPTS)])
        logits, tokens = [first], [first.argmax(-1)]
        positions = torch.tensor([len(p) for p in PROMPTS])
        for _ in range(STEPS - 1):
            step = decode_step(model, tokens[-1], positions)
            logits.append(step)
            tokens.append(step.argmax(-1))
            positions = positions + 1
    return torch.stack(logits).numpy(), torch.stack(tokens).numpy()


def _rank(rank: int, dirs: dict[str, str], ports: list[int], results: Any) -> None:
    import torch.distributed as dist

    from deepserve.engine.parallel.control import attach_leader, follow
    from deepserve.engine.parallel.layout import RankLayout
    from deepserve.engine.parallel.rank import WorldSpec, build_rank

    torch.set_num_threads(1)
    for arch, port in zip(ARCHS, ports, strict=True):
        layout = RankLayout(2, 2, rank)
        engine, channel = build_rank(_options(Path(dirs[arch]), 2, 2), layout,
                                     WorldSpec("127.0.0.1", port, "gloo", 30.0))
        if rank == 0:
            attach_leader(engine, channel)
            logits, tokens = _generate(engine.model)
            channel.close()
            results.put((arch, logits, tokens))
        else:
            follow(engine, channel)
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tp2_pp2_equals_one_process(tmp_path: Path) -> None:
    from deepserve.engine.build import build_engine
    from deepserve.engine.tiny import make_tiny_checkpoint

    dirs = {arch: make_tiny_checkpoint(tmp_path / arch, arch, seed=5) for arch in ARCHS}
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ports = [_free_port() for _ in ARCHS]
    procs = [ctx.Process(target=_rank, args=(r, {a: str(d) for a, d in dirs.items()}, ports, results))
             for r in range(4)]
    for proc in procs:
        proc.start()
    try:
        reference = {arch: _generate(build_engine(_options(dirs[arch])).model) for arch in ARCHS}
        got = {}
        for _ in ARCHS:
            arch, logits, tokens = results.get(timeout=150)
            got[arch] = (logits, tokens)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    for arch in ARCHS:
        ref_logits, ref_tokens = reference[arch]
        logits, tokens = got[arch]
        assert tokens.shape == (STEPS, 2)
        np.testing.assert_array_equal(tokens, ref_tokens, err_msg=arch)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5, err_msg=arch)
