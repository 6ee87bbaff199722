"""Pipeline parallelism: the decoder layers split into stages over processes.

:func:`apply_pipeline_parallel` keeps only this stage's contiguous range of layers and
replaces the model's ``forward`` with one that takes its input from the previous stage
(activations over ``torch.distributed`` point-to-point) and hands its output to the next.
The batch is cut into micro-batches (by cache slot) that flow through the stages one
after another: while stage 1 works on micro-batch 0, stage 0 already computes
micro-batch 1 (sends are asynchronous), so a decode step keeps several stages busy.
The last stage computes the logits and sends them to global rank 0, the serving rank;
the other ranks' ``forward`` returns zeros of the same shape (they never sample).

Composes with tensor parallelism: call this first, then
:func:`~deepserve.engine.parallel.tensor_parallel.apply_tensor_parallel` with the
stage's TP group; activations go from TP rank ``i`` of a stage to TP rank ``i`` of the
next (each holds the full hidden state after its block's all-reduce).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepserve.engine.model.transformer import Transformer
from deepserve.engine.parallel.layout import RankLayout, stage_bounds

log = logging.getLogger(__name__)


def _micro_batches(rows: int, count: int) -> list[tuple[int, int]]:
    count = max(1, min(count, rows))
    base, extra = divmod(rows, count)
    out, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


class PipelineStage:
    """The forward pass of one stage; installed as ``model.forward`` on every rank."""

    def __init__(self, model: Transformer, layout: RankLayout, micro_batches: int,
                 group: Any = None) -> None:
        self.model, self.layout, self.micro_batches, self.group = model, layout, micro_batches, group
        self.dtype = model.lm_head.weight.dtype
        # where this stage's activations go and come from (same TP rank, next/previous stage)
        self.prev = layout.rank - layout.tensor_parallel if not layout.is_first_stage else None
        self.next = layout.rank + layout.tensor_parallel if not layout.is_last_stage else None
        # the last stage's TP rank 0 sends logits to the serving rank
        self.sends_logits = layout.is_last_stage and layout.tp_rank == 0 and layout.rank != 0

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor,
                 slots: torch.Tensor | None = None, *, last: torch.Tensor | None = None,
                 fresh: bool = False, block_table: torch.Tensor | None = None) -> torch.Tensor:
        """Same contract as :meth:`Transformer.forward`; the logits are real on rank 0 only."""
        model, layout = self.model, self.layout
        rows, width = tokens.shape
        out_len = 1 if last is not None else width
        vocab = model.args.vocab_size
        chunks = _micro_batches(rows, self.micro_batches)
        pending: list[Any] = []
        in_flight: list[torch.Tensor] = []  # kept alive until their sends complete
        results: list[torch.Tensor] = []
        for start, end in chunks:
            part_slots = (slots[start:end] if slots is not None
                          else None if len(chunks) == 1
                          else torch.arange(start, end, device=tokens.device))
            batch = model.attention_batch(positions[start:end], part_slots, fresh)
            if block_table is not None:  # a paged cache: this micro-batch's rows of the table
                batch.block_table = block_table[start:end]
            if self.prev is None:
                x = model.model.embed_tokens(tokens[start:end])
            else:
                buf = torch.empty(end - start, width, model.args.hidden_size,
                                  dtype=torch.float32, device=tokens.device)
                dist.recv(buf, src=self.prev, group=self.group)
                x = buf.to(self.dtype)
            for layer in model.model.layers:
                x = layer(x, batch)
            if self.next is not None:
                in_flight.append(x.float().contiguous())
                pending.append(dist.isend(in_flight[-1], dst=self.next, group=self.group))
                continue
            if last is not None:
                x = x[torch.arange(x.shape[0], device=x.device), last[start:end]][:, None]
            logits = model.lm_head(model.model.norm(x)).float()
            if self.sends_logits:
                pending.append(dist.isend(logits.contiguous(), dst=0, group=self.group))
            results.append(logits)
        if layout.rank == 0 and not layout.is_last_stage:
            for start, end in chunks:  # the last stage's logits, micro-batch by micro-batch
                buf = torch.empty(end - start, out_len, vocab, dtype=torch.float32,
                                  device=tokens.device)
                dist.recv(buf, src=layout.world - layout.tensor_parallel, group=self.group)
                results.append(buf)
        for work in pending:
            work.wait()
        if layout.rank == 0 or (layout.is_last_stage and results):
            return torch.cat(results)
        return torch.zeros(rows, out_len, vocab, dtype=torch.float32, device=tokens.device)


def apply_pipeline_parallel(model: Transformer, layout: RankLayout, micro_batches: int = 2,
                            group: Any = None) -> Transformer:
    """Keep this rank's stage of ``model`` and route its forward through the pipeline.

    Call after loading weights and before tensor parallelism and ``setup_caches``.
    ``group`` carries the point-to-point traffic (default: the world group, whose ranks
    must be numbered as in :class:`RankLayout`). Returns the model.
    """
    if layout.pipeline_parallel == 1:
        return model
    start, end = stage_bounds(model.args.num_layers, layout.pipeline_parallel)[layout.stage]
    model.model.layers = nn.ModuleList(list(model.model.layers)[start:end])
    stage = PipelineStage(model, layout, micro_batches, group)
    model.forward = types.MethodType(lambda _self, *a, **k: stage(*a, **k), model)  # type: ignore[method-assign]
    log.info("pipeline stage %d of %d: layers %d-%d (rank %d)", layout.stage,
             layout.pipeline_parallel, start, end - 1, layout.rank)
    return model
