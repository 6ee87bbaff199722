"""Property (issue #20.4): every InferenceModel the API server admits yields children it admits.

Hypothesis generates InferenceModels and GPUNodePools across the schema's forms (sources,
quantities in every notation, tolerations, selectors, versions, names at their length limits).
Each is sent to the real API server with server-side dry run; for each one it admits, every
child the pure builders make for it on that pool is dry-run created too and must be admitted.
DEEPSERVE_PROPERTY_EXAMPLES raises the example count (CI: 50).
"""

from __future__ import annotations

import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deepserve.engine.contract.builtin import BUILTIN_MODELS
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.builders import (
    BuildContext,
    ChosenPlacement,
    ModelRef,
    Settings,
    build_children,
)
from deepserve.operator.builders.context import EnginePolicy
from deepserve.operator.controller.reconcile import split_replicas
from deepserve.operator.kube import Kube, KubeError

pytestmark = [pytest.mark.integration]
IM = "deepserve.io/v1alpha1"
EXAMPLES = int(os.environ.get("DEEPSERVE_PROPERTY_EXAMPLES", "50"))


def sized(alphabet: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    """Text of a length drawn uniformly from [lo, hi], so lengths at the limits are tried often."""
    return st.integers(lo, hi).flatmap(lambda n: st.text(alphabet, min_size=n, max_size=n))


def dns_label(max_size: int) -> st.SearchStrategy[str]:
    """A DNS label of 1..max_size characters."""
    return st.builds(lambda head, mid, tail: (head + mid.strip("-") + tail)[:max_size],
                     st.sampled_from(string.ascii_lowercase), sized(string.ascii_lowercase + string.digits + "-",
                                                                    0, max_size), st.sampled_from("a1"))


SEGMENT = st.text(string.ascii_letters + string.digits + "-_.=+@,", min_size=1, max_size=24).filter(
    lambda s: s not in (".", ".."))
LABEL_NAME = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
LABEL_KEY = st.one_of(LABEL_NAME, st.builds(lambda p, n: f"{p}/{n}", st.from_regex(
    r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,3}\Z"), LABEL_NAME))
LABEL_VALUE = st.just("") | LABEL_NAME


IMAGE = st.builds(lambda host, path, tag: f"{host}{'/'.join(path)}{tag}",
                  st.sampled_from(["", "ghcr.io/", "localhost:5000/", "Registry.Example.com:443/"]),
                  st.lists(st.from_regex(r"\A[a-z0-9]{1,12}([._-][a-z0-9]{1,12}){0,2}\Z"), min_size=1, max_size=3),
                  st.sampled_from(["", ":latest", ":24.08-py3", "@sha256:" + "ab" * 32]))


def quantity(unit: str) -> st.SearchStrategy[str | int]:
    """Positive quantities in every notation the schema admits."""
    whole = st.integers(1, 64)
    return st.one_of(
        whole, whole.map(str), whole.map(lambda n: f"{n}{unit}"), whole.map(lambda n: f"{n}.5"),
        st.integers(1, 999).map(lambda n: f"{n}m"), whole.map(lambda n: f"{n}e2"), whole.map(lambda n: f"{n}k"),
        st.integers(1, 999).map(lambda n: f"0.{n:03d}"), whole.map(lambda n: f"+{n}M"))


def source() -> st.SearchStrategy[dict[str, Any]]:
    shape = st.fixed_dictionaries({"totalParams": st.integers(1, 10**12), "layers": st.integers(1, 128),
                                   "hiddenSize": st.integers(1, 2**16), "heads": st.just(8),
                                   "vocabSize": st.integers(1, 2**18)}, optional={"kvHeads": st.sampled_from([1, 2, 8])})
    uri = st.one_of(
        st.sampled_from([f"builtin://{n}" for n in BUILTIN_MODELS]),
        st.builds(lambda c, p: f"pvc://{c}" + "".join(f"/{s}" for s in p), dns_label(63), st.lists(SEGMENT, max_size=4)),
        st.builds(lambda o, n, r: f"hf://{o}/{n}{r}", st.from_regex(r"\A[A-Za-z0-9][-A-Za-z0-9_.]{0,30}\Z"),
                  st.from_regex(r"\A[A-Za-z0-9][-A-Za-z0-9_.]{0,30}\Z"),
                  st.just("") | st.from_regex(r"\A@[A-Za-z0-9._][-A-Za-z0-9._/]{0,20}\Z")),
        st.builds(lambda b, p: f"s3://{b}" + "".join(f"/{s}" for s in p),
                  st.from_regex(r"\A[a-z0-9][-a-z0-9.]{1,20}[a-z0-9]\Z"), st.lists(SEGMENT, min_size=1, max_size=4)))
    extra = st.fixed_dictionaries({}, optional={"format": st.sampled_from(["auto", "safetensors"]), "shape": shape,
                                                "credentialsSecret": dns_label(63)})
    revision = st.fixed_dictionaries({}, optional={"revision": st.from_regex(r"\A[A-Za-z0-9._/-]{1,20}\Z")})
    return st.builds(lambda u, e, r: {"uri": u, **e, **(r if u.startswith("hf://") and "@" not in u else {})},
                     uri, extra, revision)


def toleration() -> st.SearchStrategy[dict[str, Any]]:
    effect = st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"])
    return st.one_of(
        st.fixed_dictionaries({"key": LABEL_KEY, "operator": st.just("Equal"), "value": LABEL_VALUE},
                              optional={"effect": effect}),
        st.fixed_dictionaries({"operator": st.just("Exists")}, optional={"key": LABEL_KEY, "effect": effect}))


@st.composite
def models(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": draw(source())}
    spec["engine"] = draw(st.fixed_dictionaries({}, optional={
        "precision": st.sampled_from(["auto", "fp32", "bf16", "fp16", "fp8"]),
        "maxBatchSize": st.integers(1, 1024), "maxQueueDelayMicroseconds": st.integers(0, 10_000_000),
        "maxInputTokens": st.integers(1, 8192), "maxNewTokens": st.integers(1, 4096),
        "prefixCacheMiB": st.integers(0, 4096), "hostCacheMiB": st.integers(0, 65536),
        "sparseAttention": st.fixed_dictionaries({"enabled": st.booleans(), "topK": st.integers(1, 65536)}),
    }))
    spec["resources"] = draw(st.fixed_dictionaries({}, optional={
        "cpu": quantity(""), "memory": quantity("Gi"), "sharedMemory": quantity("Mi"),
        "gpusPerReplica": st.sampled_from([1, 2, 4, 8])}))
    spec["placement"] = draw(st.fixed_dictionaries({}, optional={
        "tolerations": st.lists(toleration(), max_size=3), "concurrency": st.integers(1, 65536)}))
    lo = draw(st.integers(0, 5))
    spec["scaling"] = {"minReplicas": lo, "maxReplicas": draw(st.integers(lo, 8))}
    spec["runtime"] = draw(st.fixed_dictionaries({}, optional={
        "image": IMAGE,
        "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
        "exitTimeoutSeconds": st.integers(0, 3600), "drainSeconds": st.integers(0, 300)}))
    n = draw(st.integers(0, 3))
    if n:
        names = draw(st.lists(dns_label(20), min_size=n, max_size=n, unique=True))
        cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
        weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
        spec["versions"] = [{"name": v, "weight": w} for v, w in zip(names, weights, strict=True)]
    if draw(st.booleans()):
        spec["billing"] = {"account": draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,40}\Z"))}
    return {"apiVersion": IM, "kind": "InferenceModel", "metadata": {"name": draw(dns_label(40))}, "spec": spec}


@st.composite
def pools(draw: st.DrawFn) -> dict[str, Any]:
    spec = {"nodeSelector": draw(st.dictionaries(LABEL_KEY, LABEL_VALUE, min_size=1, max_size=3)),
            "acceleratorId": "nvidia-l4", "gpusPerNode": draw(st.sampled_from([1, 2, 4, 8])),
            "pricePerGpuHour": draw(st.floats(0, 1e6)), "tolerations": draw(st.lists(toleration(), max_size=2))}
    name = draw(st.one_of(dns_label(63), dns_label(253)))  # a GPUNodePool name is a DNS subdomain
    return {"apiVersion": IM, "kind": "GPUNodePool", "metadata": {"name": name}, "spec": spec}


def admitted(kube: Kube, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The object as the server would store it (defaults applied), or None when refused."""
    try:
        return kube.create(obj, dry_run=True)
    except KubeError as e:
        if e.status != 422:
            raise
        return None


def children_of(model: dict[str, Any], pool: dict[str, Any]) -> list[dict[str, Any]]:
    spec = InferenceModelSpec.from_dict(model["spec"])
    gpus = spec.resources.gpus_per_replica or 1
    chosen = ChosenPlacement(pool["metadata"]["name"], pool["spec"]["acceleratorId"], gpus,
                             spec.engine.tensor_parallel or gpus, "bf16", dict(pool["spec"]["nodeSelector"]),
                             tuple(pool["spec"].get("tolerations", [])))
    replicas = split_replicas(spec.scaling.desired(), {v.name: v.weight for v in spec.versions})
    md = model["metadata"]
    ctx = BuildContext(ModelRef(md["name"], md["namespace"], "0d9c1c4e-0000-4000-8000-000000000000"), spec,
                       chosen, Settings(engine_policy=EnginePolicy("deepserve", None)), replicas)
    return build_children(ctx)


@settings(max_examples=EXAMPLES, deadline=None, derandomize="DEEPSERVE_PROPERTY_EXAMPLES" not in os.environ, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=models(), pool=pools())
def test_every_admitted_model_yields_children_the_server_admits(model: dict[str, Any], pool: dict[str, Any],
                                                                kube: Kube, namespace: str) -> None:
    model["metadata"]["namespace"] = namespace
    stored_pool = admitted(kube, pool)
    stored_model = admitted(kube, model)
    assume(stored_pool is not None and stored_model is not None)
    assert stored_pool is not None and stored_model is not None
    stored_model["metadata"]["namespace"] = namespace
    for child in children_of(stored_model, stored_pool):
        try:
            kube.create(child, dry_run=True)
        except KubeError as e:
            pytest.fail(f"admitted model {model['spec']} on pool {pool} gives a {child['kind']} "
                        f"{child['metadata']['name']} the API server refuses: {e}")
