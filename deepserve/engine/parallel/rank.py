"""One rank of a TP x PP replica: load, join the world, shard, build the engine.

Every rank (the serving rank 0 inside Triton, and the followers started by
:mod:`deepserve.engine.parallel.launcher` or by a LeaderWorkerSet worker pod) calls
:func:`build_rank`. Weights load *before* the process group exists, and the ranks wait
for each other on the rendezvous store (with a long timeout, polled so a rank that dies
while loading is noticed), so the short collective timeout only applies to serving.

``python -m deepserve.engine.parallel.rank`` is a follower's entry point; it reads
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and the options
(``DEEPSERVE_ENGINE_OPTIONS``) from the environment, never from argv.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from deepserve.engine.build import resolve_device, resolve_precision
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.features import install_features
from deepserve.engine.options import EngineOptions
from deepserve.engine.parallel.control import ControlChannel, RankFailure, follow
from deepserve.engine.parallel.layout import ParallelLayoutError, RankLayout, check_layout
from deepserve.engine.parallel.pipeline import apply_pipeline_parallel
from deepserve.engine.parallel.tensor_parallel import apply_tensor_parallel
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sources import resolve_model_dir
from deepserve.engine.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

OPTIONS_ENV = "DEEPSERVE_ENGINE_OPTIONS"
TIMEOUT_ENV = "DEEPSERVE_COLLECTIVE_TIMEOUT_S"
DEVICE_ENV = "DEEPSERVE_RANK_DEVICE"  # force a CUDA device index (tests on one GPU)
DEFAULT_TIMEOUT_S = 30.0
RENDEZVOUS_TIMEOUT_S = 900.0
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """How the ranks of a replica find each other."""

    master_addr: str
    master_port: int
    backend: str  # "nccl" on GPUs, "gloo" on CPU
    timeout_s: float = DEFAULT_TIMEOUT_S


def collective_timeout_s() -> float:
    """The collective timeout: ``DEEPSERVE_COLLECTIVE_TIMEOUT_S`` or 30 s."""
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def rank_device(options: EngineOptions, layout: RankLayout) -> torch.device:
    """This rank's device: ``cuda:<local rank>`` (one GPU per process) or ``cpu``."""
    device = resolve_device(options)
    if device.type != "cuda":
        return device
    index = int(os.environ.get(DEVICE_ENV, layout.rank % max(1, torch.cuda.device_count())))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _check_supported(options: EngineOptions, layout: RankLayout) -> None:
    if layout.pipeline_parallel > 1 and options.sparse_attention.enabled:
        raise ParallelLayoutError("pipeline_parallel: sparse attention is not supported with "
                                  "pipeline stages yet")
    if layout.pipeline_parallel > 1 and (options.prefix_cache_mib or options.host_cache_mib):
        raise ParallelLayoutError("pipeline_parallel: the prefix cache is not supported with "
                                  "pipeline stages yet (stages hold different layers)")


def wait_for_ranks(store: Any, world: int, timeout_s: float,
                   abort: Callable[[], str | None] | None = None) -> None:
    """Block until every rank has loaded its weights; ``abort()`` returning text stops it."""
    keys = [f"deepserve/loaded/{r}" for r in range(world)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        reason = abort() if abort is not None else None
        if reason:
            raise RankFailure(f"while waiting for the other ranks: {reason}")
        if time.monotonic() > deadline:
            raise RankFailure(f"the other ranks did not load within {timeout_s:.0f}s")
        time.sleep(0.05)


def build_rank(options: EngineOptions, layout: RankLayout, world: WorldSpec,
               abort: Callable[[], str | None] | None = None,
               micro_batches: int = 2) -> tuple[InferenceEngine, ControlChannel]:
    """Load this rank's part of the model, join the replica's world and build its engine."""
    _check_supported(options, layout)
    device = rank_device(options, layout)
    precision = resolve_precision(options, device)
    options = dataclasses.replace(options, model_dir=resolve_model_dir(options.model_dir))
    model = load_transformer(options.model_dir, device=device, dtype=_DTYPES[precision])
    args = model.args
    check_layout(layout.tensor_parallel, layout.pipeline_parallel, num_layers=args.num_layers,
                 attention_heads=args.num_heads,
                 kv_heads=args.num_heads if args.is_mla else args.num_kv_heads)
    tokenizer = TextTokenizer.from_dir(options.model_dir, args.eos_token_ids)
    store = dist.TCPStore(world.master_addr, world.master_port, layout.world,
                          is_master=layout.rank == 0,
                          timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    store.set(f"deepserve/loaded/{layout.rank}", "1")
    wait_for_ranks(store, layout.world, RENDEZVOUS_TIMEOUT_S, abort)
    timeout = timedelta(seconds=world.timeout_s)
    dist.init_process_group(world.backend, store=dist.PrefixStore("pg", store), rank=layout.rank,
                            world_size=layout.world, timeout=timeout)
    control = dist.new_group(list(range(layout.world)), backend="gloo", timeout=timeout)
    tp_groups = [dist.new_group(layout.stage_ranks(s), timeout=timeout)
                 for s in range(layout.pipeline_parallel)]
    apply_pipeline_parallel(model, layout, micro_batches)
    apply_tensor_parallel(model, tp_groups[layout.stage])
    features = install_features(model, dataclasses.replace(options, tensor_parallel=1),
                                tokenizer.encode)
    features.tensor_parallel = layout.tensor_parallel
    if options.compile:
        log.warning("compile: off with tensor/pipeline parallelism (collectives in the step)")
    engine = InferenceEngine(
        model, tokenizer, slots=options.cache_slots, max_input_tokens=options.max_input_tokens,
        max_new_tokens_limit=options.max_new_tokens_limit, precision=features.precision,
        features=features)
    log.info("rank %d of %d ready (TP %d x PP %d, %s on %s)", layout.rank, layout.world,
             layout.tensor_parallel, layout.pipeline_parallel, world.backend, device)
    return engine, ControlChannel(control, heartbeat_s=max(0.2, min(2.0, world.timeout_s / 4)))


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent (the serving rank) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the collective timeout still ends the follower
        pass


def follower_main(environ: dict[str, str] | None = None) -> int:
    """Run one follower rank from its environment; returns the process exit code."""
    env = os.environ if environ is None else environ
    logging.basicConfig(level=env.get("DEEPSERVE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s rank " + env.get("RANK", "?") + " %(name)s: %(message)s")
    if env.get("DEEPSERVE_DIE_WITH_PARENT", "1") == "1":
        _die_with_parent()
    options = EngineOptions.from_json(env[OPTIONS_ENV])
    layout = RankLayout(options.tensor_parallel, options.pipeline_parallel, int(env["RANK"]))
    if int(env["WORLD_SIZE"]) != layout.world:
        log.error("WORLD_SIZE %s is not TP x PP = %d", env["WORLD_SIZE"], layout.world)
        return 2
    world = WorldSpec(env["MASTER_ADDR"], int(env["MASTER_PORT"]), env.get("DEEPSERVE_BACKEND", "gloo"),
                      float(env.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    torch.set_num_threads(int(env.get("DEEPSERVE_RANK_THREADS", "1")))
    try:
        engine, channel = build_rank(options, layout, world)
        handled = follow(engine, channel)
    except Exception:
        log.exception("rank %d failed", layout.rank)
        return 1
    log.info("rank %d stopping after %d messages", layout.rank, handled)
    return 0


if __name__ == "__main__":
    code = follower_main()
    logging.shutdown()
    os._exit(code)  # skip interpreter teardown (seconds with torch loaded); the world is done
