"""Cost-aware placement: pick pool, precision and tensor-parallel degree for a model.

``plan_placement`` evaluates every (pool, TP degree) a model can use, rejects those that break
a hard rule (allowed pools, precision support, TP limits, memory, free capacity, SLO) with a
reason, and ranks the rest by the request's strategy. Pure: no I/O, deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from deepserve.engine.contract.precision import AUTO_MASTER_ORDER, POLICIES
from deepserve.engine.hardware import Accelerator, Catalog, load_catalog
from deepserve.operator.placement.estimate import (
    GIB,
    Estimate,
    LoadTerms,
    Workload,
    engine_fp8_native,
    estimate,
    load_terms,
    weight_bytes_per_gpu,
)
from deepserve.operator.placement.factors import DEFAULT_FACTORS, EfficiencyFactors
from deepserve.operator.placement.pools import PoolOffer
from deepserve.operator.placement.shape import ModelShape

PRECISIONS = POLICIES
STRATEGIES = ("cost", "latency", "throughput")

# Rejection stages, in the order the checks run; the plan's reason reports the furthest one.
STAGES: dict[str, int] = {
    "PoolNotAllowed": 0, "UnknownAccelerator": 1, "CurrencyMismatch": 1,
    "PrecisionUnsupported": 2, "TensorParallelLimit": 3, "NoPoolFits": 4,
    "NoCapacity": 5, "SLONotMet": 6,
}


@dataclass(frozen=True)
class PlacementRequest:
    """What the model's owner asks for. ``prompt_tokens`` None = half of ``context_length``."""

    precision: str = "auto"
    strategy: str = "cost"
    allowed_pools: tuple[str, ...] = ()
    gpus_per_replica: int | None = None
    max_tp: int = 8
    replicas: int = 1
    concurrency: int = 8
    context_length: int = 4096
    slo_min_tokens_per_s: float = 0.0
    slo_max_ttft_ms: float = 0.0
    prompt_tokens: int | None = None
    currency: str = "USD"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"PlacementRequest.precision must be one of {PRECISIONS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"PlacementRequest.strategy must be one of {STRATEGIES}")
        for name in ("max_tp", "replicas", "concurrency", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlacementRequest.{name} must be >= 1")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 1:
            raise ValueError("PlacementRequest.gpus_per_replica must be >= 1")
        if self.prompt_tokens is not None and not 0 < self.prompt_tokens < self.context_length:
            raise ValueError("PlacementRequest.prompt_tokens must be in 1..context_length-1")

    def workload(self) -> Workload:
        """The per-replica workload the estimates use."""
        prompt = self.prompt_tokens or max(1, self.context_length // 2)
        return Workload(self.concurrency, prompt, self.context_length - prompt)


@dataclass(frozen=True)
class Candidate:
    """One evaluated option; ``rejected_reason`` is None when it is feasible."""

    pool: str
    accelerator_id: str
    tensor_parallel: int
    gpus_per_replica: int
    precision: str
    memory_gib_per_gpu: float = 0.0
    decode_tokens_per_s: float = 0.0
    """Aggregate decode tokens/s of one replica at the requested concurrency."""
    per_request_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    ttft_ms: float = 0.0
    request_latency_ms: float = 0.0
    replica_tokens_per_s: float = 0.0
    cost_per_million_tokens: float | None = None
    currency: str = "USD"
    node_selector: dict[str, str] = field(default_factory=dict)
    rejected_reason: str | None = None
    rejected_code: str | None = None

    @property
    def feasible(self) -> bool:
        """True when no rule rejected this option."""
        return self.rejected_reason is None

    def as_status(self) -> dict[str, object]:
        """A JSON-safe camelCase dict for an InferenceModel's ``status.placement``."""
        out: dict[str, object] = {
            "pool": self.pool, "acceleratorId": self.accelerator_id,
            "tensorParallel": self.tensor_parallel, "gpusPerReplica": self.gpus_per_replica,
            "precision": self.precision, "memoryGiBPerGpu": round(self.memory_gib_per_gpu, 2),
            "decodeTokensPerSecond": round(self.decode_tokens_per_s, 1),
            "perRequestTokensPerSecond": round(self.per_request_tokens_per_s, 1),
            "prefillTokensPerSecond": round(self.prefill_tokens_per_s, 1),
            "ttftMs": round(self.ttft_ms, 1), "currency": self.currency,
            "costPerMillionTokens": None if self.cost_per_million_tokens is None
            else round(self.cost_per_million_tokens, 6),
            "nodeSelector": dict(self.node_selector),
        }
        if self.rejected_reason:
            out["rejected"] = f"{self.rejected_code}: {self.rejected_reason}"
        return out


C = TypeVar("C", bound=Candidate)


def new_candidate(cls: type[C], values: dict[str, Any]) -> C:
    """``cls(**values)`` without the frozen dataclass's ``__init__``, for the planner's hot loops.

    A frozen dataclass sets each of its ~25 fields through ``object.__setattr__``: 7 us a
    candidate, half the cost of rating one at cluster scale (hundreds per plan). The object
    is the same (every field set, defaults for those not given; equality and hashing as
    usual). Raises TypeError when the fields set do not number those of ``cls`` (a required
    field left out, or a name it does not have).
    """
    spec = _FIELD_DEFAULTS.get(cls)
    if spec is None:
        spec = _FIELD_DEFAULTS[cls] = (
            {f.name: f.default for f in fields(cls) if f.default is not MISSING},
            tuple((f.name, f.default_factory) for f in fields(cls) if f.default_factory is not MISSING),
            len(fields(cls)))
    defaults, factories, count = spec
    obj = object.__new__(cls)
    state = obj.__dict__
    state.update(defaults)
    for name, factory in factories:  # mutable defaults: one per object, as __init__ makes them
        if name not in values:
            state[name] = factory()
    state.update(values)
    if len(state) != count:
        raise TypeError(f"{cls.__name__}: fields {sorted(state)} != the dataclass's {count}")
    return obj


_FIELD_DEFAULTS: dict[type, tuple[dict[str, Any], tuple[tuple[str, Callable[[], Any]], ...], int]] = {}


@dataclass
class PlacementPlan:
    """The chosen option (None when nothing is feasible), every option ranked, and why."""

    chosen: Candidate | None
    ranked: list[Candidate]
    reason: str


def strategy_key(strategy: str, c: Candidate) -> tuple:
    """Sort key for feasible candidates: smaller is better; ties broken deterministically."""
    cost = c.cost_per_million_tokens
    cost_key = (cost is None, cost if cost is not None else 0.0)
    tail = (c.pool, c.tensor_parallel, c.precision)
    if strategy == "latency":
        return (c.request_latency_ms, *cost_key, *tail)
    if strategy == "throughput":
        return (-c.replica_tokens_per_s, *cost_key, *tail)
    return (*cost_key, c.request_latency_ms, *tail)


def serving_precision(acc: Accelerator, requested: str) -> str | None:
    """The precision policy the engine runs ``requested`` at on ``acc``, or None when it cannot.

    ``auto`` stays ``auto`` (bf16 master, adaptive precision) where the device has bf16; on
    devices without bf16 it becomes the first fixed precision they run (fp16, then fp32),
    because the engine's ``auto`` would load bf16. This is what the engine is handed.
    """
    if requested == "auto":
        master = next((p for p in AUTO_MASTER_ORDER if acc.supports(p)), None)
        return "auto" if master == "bf16" else master
    return requested if acc.supports(requested) else None


def tp_degrees(shape: ModelShape, pool: PoolOffer, request: PlacementRequest) -> list[int]:
    """TP degrees worth evaluating: the fixed one, or every degree that splits heads evenly."""
    if request.gpus_per_replica is not None:
        return [request.gpus_per_replica]
    return [t for t in range(1, max(pool.gpus_per_node, 1) + 1) if valid_split(shape, t)]


def valid_split(shape: ModelShape, tp: int) -> bool:
    """TP must divide attention heads, and KV heads must divide evenly or be replicated."""
    if shape.heads % tp:
        return False
    return shape.is_mla or shape.kv_heads % tp == 0 or tp % shape.kv_heads == 0


def _rule_violation(shape: ModelShape, pool: PoolOffer, acc: Accelerator, tp: int,
                    request: PlacementRequest) -> str | None:
    if not valid_split(shape, tp):
        return f"TP={tp} does not split {shape.heads} heads / {shape.kv_heads} KV heads"
    if tp > pool.gpus_per_node:
        return f"TP={tp} exceeds {pool.gpus_per_node} GPUs per node"
    if tp > request.max_tp:
        return f"TP={tp} exceeds maxTensorParallel={request.max_tp}"
    if tp > 1 and acc.interconnect_gbs <= 0:
        return f"{acc.id} has no interconnect for TP>1"
    return None


def _evaluate(shape: ModelShape, pool: PoolOffer, acc: Accelerator, precision: str, tp: int,
              request: PlacementRequest, work: Workload, factors: EfficiencyFactors,
              selector: dict[str, str], cache: dict[tuple[str, int, bool], LoadTerms]) -> Candidate:
    """Check the hard rules cheapest-first; only options that fit get a speed estimate."""

    def make(code: str | None, reason: str | None, memory: float = 0.0,
             est: Estimate | None = None) -> Candidate:
        common = {"pool": pool.name, "accelerator_id": acc.id, "tensor_parallel": tp,
                  "gpus_per_replica": tp, "precision": precision, "currency": pool.currency,
                  "node_selector": selector, "rejected_reason": reason, "rejected_code": code}
        if est is None:
            return new_candidate(Candidate, {**common, "memory_gib_per_gpu": memory})
        cost = None
        if pool.price_per_gpu_hour is not None:
            cost = pool.price_per_gpu_hour * tp / 3600.0 / est.replica_tokens_per_s * 1e6
        return new_candidate(Candidate, {
            **common, "memory_gib_per_gpu": est.memory_gib_per_gpu,
            "decode_tokens_per_s": work.concurrency / est.decode_step_s,
            "per_request_tokens_per_s": est.per_request_tokens_per_s,
            "prefill_tokens_per_s": work.prompt_tokens / est.prefill_s,
            "ttft_ms": est.prefill_s * 1e3,
            "request_latency_ms": (est.prefill_s + work.generated_tokens * est.decode_step_s) * 1e3,
            "replica_tokens_per_s": est.replica_tokens_per_s, "cost_per_million_tokens": cost})

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


def _pool_level(pool: PoolOffer, acc: Accelerator | None, request: PlacementRequest,
                precision: str | None) -> tuple[str, str] | None:
    if request.allowed_pools and pool.name not in request.allowed_pools:
        return "PoolNotAllowed", "not in allowedPools"
    if acc is None:
        return "UnknownAccelerator", f"accelerator {pool.accelerator_id!r} is not in the catalog"
    if pool.price_per_gpu_hour is not None and pool.currency != request.currency:
        return "CurrencyMismatch", f"priced in {pool.currency}, request compares {request.currency}"
    if precision is None:
        return "PrecisionUnsupported", f"{acc.name} has no {request.precision} support"
    return None


def _reason(shape: ModelShape, request: PlacementRequest, feasible: list[Candidate],
            rejected: list[Candidate], pools: Sequence[PoolOffer], catalog: Catalog) -> str:
    if feasible:
        best = feasible[0]
        what = {"cost": "lowest cost per 1M tokens", "latency": "lowest request latency",
                "throughput": "highest tokens/s per replica"}[request.strategy]
        cost = (f"{best.cost_per_million_tokens:.4f} {best.currency}/1M tokens"
                if best.cost_per_million_tokens is not None else "price unknown")
        text = (f"Chose pool {best.pool} ({best.accelerator_id}, TP={best.tensor_parallel}, "
                f"{best.precision}): {what} among {len(feasible)} feasible options; {cost}, "
                f"{best.per_request_tokens_per_s:.0f} tokens/s per request, TTFT {best.ttft_ms:.0f} ms")
        if len(feasible) > 1:
            nxt = feasible[1]
            text += f"; next: {nxt.pool} TP={nxt.tensor_parallel}"
        return text
    if not rejected:
        return "NoPools: no pools to place on"
    worst = max(rejected, key=lambda c: (STAGES.get(c.rejected_code or "", 0), c.tensor_parallel))
    code = worst.rejected_code or "Rejected"
    if code == "NoPoolFits" or (code == "TensorParallelLimit" and pools):
        acc = catalog.get(worst.accelerator_id) if worst.accelerator_id in catalog else None
        precision = worst.precision if worst.precision in PRECISIONS else "bf16"
        need = weight_bytes_per_gpu(shape, precision, 1, bool(acc and engine_fp8_native(acc))) / GIB
        def mem(p: PoolOffer) -> float:
            return p.accelerator(catalog.get(p.accelerator_id)).memory_gib if p.accelerator_id in catalog else 0.0

        big = max(pools, key=lambda p: p.gpus_per_node * mem(p))
        return (f"{code}: weights alone need {need:.0f} GiB; largest pool {big.name} offers "
                f"{big.gpus_per_node}x{mem(big):g} GiB but TP is limited to "
                f"{min(request.max_tp, big.gpus_per_node)}; closest option: {worst.pool} "
                f"TP={worst.tensor_parallel}: {worst.rejected_reason}")
    return f"{code}: {worst.pool} TP={worst.tensor_parallel}: {worst.rejected_reason}"


def plan_placement(
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
        from deepserve.operator.placement.parallel import plan_multi_node

        multi = plan_multi_node(shape, pools, request, catalog, factors, rejected)
        if multi is not None:
            return multi
    feasible.sort(key=lambda c: strategy_key(request.strategy, c))
    rejected.sort(key=lambda c: (-STAGES.get(c.rejected_code or "", 0), c.pool, c.tensor_parallel))
    reason = _reason(shape, request, feasible, rejected, pools, catalog)
    return PlacementPlan(chosen=feasible[0] if feasible else None,
                         ranked=feasible + rejected, reason=reason)
