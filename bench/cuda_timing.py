"""CUDA-graph capture and timing shared by the GPU benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def capture(fn: Callable[[], Any], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Run ``fn`` ``warmup`` times on a side stream (compiles kernels, autotunes), then capture
    one call in a CUDA graph; returns the graph and the captured call's output (overwritten
    in place by every replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def graph_ms(fn: Callable[[], Any], iters: int = 20) -> float:
    """Mean ms per call of ``fn`` replayed from a CUDA graph (launch overhead excluded)."""
    graph, _ = capture(fn)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
