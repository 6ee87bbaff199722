"""Test fixtures as builders (not YAML piles), and the catalogue of invalid manifests.

Shared by the unit tests (Python views) and the integration tests (the API server), which
load this file by path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelBuilder:
    """``make_model("a").replicas(2).obj()``."""

    name: str
    namespace: str = "default"
    spec: dict[str, Any] = field(default_factory=lambda: {"source": {"uri": "builtin://tiny-llama"}})

    def source(self, uri: str) -> ModelBuilder:
        self.spec["source"] = {"uri": uri}
        return self

    def replicas(self, n: int, *, min_: int | None = None, max_: int | None = None) -> ModelBuilder:
        s = self.spec.setdefault("scaling", {})
        s["replicas"] = n
        s["minReplicas"] = n if min_ is None else min_
        s["maxReplicas"] = max(n, s["minReplicas"]) if max_ is None else max_
        return self

    def engine(self, **values: Any) -> ModelBuilder:
        self.spec.setdefault("engine", {}).update(values)
        return self

    def versions(self, *pairs: tuple[str, int], **extra: Any) -> ModelBuilder:
        self.spec["versions"] = [{"name": n, "weight": w, **extra.get(n, {})} for n, w in pairs]
        return self

    def set(self, path: str, value: Any) -> ModelBuilder:
        """Set a dotted spec path, creating objects on the way."""
        node = self.spec
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        return self

    def obj(self) -> dict[str, Any]:
        return {"apiVersion": "deepserve.io/v1alpha1", "kind": "InferenceModel",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": copy.deepcopy(self.spec)}


def make_model(name: str = "m", namespace: str = "default") -> ModelBuilder:
    """A valid tiny model; chain changes and call ``.obj()``."""
    return ModelBuilder(name, namespace)


@dataclass(frozen=True)
class InvalidCase:
    """A mistake a user makes, and the field the refusal must name."""

    id: str
    model: dict[str, Any]
    field: str
    api_only: bool = False  # checked by the API server only (metadata rules)


def _case(id_: str, field_: str, b: ModelBuilder, *, api_only: bool = False) -> InvalidCase:
    return InvalidCase(id_, b.obj(), field_, api_only)


def _no_source() -> ModelBuilder:
    b = make_model("nosource")
    b.spec = {"engine": {"maxBatchSize": 4}}
    return b


INVALID_CASES: list[InvalidCase] = [
    _case("missing-source", "spec.source", _no_source()),
    _case("unknown-scheme", "spec.source.uri", make_model("c").source("ftp://host/model")),
    _case("pvc-bad-claim", "spec.source.uri", make_model("c").source("pvc://Bad_Claim/llama")),
    _case("hf-no-name", "spec.source.uri", make_model("c").source("hf://meta-llama")),
    _case("s3-bad-bucket", "spec.source.uri", make_model("c").source("s3://A/weights")),
    _case("builtin-not-tiny", "spec.source.uri", make_model("c").source("builtin://llama")),
    _case("format-enum", "spec.source.format", make_model("c").set("source.format", "gguf")),
    _case("shape-kvheads", "spec.source.shape.kvHeads", make_model("c").set("source.shape", {
        "totalParams": 8_000_000_000, "layers": 32, "hiddenSize": 4096, "heads": 32, "kvHeads": 5,
        "vocabSize": 128256})),
    _case("precision-enum", "spec.engine.precision", make_model("c").engine(precision="int3")),
    _case("batch-zero", "spec.engine.maxBatchSize", make_model("c").engine(maxBatchSize=0)),
    _case("error-bound-high", "spec.engine.errorBound", make_model("c").engine(errorBound=1.5)),
    _case("kv-cache-too-small", "spec.engine.kvCacheTokens",
          make_model("c").engine(maxInputTokens=1024, maxNewTokens=512, kvCacheTokens=1000)),
    _case("tp-not-power-of-two", "spec.engine.tensorParallel", make_model("c").engine(tensorParallel=3)),
    _case("tp-does-not-divide-gpus", "spec.engine.tensorParallel",
          make_model("c").engine(tensorParallel=4).set("resources.gpusPerReplica", 2)),
    _case("tp-above-max", "spec.engine.tensorParallel",
          make_model("c").engine(tensorParallel=8).set("resources.maxTensorParallel", 4)),
    _case("sparse-topk-zero", "spec.engine.sparseAttention.topK",
          make_model("c").engine(sparseAttention={"enabled": True, "topK": 0})),
    _case("cpu-not-quantity", "spec.resources.cpu", make_model("c").set("resources.cpu", "two")),
    _case("gpus-zero", "spec.resources.gpusPerReplica", make_model("c").set("resources.gpusPerReplica", 0)),
    _case("min-above-max", "spec.scaling.minReplicas", make_model("c").replicas(3, min_=3, max_=2)),
    _case("scale-to-zero-min", "spec.scaling.scaleToZero.enabled",
          make_model("c").set("scaling.scaleToZero", {"enabled": True})),
    _case("replicas-negative", "spec.scaling.replicas", make_model("c").set("scaling.replicas", -1)),
    _case("target-zero", "spec.scaling.target.value", make_model("c").set("scaling.target", {"value": 0})),
    _case("strategy-enum", "spec.placement.strategy", make_model("c").set("placement.strategy", "fastest")),
    _case("pools-duplicate", "spec.placement.allowedPools",
          make_model("c").set("placement.allowedPools", ["l4", "l4"])),
    _case("weights-not-100", "spec.versions", make_model("c").versions(("a", 50), ("b", 40))),
    _case("versions-duplicate", "spec.versions", make_model("c").versions(("a", 50), ("a", 50))),
    _case("version-name", "spec.versions[0].name", make_model("c").versions(("V1", 100))),
    _case("version-weight", "spec.versions[0].weight", make_model("c").versions(("a", 101))),
    _case("drain-too-long", "spec.runtime.drainSeconds", make_model("c").set("runtime.drainSeconds", 1000)),
    _case("billing-account", "spec.billing.account", make_model("c").set("billing.account", "not ok!")),
    # issue #20.4: classes of input that could not work and were admitted
    _case("cpu-negative", "spec.resources.cpu", make_model("c").set("resources.cpu", "-1")),
    _case("cpu-zero", "spec.resources.cpu", make_model("c").set("resources.cpu", 0)),
    _case("memory-negative-int", "spec.resources.memory", make_model("c").set("resources.memory", -5)),
    _case("memory-absurd", "spec.resources.memory", make_model("c").set("resources.memory", "1e100")),
    _case("shm-negative", "spec.resources.sharedMemory", make_model("c").set("resources.sharedMemory", "-1Gi")),
    _case("toleration-equal-no-key", "spec.placement.tolerations[0].key",
          make_model("c").set("placement.tolerations", [{"operator": "Equal", "value": "x"}])),
    _case("toleration-exists-value", "spec.placement.tolerations[0].value",
          make_model("c").set("placement.tolerations", [{"key": "k", "operator": "Exists", "value": "x"}])),
    _case("toleration-key-not-label-key", "spec.placement.tolerations[0].key",
          make_model("c").set("placement.tolerations", [{"key": "bad key!", "operator": "Exists"}])),
    _case("toleration-value-not-label-value", "spec.placement.tolerations[0].value",
          make_model("c").set("placement.tolerations", [{"key": "k", "value": "a b"}])),
    _case("slo-absurd", "spec.placement.slo.minTokensPerSecond",
          make_model("c").set("placement.slo", {"minTokensPerSecond": 1e308})),
    _case("target-absurd", "spec.scaling.target.value", make_model("c").set("scaling.target", {"value": 1e308})),
    _case("pvc-dotdot-escape", "spec.source.uri", make_model("c").source("pvc://models/../../etc")),
    _case("pvc-dot-segment", "spec.source.uri", make_model("c").source("pvc://models/a/./b")),
    _case("pvc-shell-chars", "spec.source.uri", make_model("c").source("pvc://models/a;reboot")),
    _case("s3-shell-semicolon", "spec.source.uri", make_model("c").source("s3://bucket/x;rm -rf /")),
    _case("s3-command-substitution", "spec.source.uri", make_model("c").source("s3://bucket/$(id)")),
    _case("s3-backtick", "spec.source.uri", make_model("c").source("s3://bucket/`id`")),
    _case("s3-dotdot", "spec.source.uri", make_model("c").source("s3://bucket/a/../b")),
    _case("s3-no-prefix", "spec.source.uri", make_model("c").source("s3://bucket")),
    _case("builtin-unknown", "spec.source.uri", make_model("c").source("builtin://tiny-gpt9")),
    _case("version-source-escape", "spec.versions[0].source.uri",
          make_model("c").versions(("a", 100), a={"source": {"uri": "pvc://m/.."}})),
    _case("format-unsupported", "spec.source.format", make_model("c").set("source.format", "pytorch")),
    _case("revision-not-hf", "spec.source.revision", make_model("c").set("source.revision", "main")),
    _case("revision-twice-differs", "spec.source.revision",
          make_model("c").source("hf://org/m@v1").set("source.revision", "v2")),
    _case("image-whitespace", "spec.runtime.image", make_model("c").set("runtime.image", "ghcr.io/x/engine :v1")),
    _case("image-uppercase-path", "spec.versions[0].image",
          make_model("c").versions(("a", 100), a={"image": "ghcr.io/Team/Engine"})),
    _case("name-too-long", "metadata.name", make_model("m" * 45), api_only=True),
    _case("name-starts-with-digit", "metadata.name", make_model("1model"), api_only=True),
]
