"""spec.engine.pipelineParallel is honoured or refused naming the field, never dropped.

Before, ``pipelineParallel: 2`` without ``tensorParallel`` was planned as one GPU, one stage.
"""

from __future__ import annotations

import pytest
from model_cases import make_model

from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.controller.planning import plan
from deepserve.operator.placement import PoolOffer

pytestmark = pytest.mark.unit
POOLS = [PoolOffer("a100", "nvidia-a100-sxm4-80gb", 8, 2, 16, 1.80, max_nodes=2)]


def _plan(**engine: object) -> tuple[tuple[int, int, int] | None, str]:
    spec = InferenceModelSpec.from_dict(make_model().engine(**engine).obj()["spec"])
    outcome = plan(spec, POOLS, None, True)
    c = outcome.chosen
    return (None if c is None else (c.tensor_parallel, c.pipeline_parallel, c.gpus_per_replica)), outcome.reason


def test_stages_without_tensor_parallel_get_one_gpu_each() -> None:
    assert _plan(pipelineParallel=2)[0] == (1, 2, 2)


def test_stages_with_tensor_parallel_fill_the_replica() -> None:
    assert _plan(tensorParallel=2, pipelineParallel=2)[0] == (2, 2, 4)


def test_stages_share_a_fixed_replica_by_tensor_parallel() -> None:
    spec = InferenceModelSpec.from_dict(
        make_model().engine(pipelineParallel=2).set("resources.gpusPerReplica", 4).obj()["spec"])
    c = plan(spec, POOLS, None, True).chosen
    assert c is not None and (c.tensor_parallel, c.pipeline_parallel, c.gpus_per_replica) == (2, 2, 4)


def test_stages_that_do_not_divide_the_replica_are_refused_naming_the_field() -> None:
    spec = InferenceModelSpec.from_dict(
        make_model().engine(tensorParallel=1, pipelineParallel=2).set("resources.gpusPerReplica", 4)
        .obj()["spec"])
    outcome = plan(spec, POOLS, None, True)
    assert outcome.chosen is None
    assert outcome.reason.startswith("InvalidParallelism: spec.engine.pipelineParallel: 2 stages")
