"""TP x PP layouts: rank placement, balanced stages, and refusals naming the field."""

from __future__ import annotations

import itertools

import pytest

from deepserve.engine.options import EngineOptions, EngineOptionsError
from deepserve.engine.parallel.layout import (
    ParallelLayoutError,
    RankLayout,
    check_layout,
    stage_bounds,
)

pytestmark = pytest.mark.unit


def test_ranks_are_stage_major() -> None:
    layout = RankLayout(tensor_parallel=4, pipeline_parallel=2, rank=6)
    assert (layout.world, layout.stage, layout.tp_rank) == (8, 1, 2)
    assert layout.stage_ranks(1) == [4, 5, 6, 7]
    assert layout.is_last_stage and not layout.is_first_stage
    assert layout.for_rank(1).stage == 0


def test_stages_cover_every_layer_once_and_balance() -> None:
    for layers in (2, 7, 61, 126):
        for stages in range(1, min(layers, 9) + 1):
            bounds = stage_bounds(layers, stages)
            assert bounds[0][0] == 0 and bounds[-1][1] == layers
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [end - start for start, end in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize(("tp", "pp", "kv", "gpus", "field", "text"), [
    (5, 1, 8, None, "tensor_parallel", "48 attention heads"),
    (8, 1, 12, None, "tensor_parallel", "12 KV heads"),
    (1, 81, 8, None, "pipeline_parallel", "80 layers"),
    (2, 2, 8, 8, "gpusPerReplica", "2 x 2"),
    (0, 1, 8, None, "tensor_parallel", ">= 1"),
])
def test_layouts_that_cannot_run_are_refused(tp: int, pp: int, kv: int, gpus: int | None,
                                             field: str, text: str) -> None:
    with pytest.raises(ParallelLayoutError) as err:
        check_layout(tp, pp, num_layers=80, attention_heads=48, kv_heads=kv, gpus=gpus)
    assert str(err.value).startswith(field) and text in str(err.value)


def test_tp_beyond_the_kv_heads_replicates_them() -> None:
    check_layout(16, 1, num_layers=80, attention_heads=48, kv_heads=8)  # 2 ranks per KV head


def test_engine_options_validate_pipeline_parallel() -> None:
    assert EngineOptions(model_dir="m", pipeline_parallel=4).pipeline_parallel == 4
    with pytest.raises(EngineOptionsError, match=r"^pipeline_parallel"):
        EngineOptions(model_dir="m", pipeline_parallel=0)
