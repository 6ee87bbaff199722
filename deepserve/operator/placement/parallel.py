"""TP x PP x nodes: replicas larger than one node, and what their communication costs.

When no single node of any pool holds a replica, :func:`plan_multi_node` places it over
whole nodes of one pool, topology-aware: tensor parallelism inside a node (NVLink-class
links), pipeline stages across nodes (one point-to-point send per stage boundary over the
inter-node fabric). A stage spans a whole node, or half of one when the heads do not split
over the node's GPUs; deeper pipelines add a send and a bubble per stage to every token.
Only layouts the engine runs are produced: TP divides the attention heads and divides (or
is a multiple of) the KV heads, PP never exceeds the layers.

The communication model (:func:`communication`) adds to the planner's single-node
estimate (roofline compute + intra-node all-reduces) the pipeline sends, and reports the
share of a step spent communicating. Link figures and their sources are in
``deepserve/engine/hardware/interconnects.yaml``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from deepserve.engine.hardware import Accelerator, Catalog
from deepserve.operator.placement.estimate import (
    GIB,
    Estimate,
    Workload,
    engine_fp8_native,
    estimate,
    kv_cache_bytes_per_gpu,
    weight_bytes_per_gpu,
)
from deepserve.operator.placement.factors import DEFAULT_FACTORS, EfficiencyFactors
from deepserve.operator.placement.planner import (
    STAGES,
    Candidate,
    PlacementPlan,
    PlacementRequest,
    new_candidate,
    serving_precision,
    strategy_key,
)
from deepserve.operator.placement.pools import PoolOffer
from deepserve.operator.placement.shape import ModelShape

ACTIVATION_BYTES = 2  # bf16 activations on the wire
MAX_STAGES_PER_NODE = 2


@dataclass(frozen=True)
class Fabric:
    """A link between GPUs: per-GPU, per-direction bandwidth and per-message latency."""

    id: str
    name: str
    bandwidth_gbs: float
    latency_us: float
    basis: str
    source: str
    spans_nodes: bool = False


@functools.lru_cache(maxsize=1)
def _fabric_data() -> tuple[dict[str, Fabric], tuple[tuple[str, str], ...]]:
    text = resources.files("deepserve.engine.hardware").joinpath("interconnects.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    fabrics = {f["id"]: Fabric(f["id"], f["name"], float(f["bandwidth_gbs"]),
                               float(f["latency_us"]), f["basis"], f["source"],
                               bool(f.get("spans_nodes", False)))
               for f in doc["fabrics"]}
    inter = tuple((row["prefix"], row["fabric"]) for row in doc["inter_node"])
    return fabrics, inter


def fabrics() -> dict[str, Fabric]:
    """Every link in the knowledge base, by id."""
    return dict(_fabric_data()[0])


def intra_node_fabric(acc: Accelerator) -> Fabric:
    """The link between GPUs of one node: the accelerator's own interconnect figure."""
    table = _fabric_data()[0]
    kind = ("pcie4" if acc.interconnect.startswith("PCIe") else
            "nvlink" if "NVLink" in acc.interconnect else "scale-up")
    base = table[kind]
    return Fabric(base.id, acc.interconnect, acc.interconnect_gbs / 2,
                  base.latency_us, "datasheet", acc.source)


def inter_node_fabric(acc: Accelerator) -> Fabric:
    """The link between nodes of a pool of ``acc`` (first matching id prefix)."""
    table, inter = _fabric_data()
    return next(table[fabric] for prefix, fabric in inter if acc.id.startswith(prefix))


def engine_can_split(shape: ModelShape, tp: int) -> bool:
    """Whether the engine's tensor parallelism runs ``tp`` ranks on ``shape``."""
    if tp < 1 or shape.heads % tp:
        return False
    return shape.is_mla or shape.kv_heads % tp == 0 or tp % shape.kv_heads == 0


def allreduce_s(payload_bytes: float, ranks: int, fabric: Fabric, fixed_latency_s: float,
                efficiency: float) -> float:
    """One ring all-reduce of ``payload_bytes`` over ``ranks`` GPUs joined by ``fabric``."""
    if ranks <= 1:
        return 0.0
    wire = 2.0 * (ranks - 1) / ranks * payload_bytes
    return fixed_latency_s + wire / (fabric.bandwidth_gbs * 1e9 * efficiency)


@dataclass(frozen=True)
class Communication:
    """Seconds of one decode step and one prefill, split into compute and communication."""

    decode_compute_s: float
    decode_tp_s: float
    decode_pp_s: float
    prefill_compute_s: float
    prefill_tp_s: float
    prefill_pp_s: float

    @property
    def decode_share(self) -> float:
        """Fraction of a decode step spent in all-reduces and pipeline sends."""
        comm = self.decode_tp_s + self.decode_pp_s
        return comm / (comm + self.decode_compute_s)

    @property
    def prefill_share(self) -> float:
        """Fraction of a prefill spent communicating."""
        comm = self.prefill_tp_s + self.prefill_pp_s
        return comm / (comm + self.prefill_compute_s)


class ReplicaModel:
    """One (accelerator, precision, TP, GPUs per node) of one plan, for any number of stages.

    Everything but the pipeline sends is the same at every stage count: the single-node
    estimate, the TP all-reduces, the fabrics, the per-GPU weight and KV bytes. They are
    computed once here, and the pipeline sends are running sums over stage boundaries in
    the order :func:`communication` always added them, so a layout of ``pp`` stages costs
    O(1) and gives bit-for-bit the figures a fresh computation gives.
    """

    def __init__(self, shape: ModelShape, acc: Accelerator, precision: str, tp: int,
                 gpus_per_node: int, work: Workload,
                 factors: EfficiencyFactors = DEFAULT_FACTORS) -> None:
        self.shape, self.tp, self.gpus_per_node, self.factors = shape, tp, gpus_per_node, factors
        self.intra, self.inter = intra_node_fabric(acc), inter_node_fabric(acc)
        self.base = estimate(shape, acc, precision, tp, work, factors)
        tp_fabric = self.intra if tp <= gpus_per_node else self.inter
        tp_latency = factors.allreduce_latency_s
        if tp > gpus_per_node:  # hops between nodes: the ring crosses the fabric 2(n-1) times
            tp_latency += 2 * (tp // gpus_per_node - 1) * self.inter.latency_us * 1e-6

        def tp_s(tokens: int) -> float:
            one = allreduce_s(tokens * shape.hidden_size * ACTIVATION_BYTES, tp, tp_fabric,
                              tp_latency, factors.interconnect)
            return 2 * shape.layers * one

        self.batch, self.prompt = work.concurrency, work.prompt_tokens
        self.decode_tp_s, self.prefill_tp_s = tp_s(self.batch), tp_s(self.prompt)
        self.intra_tp = 2 * shape.layers * allreduce_s(
            self.batch * shape.hidden_size * ACTIVATION_BYTES, tp, self.intra,
            factors.allreduce_latency_s, factors.interconnect) if tp > 1 else 0.0
        self.intra_tp_prefill = 2 * shape.layers * allreduce_s(
            self.prompt * shape.hidden_size * ACTIVATION_BYTES, tp, self.intra,
            factors.allreduce_latency_s, factors.interconnect) if tp > 1 else 0.0
        self._sends: dict[int, list[float]] = {}  # tokens -> sums over the first k boundaries
        native = engine_fp8_native(acc)
        self.weight_bytes = weight_bytes_per_gpu(shape, precision, tp, native)
        self.kv_bytes = kv_cache_bytes_per_gpu(shape, precision, tp,
                                               work.concurrency * work.context_length)
        chunk = min(work.prompt_tokens, factors.prefill_chunk_tokens)
        self.activation_bytes = chunk * shape.hidden_size * factors.activation_bytes_per_hidden / tp

    def pp_s(self, tokens: int, pp: int) -> float:
        """Seconds of the ``pp - 1`` stage sends of ``tokens`` activations."""
        sums = self._sends.setdefault(tokens, [0.0])
        while len(sums) < pp:
            boundary = len(sums)
            link = self.inter if (boundary * self.tp) % self.gpus_per_node == 0 else self.intra
            sums.append(sums[-1] + (link.latency_us * 1e-6 + tokens * self.shape.hidden_size
                                    * ACTIVATION_BYTES
                                    / (link.bandwidth_gbs * 1e9 * self.factors.interconnect)))
        return sums[pp - 1]

    def communication(self, pp: int) -> Communication:
        """Compute and communication seconds of a replica of ``pp`` stages."""
        base = self.base
        return Communication(
            decode_compute_s=base.decode_step_s - self.intra_tp, decode_tp_s=self.decode_tp_s,
            decode_pp_s=self.pp_s(self.batch, pp),
            prefill_compute_s=base.prefill_s - self.intra_tp_prefill,
            prefill_tp_s=self.prefill_tp_s, prefill_pp_s=self.pp_s(self.prompt, pp))

    def memory_gib_per_gpu(self, pp: int) -> float:
        """GiB one GPU of a ``tp x pp`` replica needs: its stage's weight and KV shard."""
        weights, kv = self.weight_bytes / pp, self.kv_bytes / pp
        return (weights + kv + self.activation_bytes) / GIB + self.factors.runtime_overhead_gib


def communication(shape: ModelShape, acc: Accelerator, precision: str, tp: int, pp: int,
                  gpus_per_node: int, work: Workload,
                  factors: EfficiencyFactors = DEFAULT_FACTORS) -> tuple[Communication, Estimate]:
    """Model one replica of ``tp x pp`` GPUs, ``gpus_per_node`` to a node.

    Compute is the planner's roofline (the weights/TP each token streams through every
    stage in turn). TP all-reduces (two per layer) run inside a node, or over the
    inter-node fabric when TP exceeds a node; each of the ``pp - 1`` stage boundaries
    sends one activation per token, over NVLink when both stages share a node.
    """
    model = ReplicaModel(shape, acc, precision, tp, gpus_per_node, work, factors)
    return model.communication(pp), model.base


def memory_gib_per_gpu(shape: ModelShape, precision: str, tp: int, pp: int, work: Workload,
                       acc: Accelerator, factors: EfficiencyFactors = DEFAULT_FACTORS) -> float:
    """GiB one GPU of a ``tp x pp`` replica needs: its stage's weight and KV shard."""
    native = engine_fp8_native(acc)
    weights = weight_bytes_per_gpu(shape, precision, tp, native) / pp
    kv = kv_cache_bytes_per_gpu(shape, precision, tp, work.concurrency * work.context_length) / pp
    chunk = min(work.prompt_tokens, factors.prefill_chunk_tokens)
    activations = chunk * shape.hidden_size * factors.activation_bytes_per_hidden / tp
    return (weights + kv + activations) / GIB + factors.runtime_overhead_gib


@dataclass(frozen=True)
class MultiNodeCandidate(Candidate):
    """A replica over several nodes: TP inside each node, PP across them."""

    pipeline_parallel: int = 1
    nodes_per_replica: int = 1
    communication_share: float = 0.0
    explanation: str = ""

    def as_status(self) -> dict[str, object]:
        """The single-node status plus pipelineParallel, nodesPerReplica and the share."""
        out = super().as_status()
        out.update(pipelineParallel=self.pipeline_parallel, nodesPerReplica=self.nodes_per_replica,
                   communicationShare=round(self.communication_share, 3))
        return out


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


def _candidate(pool: PoolOffer, acc: Accelerator, precision: str, layout: tuple[int, int, int],
               request: PlacementRequest, work: Workload, model: ReplicaModel,
               whole_nodes: int) -> MultiNodeCandidate:
    """One layout rated; ``whole_nodes``: the pool's free whole nodes plus those it may add."""
    tp, pp, nodes = layout
    gpus = tp * pp
    need = model.memory_gib_per_gpu(pp)
    common: dict[str, Any] = {
        "pool": pool.name, "accelerator_id": acc.id, "tensor_parallel": tp,
        "gpus_per_replica": gpus, "precision": precision, "memory_gib_per_gpu": need,
        "currency": pool.currency, "node_selector": dict(pool.node_selector),
        "pipeline_parallel": pp, "nodes_per_replica": nodes}
    usable = acc.memory_gib * model.factors.memory_utilization
    if need > usable:
        return new_candidate(MultiNodeCandidate, {**common, "rejected_code": "NoPoolFits", "rejected_reason": (
            f"needs {need:.1f} GiB per GPU at TP={tp} x PP={pp}, {acc.name} offers {usable:.1f}")})
    if whole_nodes // nodes < request.replicas:
        return new_candidate(MultiNodeCandidate, {**common, "rejected_code": "NoCapacity", "rejected_reason": (
            f"room for fewer than {request.replicas} replicas of {nodes} whole nodes")})
    comm = model.communication(pp)
    decode = comm.decode_compute_s + comm.decode_tp_s + comm.decode_pp_s
    prefill = comm.prefill_compute_s + comm.prefill_tp_s + comm.prefill_pp_s
    batch, gen = work.concurrency, work.generated_tokens
    throughput = batch * (work.prompt_tokens + gen) / (batch * prefill + gen * decode)
    cost = (pool.price_per_gpu_hour * gpus / 3600.0 / throughput * 1e6
            if pool.price_per_gpu_hour is not None else None)
    text = (f"TP={tp} inside each node ({model.intra.name}), PP={pp} stages over "
            f"{nodes} nodes ({model.inter.name.split(',')[0]}): {need:.0f} GiB per GPU; communication "
            f"{comm.decode_share:.0%} of a decode step, {comm.prefill_share:.0%} of a prefill")
    per_request = 1.0 / decode
    slo = request.slo_min_tokens_per_s
    missed = bool(slo) and per_request < slo
    return new_candidate(MultiNodeCandidate, {
        **common, "decode_tokens_per_s": batch / decode, "per_request_tokens_per_s": per_request,
        "prefill_tokens_per_s": work.prompt_tokens / prefill, "ttft_ms": prefill * 1e3,
        "request_latency_ms": (prefill + gen * decode) * 1e3, "replica_tokens_per_s": throughput,
        "cost_per_million_tokens": cost, "communication_share": comm.decode_share,
        "explanation": text, "rejected_code": "SLONotMet" if missed else None,
        "rejected_reason": "per-request tokens/s below the SLO" if missed else None})


def plan_multi_node(shape: ModelShape, pools: Sequence[PoolOffer], request: PlacementRequest,
                    catalog: Catalog, factors: EfficiencyFactors,
                    rejected: list[Candidate]) -> PlacementPlan | None:
    """The best replica over several whole nodes of one pool, or None when none fits.

    Called by the planner when no single node holds a replica; ``rejected`` are its
    single-node rejections, ranked after the multi-node options in the returned plan.
    A fixed ``gpusPerReplica`` is honoured (only layouts of exactly that many GPUs).
    What does not depend on the node count (estimates, fabrics, the pool's free whole
    nodes) is computed once per pool and TP degree (:class:`ReplicaModel`).
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
        whole_nodes = pool.whole_free_nodes() + max(0, pool.max_nodes - pool.nodes)
        models: dict[int, ReplicaModel] = {}
        no_room: set[int] = set()  # TP degrees out of whole nodes: more nodes per replica fit fewer
        for layout in node_layouts(shape, pool, request.max_tp):
            tp = layout[0]
            if request.gpus_per_replica is not None and tp * layout[1] != request.gpus_per_replica:
                continue
            if tp in no_room:
                continue
            model = models.get(tp)
            if model is None:
                model = models[tp] = ReplicaModel(shape, acc, precision, tp, pool.gpus_per_node,
                                                  work, factors)
            cand = _candidate(pool, acc, precision, layout, request, work, model, whole_nodes)
            if cand.rejected_code == "NoCapacity":
                no_room.add(tp)
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
