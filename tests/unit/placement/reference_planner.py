"""The planner as it was before the cluster-scale optimisation (#21.1), kept as the reference.

A verbatim copy (commit 7b01d28) of ``plan_placement`` with its option evaluation and of the
multi-node search, rebuilt on the unchanged estimators and rule helpers. The equivalence test
(test_planner_equivalence.py) asserts that the optimised planner returns exactly the plan this
returns: the same chosen option, the same ranked list with every float bit for bit, the same
reason. Not used by the product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepserve.engine.hardware import Accelerator, Catalog, load_catalog
from deepserve.operator.placement.estimate import (
    GIB,
    Estimate,
    LoadTerms,
    Workload,
    engine_fp8_native,
    estimate,
    kv_cache_bytes_per_gpu,
    load_terms,
    weight_bytes_per_gpu,
)
from deepserve.operator.placement.factors import DEFAULT_FACTORS, EfficiencyFactors
from deepserve.operator.placement.parallel import (
    ACTIVATION_BYTES,
    MAX_STAGES_PER_NODE,
    Communication,
    MultiNodeCandidate,
    allreduce_s,
    engine_can_split,
    inter_node_fabric,
    intra_node_fabric,
)
from deepserve.operator.placement.planner import (
    STAGES,
    Candidate,
    PlacementPlan,
    PlacementRequest,
    _pool_level,
    _reason,
    _rule_violation,
    serving_precision,
    strategy_key,
    tp_degrees,
)
from deepserve.operator.placement.pools import PoolOffer
from deepserve.operator.placement.shape import ModelShape


def _evaluate(shape: ModelShape, pool: PoolOffer, acc: Accelerator, precision: str, tp: int,
              request: PlacementRequest, work: Workload, factors: EfficiencyFactors,
              selector: dict[str, str], cache: dict[tuple[str, int, bool], LoadTerms]) -> Candidate:
    """Check the hard rules cheapest-first; only options that fit get a speed estimate."""

    def make(code: str | None, reason: str | None, memory: float = 0.0,
             est: Estimate | None = None) -> Candidate:
        if est is None:
            return Candidate(pool.name, acc.id, tp, tp, precision, memory, currency=pool.currency,
                             node_selector=selector, rejected_reason=reason, rejected_code=code)
        cost = None
        if pool.price_per_gpu_hour is not None:
            cost = pool.price_per_gpu_hour * tp / 3600.0 / est.replica_tokens_per_s * 1e6
        return Candidate(
            pool.name, acc.id, tp, tp, precision, est.memory_gib_per_gpu,
            decode_tokens_per_s=work.concurrency / est.decode_step_s,
            per_request_tokens_per_s=est.per_request_tokens_per_s,
            prefill_tokens_per_s=work.prompt_tokens / est.prefill_s,
            ttft_ms=est.prefill_s * 1e3,
            request_latency_ms=(est.prefill_s + work.generated_tokens * est.decode_step_s) * 1e3,
            replica_tokens_per_s=est.replica_tokens_per_s, cost_per_million_tokens=cost,
            currency=pool.currency, node_selector=selector, rejected_reason=reason,
            rejected_code=code,
        )

    violation = _rule_violation(shape, pool, acc, tp, request)
    if violation:
        return make("TensorParallelLimit", violation)
    native = engine_fp8_native(acc)
    terms = cache.get((precision, tp, native))
    if terms is None:
        terms = cache[(precision, tp, native)] = load_terms(shape, precision, tp, work, factors,
                                                            native)
    need = terms.memory_bytes / GIB
    usable = acc.memory_gib * factors.memory_utilization
    if need > usable:
        return make("NoPoolFits", f"needs {need:.1f} GiB per GPU at TP={tp}, {acc.name} offers "
                    f"{usable:.1f} usable of {acc.memory_gib:.4g}", need)
    capacity = pool.replica_capacity(tp)
    if capacity < request.replicas:
        return make("NoCapacity", f"room for {capacity} of {request.replicas} replicas of {tp} "
                    f"GPUs ({pool.free_gpus} free, max {pool.max_nodes} nodes)", need)
    est = estimate(shape, acc, precision, tp, work, factors, terms)
    if request.slo_min_tokens_per_s and est.per_request_tokens_per_s < request.slo_min_tokens_per_s:
        return make("SLONotMet", f"{est.per_request_tokens_per_s:.1f} tokens/s per request "
                    f"< SLO {request.slo_min_tokens_per_s:g}", est=est)
    if request.slo_max_ttft_ms and est.prefill_s * 1e3 > request.slo_max_ttft_ms:
        return make("SLONotMet", f"TTFT {est.prefill_s * 1e3:.0f} ms > SLO "
                    f"{request.slo_max_ttft_ms:g} ms", est=est)
    return make(None, None, est=est)


def reference_plan_placement(
    shape: ModelShape, pools: Sequence[PoolOffer], request: PlacementRequest,
    catalog: Catalog | None = None, factors: EfficiencyFactors = DEFAULT_FACTORS,
) -> PlacementPlan:
    """Rank every (pool, TP) option for ``shape`` and choose the best feasible one.

    Returns a plan whose ``ranked`` lists feasible options best-first, then rejected ones (each
    with ``rejected_reason``); ``chosen`` is ``ranked[0]`` when it is feasible, else None, and
    ``reason`` says why in one line (``NoPoolFits: ...``, ``NoCapacity: ...`` and so on).
    """
    catalog = catalog or load_catalog()
    feasible: list[Candidate] = []
    rejected: list[Candidate] = []
    work = request.workload()
    cache: dict[tuple[str, int, bool], LoadTerms] = {}
    for pool in pools:
        card = catalog.get(pool.accelerator_id) if pool.accelerator_id in catalog else None
        acc = pool.accelerator(card) if card else None  # a MIG slice offers its own memory
        precision = serving_precision(acc, request.precision) if acc else None
        refused = _pool_level(pool, acc, request, precision)
        if refused:
            rejected.append(Candidate(
                pool=pool.name, accelerator_id=pool.accelerator_id, tensor_parallel=0,
                gpus_per_replica=0, precision=precision or request.precision,
                currency=pool.currency, node_selector=dict(pool.node_selector),
                rejected_code=refused[0], rejected_reason=refused[1]))
            continue
        assert acc is not None and precision is not None
        selector = dict(pool.node_selector)
        for tp in tp_degrees(shape, pool, request):
            cand = _evaluate(shape, pool, acc, precision, tp, request, work, factors, selector,
                             cache)
            (feasible if cand.feasible else rejected).append(cand)
    if not feasible:  # no single node holds a replica: TP inside nodes x PP across them

        multi = plan_multi_node(shape, pools, request, catalog, factors, rejected)
        if multi is not None:
            return multi
    feasible.sort(key=lambda c: strategy_key(request.strategy, c))
    rejected.sort(key=lambda c: (-STAGES.get(c.rejected_code or "", 0), c.pool, c.tensor_parallel))
    reason = _reason(shape, request, feasible, rejected, pools, catalog)
    return PlacementPlan(chosen=feasible[0] if feasible else None,
                         ranked=feasible + rejected, reason=reason)


def communication(shape: ModelShape, acc: Accelerator, precision: str, tp: int, pp: int,
                  gpus_per_node: int, work: Workload,
                  factors: EfficiencyFactors = DEFAULT_FACTORS) -> tuple[Communication, Estimate]:
    """Model one replica of ``tp x pp`` GPUs, ``gpus_per_node`` to a node.

    Compute is the planner's roofline (the weights/TP each token streams through every
    stage in turn). TP all-reduces (two per layer) run inside a node, or over the
    inter-node fabric when TP exceeds a node; each of the ``pp - 1`` stage boundaries
    sends one activation per token, over NVLink when both stages share a node.
    """
    intra, inter = intra_node_fabric(acc), inter_node_fabric(acc)
    base = estimate(shape, acc, precision, tp, work, factors)
    tp_fabric = intra if tp <= gpus_per_node else inter
    tp_latency = factors.allreduce_latency_s
    if tp > gpus_per_node:  # hops between nodes: the ring crosses the fabric 2(n-1) times
        tp_latency += 2 * (tp // gpus_per_node - 1) * inter.latency_us * 1e-6

    def tp_s(tokens: int) -> float:
        one = allreduce_s(tokens * shape.hidden_size * ACTIVATION_BYTES, tp, tp_fabric,
                          tp_latency, factors.interconnect)
        return 2 * shape.layers * one

    def pp_s(tokens: int) -> float:
        total = 0.0
        for boundary in range(1, pp):
            link = inter if (boundary * tp) % gpus_per_node == 0 else intra
            total += (link.latency_us * 1e-6 + tokens * shape.hidden_size * ACTIVATION_BYTES
                      / (link.bandwidth_gbs * 1e9 * factors.interconnect))
        return total

    batch, prompt = work.concurrency, work.prompt_tokens
    intra_tp = 2 * shape.layers * allreduce_s(batch * shape.hidden_size * ACTIVATION_BYTES, tp,
                                              intra, factors.allreduce_latency_s,
                                              factors.interconnect) if tp > 1 else 0.0
    intra_tp_prefill = 2 * shape.layers * allreduce_s(
        prompt * shape.hidden_size * ACTIVATION_BYTES, tp, intra, factors.allreduce_latency_s,
        factors.interconnect) if tp > 1 else 0.0
    comm = Communication(
        decode_compute_s=base.decode_step_s - intra_tp, decode_tp_s=tp_s(batch),
        decode_pp_s=pp_s(batch), prefill_compute_s=base.prefill_s - intra_tp_prefill,
        prefill_tp_s=tp_s(prompt), prefill_pp_s=pp_s(prompt))
    return comm, base


def memory_gib_per_gpu(shape: ModelShape, precision: str, tp: int, pp: int, work: Workload,
                       acc: Accelerator, factors: EfficiencyFactors = DEFAULT_FACTORS) -> float:
    """GiB one GPU of a ``tp x pp`` replica needs: its stage's weight and KV shard."""
    native = engine_fp8_native(acc)
    weights = weight_bytes_per_gpu(shape, precision, tp, native) / pp
    kv = kv_cache_bytes_per_gpu(shape, precision, tp, work.concurrency * work.context_length) / pp
    chunk = min(work.prompt_tokens, factors.prefill_chunk_tokens)
    activations = chunk * shape.hidden_size * factors.activation_bytes_per_hidden / tp
    return (weights + kv + activations) / GIB + factors.runtime_overhead_gib


def node_layouts(shape: ModelShape, pool: PoolOffer, max_tp: int) -> list[tuple[int, int, int]]:
    """``(tp, pp, nodes)`` for 2..max_nodes whole nodes: TP in a node, whole stages per node."""
    per_node = pool.gpus_per_node
    max_nodes = max(pool.max_nodes, pool.nodes)
    out = []
    for stages_per_node in range(1, MAX_STAGES_PER_NODE + 1):
        if per_node % stages_per_node:
            continue
        tp = per_node // stages_per_node
        if tp > max_tp or not engine_can_split(shape, tp):
            continue
        for nodes in range(2, max_nodes + 1):
            pp = nodes * stages_per_node
            if pp <= shape.layers:
                out.append((tp, pp, nodes))
    return out


def _whole_node_capacity(pool: PoolOffer, nodes: int) -> int:
    free = pool.whole_free_nodes()  # per-pool aggregate, computed once
    return (free + max(0, pool.max_nodes - pool.nodes)) // nodes


def _candidate(shape: ModelShape, pool: PoolOffer, acc: Accelerator, precision: str,
               layout: tuple[int, int, int], request: PlacementRequest, work: Workload,
               factors: EfficiencyFactors) -> MultiNodeCandidate:
    tp, pp, nodes = layout
    gpus = tp * pp
    need = memory_gib_per_gpu(shape, precision, tp, pp, work, acc, factors)
    common: dict[str, Any] = dict(pool=pool.name, accelerator_id=acc.id, tensor_parallel=tp,
                                  gpus_per_replica=gpus, precision=precision,
                                  memory_gib_per_gpu=need, currency=pool.currency,
                                  node_selector=dict(pool.node_selector), pipeline_parallel=pp,
                                  nodes_per_replica=nodes)
    usable = acc.memory_gib * factors.memory_utilization
    if need > usable:
        return MultiNodeCandidate(**common, rejected_code="NoPoolFits", rejected_reason=(
            f"needs {need:.1f} GiB per GPU at TP={tp} x PP={pp}, {acc.name} offers {usable:.1f}"))
    if _whole_node_capacity(pool, nodes) < request.replicas:
        return MultiNodeCandidate(**common, rejected_code="NoCapacity", rejected_reason=(
            f"room for fewer than {request.replicas} replicas of {nodes} whole nodes"))
    comm, _ = communication(shape, acc, precision, tp, pp, pool.gpus_per_node, work, factors)
    decode = comm.decode_compute_s + comm.decode_tp_s + comm.decode_pp_s
    prefill = comm.prefill_compute_s + comm.prefill_tp_s + comm.prefill_pp_s
    batch, gen = work.concurrency, work.generated_tokens
    throughput = batch * (work.prompt_tokens + gen) / (batch * prefill + gen * decode)
    cost = (pool.price_per_gpu_hour * gpus / 3600.0 / throughput * 1e6
            if pool.price_per_gpu_hour is not None else None)
    inter = inter_node_fabric(acc)
    text = (f"TP={tp} inside each node ({intra_node_fabric(acc).name}), PP={pp} stages over "
            f"{nodes} nodes ({inter.name.split(',')[0]}): {need:.0f} GiB per GPU; communication "
            f"{comm.decode_share:.0%} of a decode step, {comm.prefill_share:.0%} of a prefill")
    return MultiNodeCandidate(
        **common, decode_tokens_per_s=batch / decode, per_request_tokens_per_s=1.0 / decode,
        prefill_tokens_per_s=work.prompt_tokens / prefill, ttft_ms=prefill * 1e3,
        request_latency_ms=(prefill + gen * decode) * 1e3, replica_tokens_per_s=throughput,
        cost_per_million_tokens=cost, communication_share=comm.decode_share, explanation=text)


def plan_multi_node(shape: ModelShape, pools: Sequence[PoolOffer], request: PlacementRequest,
                    catalog: Catalog, factors: EfficiencyFactors,
                    rejected: list[Candidate]) -> PlacementPlan | None:
    """The best replica over several whole nodes of one pool, or None when none fits.

    Called by the planner when no single node holds a replica; ``rejected`` are its
    single-node rejections, ranked after the multi-node options in the returned plan.
    A fixed ``gpusPerReplica`` is honoured (only layouts of exactly that many GPUs).
    """
    work = request.workload()
    feasible: list[Candidate] = []
    refused: list[Candidate] = []
    for pool in pools:
        if request.allowed_pools and pool.name not in request.allowed_pools:
            continue
        if pool.accelerator_id not in catalog or pool.gpus_per_node < 1:
            continue
        acc = pool.accelerator(catalog.get(pool.accelerator_id))  # a MIG slice: no NVLink
        precision = serving_precision(acc, request.precision)
        if precision is None or acc.interconnect_gbs <= 0 or pool.gpus_per_node < 2:
            continue
        if not inter_node_fabric(acc).spans_nodes:  # no RDMA fabric known between its nodes
            continue
        if pool.price_per_gpu_hour is not None and pool.currency != request.currency:
            continue
        no_room: set[int] = set()  # TP degrees out of whole nodes: more nodes per replica fit fewer
        for layout in node_layouts(shape, pool, request.max_tp):
            if request.gpus_per_replica is not None and layout[0] * layout[1] != request.gpus_per_replica:
                continue
            if layout[0] in no_room:
                continue
            cand = _candidate(shape, pool, acc, precision, layout, request, work, factors)
            if cand.rejected_code == "NoCapacity":
                no_room.add(layout[0])
            if cand.feasible and request.slo_min_tokens_per_s and (
                    cand.per_request_tokens_per_s < request.slo_min_tokens_per_s):
                cand = MultiNodeCandidate(**{**cand.__dict__, "rejected_code": "SLONotMet",
                                             "rejected_reason": "per-request tokens/s below the SLO"})
            (feasible if cand.feasible else refused).append(cand)
    if not feasible:
        return None
    # fewest nodes first (a larger group only adds sends and failure domain), then strategy
    feasible.sort(key=lambda c: (getattr(c, "nodes_per_replica", 1), strategy_key(request.strategy, c)))
    best = feasible[0]
    assert isinstance(best, MultiNodeCandidate)
    others = sorted(refused + rejected, key=lambda c: (-STAGES.get(c.rejected_code or "", 0),
                                                       c.pool, c.tensor_parallel))
    reason = (f"Chose pool {best.pool} ({best.accelerator_id}, {best.precision}) over "
              f"{best.nodes_per_replica} nodes as no single node holds a replica: "
              f"{best.explanation}; {best.per_request_tokens_per_s:.0f} tokens/s per request, "
              f"TTFT {best.ttft_ms:.0f} ms")
    return PlacementPlan(chosen=best, ranked=feasible + others, reason=reason)
