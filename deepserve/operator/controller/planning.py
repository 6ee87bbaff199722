"""Bridge between an InferenceModel spec and the placement planner (deepserve.operator.placement).

Placement is sticky: a model keeps its pool while its spec is unchanged and the pool still
exists, so free capacity changing (often by the model's own pods) never moves it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from deepserve.engine.contract.builtin import builtin_config
from deepserve.engine.hardware import load_catalog
from deepserve.operator import placement as planner
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders.context import ChosenPlacement
from deepserve.operator.placement.gpus import whole_device_resource

log = logging.getLogger(__name__)

Tolerations = dict[str, tuple[dict[str, str], ...]]
_SHAPE_KEYS = {
    "totalParams": "total_params", "activeParams": "active_params", "layers": "layers",
    "hiddenSize": "hidden_size", "heads": "heads", "kvHeads": "kv_heads", "headDim": "head_dim",
    "vocabSize": "vocab_size", "maxContext": "max_context", "experts": "moe_experts",
    "expertsPerToken": "experts_per_token", "kvLoraRank": "kv_lora_rank", "qkRopeHeadDim": "qk_rope_head_dim",
}


@dataclass(frozen=True)
class PlanOutcome:
    """The placement decision for one model, ready for builders and status."""

    chosen: ChosenPlacement | None
    reason: str
    estimates: dict[str, Any] = field(default_factory=dict)
    rejected: tuple[tuple[str, str], ...] = ()
    changed: bool = True  # False when the previous placement was kept


def _fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def model_shape(spec: InferenceModelSpec) -> Any | None:
    """The planner's ModelShape for the spec, or None when it is unknown.

    Raises ValueError (naming the field) for a bad shape or an unknown built-in name.
    """
    src = spec.source
    if src.shape:
        raw = {_SHAPE_KEYS[k]: v for k, v in src.shape.items() if k in _SHAPE_KEYS}
        raw.setdefault("active_params", raw["total_params"])
        raw.setdefault("kv_heads", raw["heads"])
        raw.setdefault("head_dim", raw["hidden_size"] // raw["heads"])
        raw.setdefault("max_context", spec.engine.max_input_tokens + spec.engine.max_new_tokens)
    elif src.scheme == "builtin":
        # the same config the engine builds the checkpoint from (deepserve.engine.contract)
        return planner.ModelShape.from_hf_config(builtin_config(src.location), name=src.location)
    else:
        return None
    known = _fields(planner.ModelShape)
    return planner.ModelShape(**{k: v for k, v in raw.items() if k in known})


def placement_request(spec: InferenceModelSpec) -> Any:
    """The planner's PlacementRequest for the spec."""
    e, r, p = spec.engine, spec.resources, spec.placement
    fixed = r.gpus_per_replica
    if fixed is None and (e.tensor_parallel is not None or e.pipeline_parallel > 1):
        fixed = (e.tensor_parallel or 1) * e.pipeline_parallel  # at least one GPU per stage
    values: dict[str, Any] = {
        "precision": e.precision, "strategy": p.strategy, "allowed_pools": p.allowed_pools,
        "gpus_per_replica": fixed, "max_tp": r.max_tensor_parallel, "replicas": max(1, spec.scaling.desired()),
        "concurrency": p.concurrency, "context_length": e.max_input_tokens + e.max_new_tokens,
        "slo_min_tokens_per_s": p.min_tokens_per_s or 0.0, "slo_max_ttft_ms": p.max_ttft_ms or 0.0,
    }
    known = _fields(planner.PlacementRequest)
    return planner.PlacementRequest(**{k: v for k, v in values.items() if k in known})


def _parallelism(c: Any, spec: InferenceModelSpec) -> tuple[int, int] | None:
    """(TP, PP) a replica runs: the planner's stages (multi-node) or the spec's.

    ``spec.engine.pipelineParallel`` is honoured or refused, never dropped: with
    ``tensorParallel`` set, TP x PP must fill the replica's GPUs; without it, each stage gets
    GPUs / PP ranks. None when the placement cannot run the spec's stages.
    """
    planned = int(getattr(c, "pipeline_parallel", 1))
    e = spec.engine
    gpus = int(c.gpus_per_replica)
    want = int(e.pipeline_parallel)
    if planned > 1:  # the planner spread a replica over nodes in stages
        if want > 1 and want != planned:
            return None
        return int(e.tensor_parallel or c.tensor_parallel), planned
    if want <= 1:
        return int(e.tensor_parallel or c.tensor_parallel), 1
    if e.tensor_parallel:
        return (int(e.tensor_parallel), want) if e.tensor_parallel * want == gpus else None
    return (gpus // want, want) if gpus % want == 0 else None


def gpu_resource(pool: Any, accelerator_id: str) -> str:
    """The resource a replica's pods request on ``pool``: what its nodes advertise (a MIG
    slice, ``amd.com/gpu``...), else the catalog vendor's whole-device resource."""
    declared = str(getattr(pool, "gpu_resource", "") or "")
    if declared:
        return declared
    catalog = load_catalog()
    if accelerator_id in catalog:
        acc = catalog.get(accelerator_id)
        return whole_device_resource(acc.vendor, acc.kind)
    return whole_device_resource("")


def _chosen(c: Any, pool: Any, spec: InferenceModelSpec, tolerations: Tolerations,
            parallelism: tuple[int, int]) -> ChosenPlacement:
    return ChosenPlacement(
        pool=c.pool, accelerator_id=c.accelerator_id, gpus_per_replica=int(c.gpus_per_replica),
        tensor_parallel=parallelism[0], precision=c.precision,
        node_selector=dict(c.node_selector or getattr(pool, "node_selector", {}) or {}),
        tolerations=tolerations.get(c.pool, ()),
        pipeline_parallel=parallelism[1],
        nodes_per_replica=int(getattr(c, "nodes_per_replica", 1)),
        gpu_resource=gpu_resource(pool, c.accelerator_id),
    )


def _estimates(c: Any) -> dict[str, Any]:
    return {
        "memoryGiBPerGpu": round(float(c.memory_gib_per_gpu), 3),
        "decodeTokensPerSecond": round(float(c.decode_tokens_per_s), 1),
        "prefillTokensPerSecond": round(float(c.prefill_tokens_per_s), 1),
        "timeToFirstTokenMs": round(float(c.ttft_ms), 2),
        "currency": c.currency,
    } | ({} if c.cost_per_million_tokens is None else
         {"costPerMillionTokens": round(float(c.cost_per_million_tokens), 4)})


def ranked_candidates(spec: InferenceModelSpec, pools: list[Any]) -> list[Any]:
    """The planner's candidates for ``spec`` on ``pools``, best first (rejected ones carry a reason).

    Empty when the model's shape is unknown or invalid (the reconcile reports that).
    """
    try:
        shape = model_shape(spec)
    except ValueError:
        return []
    if shape is None:
        return []
    return list(planner.plan_placement(shape, pools, placement_request(spec)).ranked)


def kept_placement(previous: dict[str, Any], pools: list[Any], tolerations: Tolerations) -> PlanOutcome | None:
    """The previous placement (from status) if its pool is still offered."""
    pool_name = previous.get("pool")
    if not pool_name:
        return None
    offer = next((p for p in pools if p.name == pool_name), None)
    if offer is None:
        return None
    chosen = ChosenPlacement(
        pool=pool_name, accelerator_id=previous.get("acceleratorId", offer.accelerator_id),
        gpus_per_replica=int(previous.get("gpusPerReplica", 1)),
        tensor_parallel=int(previous.get("tensorParallel", 1)), precision=previous.get("precision", "auto"),
        node_selector=dict(offer.node_selector), tolerations=tolerations.get(pool_name, ()),
        pipeline_parallel=int(previous.get("pipelineParallel", 1)),
        nodes_per_replica=int(previous.get("nodesPerReplica", 1)),
        gpu_resource=gpu_resource(offer, previous.get("acceleratorId", offer.accelerator_id)),
    )
    estimates: dict[str, Any] = {k: previous[k] for k in ("memoryGiBPerGpu", "decodeTokensPerSecond", "prefillTokensPerSecond",
                                          "timeToFirstTokenMs", "costPerMillionTokens", "currency")
                 if k in previous}
    rejected = tuple((r["pool"], r["reason"]) for r in previous.get("rejected", []))
    return PlanOutcome(chosen, previous.get("reason", ""), estimates, rejected, changed=False)


def plan(spec: InferenceModelSpec, pools: list[Any], previous: dict[str, Any] | None,
         replan: bool, tolerations: Tolerations | None = None) -> PlanOutcome:
    """Keep the previous placement unless ``replan`` (spec changed) or its pool vanished.

    ``tolerations`` maps pool name to the tolerations its GPUNodePool asks for.
    """
    tolerations = tolerations or {}
    if previous and not replan:
        kept = kept_placement(previous, pools, tolerations)
        if kept is not None:
            return kept
    try:
        shape = model_shape(spec)
    except ValueError as e:  # the planner's ShapeError names the field
        return PlanOutcome(None, f"InvalidModelShape: spec.source.shape: {e}")
    if shape is None:
        return PlanOutcome(None, f"UnknownModelShape: the operator does not fetch {spec.source.scheme}:// "
                                 "sources; set spec.source.shape so the planner can size the model")
    if spec.engine.pipeline_parallel > shape.layers:  # the engine could not build its stages
        return PlanOutcome(None, f"InvalidParallelism: spec.engine.pipelineParallel: "
                                 f"{spec.engine.pipeline_parallel} stages exceed the model's {shape.layers} layers")
    result = planner.plan_placement(shape, pools, placement_request(spec))
    rejected = tuple((c.pool, c.rejected_reason) for c in result.ranked if c.rejected_reason)[:64]
    if result.chosen is None:
        return PlanOutcome(None, result.reason or "NoPoolFits: no pool can serve this model", {}, rejected)
    offer = next((p for p in pools if p.name == result.chosen.pool), None)
    parallelism = _parallelism(result.chosen, spec)
    if parallelism is None:
        c = result.chosen
        return PlanOutcome(None, f"InvalidParallelism: spec.engine.pipelineParallel: "
                                 f"{spec.engine.pipeline_parallel} stages do not fit the placement's "
                                 f"{c.gpus_per_replica} GPUs per replica (TP={spec.engine.tensor_parallel or c.tensor_parallel}, "
                                 f"{getattr(c, 'pipeline_parallel', 1)} planned stage(s)); set "
                                 "spec.engine.tensorParallel so tensorParallel x pipelineParallel "
                                 "GPUs make one replica", {}, rejected)
    return PlanOutcome(_chosen(result.chosen, offer, spec, tolerations, parallelism), result.reason,
                       _estimates(result.chosen), rejected)
