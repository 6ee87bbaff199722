"""Typed input of the pure builders: the model, its version, the placement and settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.api.views import InferenceModelSpec, Version

MANAGED_BY = "deepserve-operator"
LABEL_MODEL = "deepserve.io/model"
LABEL_VERSION = "deepserve.io/version"
LABEL_POOL = "deepserve.io/pool"
ANNOTATION_CONFIG_HASH = "deepserve.io/config-hash"
MODEL_STORE = "/mnt/models"
CACHE_DIR = "/var/cache/deepserve"
USAGE_SPOOL = "/var/lib/deepserve/usage"
REPOSITORY_DIR = "/models"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
OPENAI_PORT = 9000  # the engine pod's OpenAI frontend (the gateway's upstream)


@dataclass(frozen=True)
class EnginePolicy:
    """Who may reach engine pods (their NetworkPolicy): the release's gateway and operator pods,
    and metrics scrapers (pods labelled ``metrics_labels`` in ``metrics_namespace``, any when None)."""

    release_namespace: str
    metrics_namespace: str | None = None
    metrics_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "prometheus"),)


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings the builders need (from `deepserve operator run` flags)."""

    engine_image: str = "ghcr.io/deepserve/engine:latest"
    usage_endpoint: str = ""
    cluster_domain: str = "cluster.local"
    gateway_api: bool = False
    gateway_parent: tuple[str, str] | None = None  # (namespace, name) of the Gateway
    run_as_user: int = 1000
    # Dev only: label engine pods deepserve.io/runner=<value> so a local runner plays them
    # (see deepserve.operator.dev.runner); empty in production.
    engine_runner: str = ""
    # Controller: carry out the autoscaler's status.scaling.suggestedPool (--allow-pool-move)
    allow_pool_move: bool = False
    # The LeaderWorkerSet API is installed: multi-node replicas can be served
    leaderworkerset: bool = False
    # Engine pods get a NetworkPolicy admitting only these peers (None: no policy)
    engine_policy: EnginePolicy | None = None
    # The operator mints per-model usage write credentials (--ingest-key-file): engine pods
    # mount their model's Secret (builders.usage_credential)
    usage_credentials: bool = False


@dataclass(frozen=True)
class ChosenPlacement:
    """What the planner decided for one model (all versions share it)."""

    pool: str
    accelerator_id: str
    gpus_per_replica: int
    tensor_parallel: int
    precision: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    pipeline_parallel: int = 1
    nodes_per_replica: int = 1  # > 1: served as a LeaderWorkerSet (builders.leaderworkerset)
    gpu_resource: str = "nvidia.com/gpu"  # what the pool's device plugin advertises (placement.gpus)


@dataclass(frozen=True)
class ModelRef:
    """Identity of the InferenceModel object (for names, labels and ownerReferences)."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder reads; builders are pure functions of it."""

    model: ModelRef
    spec: InferenceModelSpec
    placement: ChosenPlacement
    settings: Settings
    replicas: dict[str, int]  # version name -> desired replicas


def child_name(model: str, version: str) -> str:
    """Name of a version's Deployment, Service and PodDisruptionBudget."""
    return f"{model}-{version}"


def labels(model: str, version: str | None = None) -> dict[str, str]:
    """Labels every child carries; the version label only on per-version children."""
    out = {
        "app.kubernetes.io/name": "deepserve-engine",
        "app.kubernetes.io/instance": model,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL: model,
    }
    if version is not None:
        out[LABEL_VERSION] = version
    return out


def selector(model: str, version: str | None = None) -> dict[str, str]:
    """Pod selector of a model (all versions) or of one version."""
    out = {LABEL_MODEL: model}
    if version is not None:
        out[LABEL_VERSION] = version
    return out


def metadata(ctx: BuildContext, name: str, version: str | None) -> dict[str, object]:
    """Object metadata with labels and the controller ownerReference to the model."""
    return {
        "name": name,
        "namespace": ctx.model.namespace,
        "labels": labels(ctx.model.name, version),
        "ownerReferences": [{
            "apiVersion": API_VERSION,
            "kind": "InferenceModel",
            "name": ctx.model.name,
            "uid": ctx.model.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }],
    }


def version_of(ctx: BuildContext, name: str) -> Version:
    """The resolved version called ``name``."""
    for v in ctx.spec.versions:
        if v.name == name:
            return v
    raise KeyError(name)
