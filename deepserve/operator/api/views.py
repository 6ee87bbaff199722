"""Typed, frozen views of an InferenceModel spec.

``InferenceModelSpec.from_dict`` applies the schema's defaults, checks bounds and enums
(from the same schema data as the CRD) and the cross-field rules (the Python twins of the
CRD's CEL rules), and raises :class:`SpecError` naming the field.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from deepserve.operator.api import gpunodepool_schema
from deepserve.operator.api import inferencemodel_schema as schema
from deepserve.operator.api.quantity import quantity_error
from deepserve.operator.api.schema_check import SpecError, conform
from deepserve.operator.api.schema_types import QUALIFIED_NAME
from deepserve.operator.api.source_rules import check_source

log = logging.getLogger(__name__)
DEFAULT_VERSION = "main"


@dataclass(frozen=True)
class SparseAttention:
    """Hierarchical attention gating settings."""

    enabled: bool
    top_k: int
    sinks: int
    local_window: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseAttention:
        """Build from a defaulted ``sparseAttention`` dict."""
        return cls(d["enabled"], d["topK"], d["sinks"], d["localWindow"])


@dataclass(frozen=True)
class Source:
    """Where the weights come from."""

    uri: str
    format: str
    revision: str | None
    credentials_secret: str | None
    shape: dict[str, Any] | None

    @property
    def scheme(self) -> str:
        """``pvc``, ``hf``, ``s3`` or ``builtin``."""
        return self.uri.split("://", 1)[0]

    @property
    def location(self) -> str:
        """The part after ``scheme://``."""
        return self.uri.split("://", 1)[1]

    @classmethod
    def from_dict(cls, d: dict[str, Any], field: str) -> Source:
        """Build from a defaulted source dict, checking the URI's form."""
        check_source(d, field)
        uri = d["uri"]
        shape = d.get("shape")
        if shape is not None:
            if "kvHeads" in shape and shape["heads"] % shape["kvHeads"]:
                raise SpecError(f"{field}.shape.kvHeads", "must divide shape.heads")
            if shape.get("activeParams", 0) > shape["totalParams"]:
                raise SpecError(f"{field}.shape.activeParams", "must be <= shape.totalParams")
        return cls(uri, d["format"], d.get("revision"), d.get("credentialsSecret"), shape)


@dataclass(frozen=True)
class Engine:
    """Engine options for one version (EngineOptions on the engine side)."""

    precision: str
    error_bound: float
    max_batch_size: int
    max_queue_delay_us: int
    max_input_tokens: int
    max_new_tokens: int
    kv_cache_tokens: int | None
    prefix_cache_mib: int
    host_cache_mib: int
    tensor_parallel: int | None
    pipeline_parallel: int
    sparse_attention: SparseAttention

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Engine:
        """Build from a defaulted ``engine`` dict and check its cross-field rules."""
        e = cls(
            d["precision"], float(d["errorBound"]), d["maxBatchSize"], d["maxQueueDelayMicroseconds"],
            d["maxInputTokens"], d["maxNewTokens"], d.get("kvCacheTokens"), d["prefixCacheMiB"],
            d["hostCacheMiB"], d.get("tensorParallel"), d["pipelineParallel"],
            SparseAttention.from_dict(conform(schema.SPARSE_ATTENTION, d.get("sparseAttention", {}),
                                              "spec.engine.sparseAttention")),
        )
        if e.kv_cache_tokens is not None and e.kv_cache_tokens < e.max_input_tokens + e.max_new_tokens:
            raise SpecError("spec.engine.kvCacheTokens",
                            "must hold one full sequence (>= maxInputTokens + maxNewTokens)")
        return e


@dataclass(frozen=True)
class Resources:
    """Compute per replica."""

    gpus_per_replica: int | None
    max_tensor_parallel: int
    cpu: str
    memory: str
    shared_memory: str


@dataclass(frozen=True)
class Placement:
    """Placement constraints and objective."""

    strategy: str
    allowed_pools: tuple[str, ...]
    concurrency: int
    min_tokens_per_s: float | None
    max_ttft_ms: float | None
    tolerations: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Scaling:
    """Replica bounds and the scale target."""

    min_replicas: int
    max_replicas: int
    replicas: int | None
    target_metric: str
    target_value: float | None
    scale_to_zero: bool
    idle_seconds: int

    def desired(self) -> int:
        """Desired replicas: ``replicas`` (or ``minReplicas``) clamped to the bounds."""
        want = self.min_replicas if self.replicas is None else self.replicas
        return max(self.min_replicas, min(self.max_replicas, want))


@dataclass(frozen=True)
class Runtime:
    """The Triton runtime settings."""

    image: str | None
    pull_policy: str
    exit_timeout_s: int
    drain_s: int


@dataclass(frozen=True)
class Version:
    """A version with every override resolved against the model's defaults."""

    name: str
    weight: int
    source: Source
    engine: Engine
    image: str | None


@dataclass(frozen=True)
class InferenceModelSpec:
    """The whole spec, defaulted and validated."""

    source: Source
    engine: Engine
    resources: Resources
    placement: Placement
    scaling: Scaling
    runtime: Runtime
    versions: tuple[Version, ...]
    billing_account: str | None
    aliases: tuple[str, ...] = ()  # other OpenAI `model` names for this model

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> InferenceModelSpec:
        """Default and validate ``spec``; raise SpecError naming the first bad field."""
        d = conform(schema.SPEC, spec, "spec")
        source = Source.from_dict(d["source"], "spec.source")
        engine = Engine.from_dict(d["engine"])
        r = d["resources"]
        for key, most in (("cpu", schema.MAX_CPU), ("memory", schema.MAX_MEMORY), ("sharedMemory", schema.MAX_MEMORY)):
            if problem := quantity_error(r[key], most):
                raise SpecError(f"spec.resources.{key}", problem)
        resources = Resources(r.get("gpusPerReplica"), r["maxTensorParallel"], str(r["cpu"]),
                              str(r["memory"]), str(r["sharedMemory"]))
        p = d["placement"]
        check_tolerations(p.get("tolerations", []), "spec.placement.tolerations")
        slo = p.get("slo", {})
        placement = Placement(p["strategy"], tuple(p.get("allowedPools", [])), p["concurrency"],
                              slo.get("minTokensPerSecond"), slo.get("maxTimeToFirstTokenMs"),
                              tuple(p.get("tolerations", [])))
        scaling = _scaling(d["scaling"])
        rt = d["runtime"]
        runtime = Runtime(rt.get("image"), rt["imagePullPolicy"], rt["exitTimeoutSeconds"], rt["drainSeconds"])
        _check_parallelism(engine, resources)
        versions = _versions(d.get("versions", []), source, engine, runtime)
        return cls(source, engine, resources, placement, scaling, runtime, versions,
                   d.get("billing", {}).get("account"), tuple(d.get("aliases", [])))


def check_tolerations(tolerations: list[dict[str, Any]], field: str) -> None:
    """The Python twin of the TOLERATION rules (shared with GPUNodePool); raises SpecError."""
    for i, t in enumerate(tolerations):
        if t.get("operator") != "Exists" and not t.get("key"):
            raise SpecError(f"{field}[{i}].key", "is required unless operator is Exists")
        if t.get("operator") == "Exists" and t.get("value"):
            raise SpecError(f"{field}[{i}].value", "must be empty when operator is Exists")


def _scaling(s: dict[str, Any]) -> Scaling:
    lo = s["minReplicas"]
    hi = s.get("maxReplicas", lo)
    if hi < lo:
        raise SpecError("spec.scaling.minReplicas", "must be <= scaling.maxReplicas")
    stz = s.get("scaleToZero", {})
    if stz.get("enabled") and lo != 0:
        raise SpecError("spec.scaling.scaleToZero.enabled", "requires scaling.minReplicas: 0")
    target = s.get("target", {})
    return Scaling(lo, hi, s.get("replicas"), target.get("metric", "inflightRequests"), target.get("value"),
                   bool(stz.get("enabled", False)), int(stz.get("idleSeconds", 300)))


def _check_parallelism(engine: Engine, res: Resources) -> None:
    tp = engine.tensor_parallel
    if tp is None:
        return
    if tp > res.max_tensor_parallel:
        raise SpecError("spec.engine.tensorParallel", "must be <= resources.maxTensorParallel")
    if res.gpus_per_replica is not None and res.gpus_per_replica % (tp * engine.pipeline_parallel):
        raise SpecError("spec.engine.tensorParallel",
                        "tensorParallel x pipelineParallel must divide resources.gpusPerReplica")


def _versions(raw: list[dict[str, Any]], source: Source, engine: Engine,
              runtime: Runtime) -> tuple[Version, ...]:
    if not raw:
        return (Version(DEFAULT_VERSION, 100, source, engine, runtime.image),)
    names = [v["name"] for v in raw]
    if len(set(names)) != len(names):
        raise SpecError("spec.versions", "versions[].name must be unique")
    if sum(v["weight"] for v in raw) != 100:
        raise SpecError("spec.versions", "versions[].weight must sum to 100")
    out = []
    for i, v in enumerate(raw):
        src = Source.from_dict(v["source"], f"spec.versions[{i}].source") if "source" in v else source
        eng = engine
        if "precision" in v or "sparseAttention" in v:
            sa = v.get("sparseAttention")
            eng = replace(eng, precision=v.get("precision", eng.precision),
                           sparse_attention=SparseAttention.from_dict(sa) if sa else eng.sparse_attention)
        out.append(Version(v["name"], v["weight"], src, eng, v.get("image", runtime.image)))
    return tuple(out)



@dataclass(frozen=True)
class GPUNodePoolView:
    """A GPUNodePool, defaulted and validated like the API server does (typed, frozen)."""

    name: str
    node_selector: tuple[tuple[str, str], ...]
    accelerator_id: str
    gpus_per_node: int
    max_nodes: int
    price_per_gpu_hour: float
    currency: str
    tolerations: tuple[dict[str, str], ...]

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> GPUNodePoolView:
        """Build from a GPUNodePool object; raise SpecError naming the first bad field."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        if not name or len(name) > gpunodepool_schema.MAX_POOL_NAME:
            raise SpecError("metadata.name", f"must be 1 to {gpunodepool_schema.MAX_POOL_NAME} characters")
        d = conform(gpunodepool_schema.SPEC, obj.get("spec") or {}, "spec")
        for key in d["nodeSelector"]:
            if len(key) > 316 or not re.match(QUALIFIED_NAME, key):
                raise SpecError("spec.nodeSelector", f"{key!r} is not a label key")
        check_tolerations(d.get("tolerations", []), "spec.tolerations")
        return cls(name, tuple(sorted(d["nodeSelector"].items())), d["acceleratorId"], d["gpusPerNode"],
                   d["maxNodes"], float(d["pricePerGpuHour"]), d["currency"],
                   tuple(dict(t) for t in d.get("tolerations", [])))


def pool_views(objects: list[dict[str, Any]]) -> list[GPUNodePoolView]:
    """Typed views of GPUNodePool objects; ones the schema refuses (only objects stored before a
    rule tightened can be) are skipped, logged at debug level since this runs every reconcile."""
    out = []
    for obj in objects:
        try:
            out.append(GPUNodePoolView.from_object(obj))
        except SpecError as e:
            log.debug("GPUNodePool %s ignored: %s", (obj.get("metadata") or {}).get("name"), e)
    return out
