"""The ConfigMap that holds a version's Triton model repository."""

from __future__ import annotations

import hashlib
from typing import Any

from deepserve.engine.options import EngineOptions, SparseAttentionOptions
from deepserve.engine.triton.repository import render_model_repository
from deepserve.operator.api.views import Version
from deepserve.operator.builders.context import (
    USAGE_SPOOL,
    BuildContext,
    child_name,
    metadata,
    version_of,
)
from deepserve.operator.builders.sources import model_dir_for as source_model_dir

TRITON_VERSION = "1"


def repository_configmap_name(model: str, version: str) -> str:
    """Name of the ConfigMap holding ``version``'s model repository."""
    return f"{child_name(model, version)}-repo"


def config_key(path: str) -> str:
    """ConfigMap key for a repository path (keys cannot contain '/')."""
    return path.replace("/", "__")


def model_dir_for(version: Version) -> str:
    """EngineOptions.model_dir for a source (see :func:`deepserve.operator.builders.sources.model_dir_for`)."""
    return source_model_dir(version)


def served_precision(ctx: BuildContext, version: Version) -> str:
    """The precision policy the planner chose (status), unless this version asks for its own.

    The planner turns the spec's precision into what the pool runs (``auto`` becomes fp16 on
    devices without bf16) and budgets memory for it, so the engine must run exactly that.
    """
    if version.engine.precision == ctx.spec.engine.precision and ctx.placement.precision:
        return ctx.placement.precision
    return version.engine.precision


def engine_options(ctx: BuildContext, version: Version) -> EngineOptions:
    """The EngineOptions one version's engine runs with."""
    e = version.engine
    sa = e.sparse_attention
    return EngineOptions(
        model_dir=model_dir_for(version),
        max_batch_size=e.max_batch_size,
        max_input_tokens=e.max_input_tokens,
        max_new_tokens_limit=e.max_new_tokens,
        kv_cache_tokens=e.kv_cache_tokens or 0,
        precision=served_precision(ctx, version),
        error_bound=e.error_bound,
        sparse_attention=SparseAttentionOptions(sa.enabled, sa.top_k, sa.sinks, sa.local_window),
        prefix_cache_mib=e.prefix_cache_mib,
        host_cache_mib=e.host_cache_mib,
        tensor_parallel=ctx.placement.tensor_parallel,
        pipeline_parallel=ctx.placement.pipeline_parallel,
        max_queue_delay_us=e.max_queue_delay_us,
        usage_spool_dir=USAGE_SPOOL,
        usage_endpoint=ctx.settings.usage_endpoint,
        device="cuda" if ctx.placement.gpus_per_replica > 0 else "cpu",
        served_model=ctx.model.name,
        served_version=version.name,
        namespace=ctx.model.namespace,
        billing_account=ctx.spec.billing_account or "",
    )


def repository_files(ctx: BuildContext, version_name: str) -> dict[str, str]:
    """The model repository files of one version, ``{relative path: text}``."""
    version = version_of(ctx, version_name)
    return render_model_repository(ctx.model.name, engine_options(ctx, version), TRITON_VERSION)


def files_hash(files: dict[str, str]) -> str:
    """A short digest of the repository, put on the pod template so edits roll the pods."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()[:16]


def build_repository_configmap(ctx: BuildContext, version_name: str) -> dict[str, Any]:
    """The ConfigMap holding ``config.pbtxt`` and ``1/model.py`` for one version."""
    files = repository_files(ctx, version_name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, repository_configmap_name(ctx.model.name, version_name), version_name),
        "data": {config_key(p): t for p, t in sorted(files.items())},
    }
