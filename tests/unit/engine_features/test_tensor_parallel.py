"""Tensor parallelism: TP=2 over two gloo processes gives the TP=1 logits."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.generate import decode_step, prefill
from deepserve.engine.parallel import TensorParallelError, apply_tensor_parallel

pytestmark = [pytest.mark.unit, pytest.mark.slow]

PROMPT = list(range(3, 40))


def _run(model: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    model.setup_caches(2, 64)
    kv_heads = model.model.layers[0].self_attn.cache.k_cache.shape[1] if not model.args.is_mla else 1
    with torch.inference_mode():
        first = prefill(model, torch.tensor(PROMPT), 0)
        step = decode_step(model, torch.tensor([int(first.argmax()), 0]),
                           torch.tensor([len(PROMPT), 0]))
    return first, step, kv_heads


def _worker(rank: int, world: int, model_dir: str, port: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = apply_tensor_parallel(load_transformer(model_dir))
        first, step, heads = _run(model)
        queue.put((rank, (first.numpy(), step.numpy(), heads)))  # plain arrays: no shared fds
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
def test_tp2_equals_tp1(tiny_model_dirs: dict[str, Path], arch: str) -> None:
    ref_first, ref_step, ref_heads = _run(load_transformer(tiny_model_dirs[arch]))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tiny_model_dirs[arch]), port, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    for rank in (0, 1):
        first_np, step_np, heads = results[rank]
        first, step = torch.from_numpy(first_np), torch.from_numpy(step_np)
        torch.testing.assert_close(first, ref_first, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(step, ref_step, rtol=1e-4, atol=1e-4)
        if arch == "llama":
            assert heads == ref_heads // 2  # each rank caches only its own KV heads


def test_indivisible_heads_are_refused(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        model = load_transformer(tiny_model_dirs["llama"])
        assert apply_tensor_parallel(model, group) is model  # world 1: unchanged
    finally:
        dist.destroy_process_group()
    from deepserve.engine.parallel.tensor_parallel import _split_gqa

    with pytest.raises(TensorParallelError, match="4 attention heads"):
        _split_gqa(model.model.layers[0].self_attn, 0, 3)  # type: ignore[arg-type]
    attn = model.model.layers[0].self_attn
    attn.heads, attn.kv_heads = 6, 3  # 3 KV heads neither split over 2 ranks nor replicate
    with pytest.raises(TensorParallelError, match="3 KV heads"):
        _split_gqa(attn, 0, 2)  # type: ignore[arg-type]


def test_kv_heads_are_replicated_when_ranks_outnumber_them(tiny_model_dirs: dict[str, Path]) -> None:
    """TP=4 over 2 KV heads: each rank keeps one whole KV head; the partial sums add up."""
    import copy

    from deepserve.engine.model.cache import KVCache
    from deepserve.engine.parallel.tensor_parallel import _split_gqa

    model = load_transformer(tiny_model_dirs["llama"])
    model.setup_caches(1, 64)
    attn = model.model.layers[0].self_attn
    assert (attn.heads, attn.kv_heads) == (4, 2)
    x = torch.randn(1, 9, model.args.hidden_size, generator=torch.Generator().manual_seed(0))
    batch = model.attention_batch(torch.arange(9)[None], torch.tensor([0]), fresh=True)
    with torch.inference_mode():
        full = attn(x, batch)
        total = torch.zeros_like(full)
        for rank in range(4):
            shard = copy.deepcopy(attn)
            _split_gqa(shard, rank, 4)  # type: ignore[arg-type]
            assert (shard.heads, shard.kv_heads) == (1, 1)
            shard.cache = KVCache(1, 1, 64, attn.head_dim, attn.head_dim, torch.float32)
            total += shard(x, batch)  # what the all-reduce adds
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-5)


def test_mlp_width_that_does_not_divide_splits_unevenly(tiny_model_dirs: dict[str, Path]) -> None:
    """TP=3 over an MLP of width 128: shares of 43/43/42 rows still sum to the full output."""
    import copy

    from deepserve.engine.parallel.tensor_parallel import _split_mlp

    mlp = load_transformer(tiny_model_dirs["llama"]).model.layers[0].mlp
    x = torch.randn(2, 5, mlp.gate_proj.in_features, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = mlp(x)
        total = torch.zeros_like(full)
        widths = []
        for rank in range(3):
            shard = copy.deepcopy(mlp)
            _split_mlp(shard, rank, 3)  # type: ignore[arg-type]
            widths.append(shard.gate_proj.out_features)
            total += shard(x)
    assert widths == [43, 43, 42]
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-5)
