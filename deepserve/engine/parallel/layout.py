"""Where each rank of a replica sits: tensor-parallel rank inside a pipeline stage.

Ranks are numbered stage-major: ``rank = stage * tensor_parallel + tp_rank``. Global
rank 0 (stage 0, TP rank 0) serves requests; the ranks of one stage form a TP group and
rank ``r`` sends its activations to rank ``r + tensor_parallel`` (same TP rank, next
stage). This module imports no torch: the operator and the planner use it too.
"""

from __future__ import annotations

from dataclasses import dataclass


class ParallelLayoutError(ValueError):
    """A TP x PP layout that cannot run; the message names the field."""


@dataclass(frozen=True)
class RankLayout:
    """One rank's place in a ``tensor_parallel x pipeline_parallel`` replica."""

    tensor_parallel: int
    pipeline_parallel: int
    rank: int = 0

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParallelLayoutError(f"{name}: must be an integer >= 1, got {value!r}")
        if not 0 <= self.rank < self.world:
            raise ParallelLayoutError(f"rank: must be in [0, {self.world}), got {self.rank}")

    @property
    def world(self) -> int:
        """Processes in the replica (one per GPU)."""
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def stage(self) -> int:
        """This rank's pipeline stage."""
        return self.rank // self.tensor_parallel

    @property
    def tp_rank(self) -> int:
        """This rank's index inside its tensor-parallel group."""
        return self.rank % self.tensor_parallel

    def stage_ranks(self, stage: int) -> list[int]:
        """Global ranks of ``stage``'s tensor-parallel group."""
        return list(range(stage * self.tensor_parallel, (stage + 1) * self.tensor_parallel))

    @property
    def is_first_stage(self) -> bool:
        """True on the stage that embeds tokens."""
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        """True on the stage that computes logits."""
        return self.stage == self.pipeline_parallel - 1

    def for_rank(self, rank: int) -> RankLayout:
        """The same replica seen from ``rank``."""
        return RankLayout(self.tensor_parallel, self.pipeline_parallel, rank)


def stage_bounds(num_layers: int, stages: int) -> list[tuple[int, int]]:
    """Contiguous, balanced ``[start, end)`` layer ranges, one per stage.

    Earlier stages take the remainder (they also hold the embedding). Raises
    :class:`ParallelLayoutError` when there are more stages than layers.
    """
    if stages < 1:
        raise ParallelLayoutError(f"pipeline_parallel: must be >= 1, got {stages}")
    if stages > num_layers:
        raise ParallelLayoutError(
            f"pipeline_parallel: {stages} stages exceed the model's {num_layers} layers")
    base, extra = divmod(num_layers, stages)
    bounds, start = [], 0
    for stage in range(stages):
        end = start + base + (1 if stage < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def check_layout(tensor_parallel: int, pipeline_parallel: int, *, num_layers: int,
                 attention_heads: int, kv_heads: int, gpus: int | None = None) -> None:
    """Refuse a layout the engine cannot run, naming the field.

    TP must divide the attention heads (whole heads per rank) and divide the KV heads or
    be a multiple of them (each rank then keeps one replicated KV head), PP must not
    exceed the layers, and TP x PP must equal ``gpus`` when given.
    """
    RankLayout(tensor_parallel, pipeline_parallel)
    if attention_heads % tensor_parallel:
        raise ParallelLayoutError(f"tensor_parallel: {tensor_parallel} does not divide the "
                                  f"{attention_heads} attention heads")
    if kv_heads % tensor_parallel and tensor_parallel % kv_heads:
        raise ParallelLayoutError(f"tensor_parallel: {tensor_parallel} neither divides the "
                                  f"{kv_heads} KV heads nor is a multiple of them")
    stage_bounds(num_layers, pipeline_parallel)
    if gpus is not None and tensor_parallel * pipeline_parallel != gpus:
        raise ParallelLayoutError(
            f"gpusPerReplica: {gpus} is not tensor_parallel x pipeline_parallel = "
            f"{tensor_parallel} x {pipeline_parallel}")
