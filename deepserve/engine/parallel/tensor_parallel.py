"""Tensor parallelism applied to a built model from outside (the model knows nothing of it).

Megatron-style splits over ``torch.distributed``: the projections that fan out
(q/k/v, MLA's query and ``kv_b_proj``, MLP gate/up, every expert's gate/up) are split by
output rows (column-parallel, whole heads per rank); the projections that fan in
(``o_proj``, ``down_proj``) are split by input columns (row-parallel) and their partial
outputs summed with one all-reduce per attention block and one per feed-forward block
(forward hooks on the block). Embedding, norms, router, MLA's shared latent projection
and the output head are replicated. Each rank's KV cache holds only its own KV heads
(``model.args`` is replaced by the per-rank shape so ``setup_caches`` sizes it).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepserve.engine.model.attention import GroupedQueryAttention, MultiHeadLatentAttention
from deepserve.engine.model.layers import GatedMLP, MixtureOfExperts
from deepserve.engine.model.transformer import DecoderLayer, Transformer

log = logging.getLogger(__name__)


class TensorParallelError(ValueError):
    """The model's shape cannot be split over the requested number of ranks."""


def _bounds(total: int, rank: int, world: int, unit: int = 1) -> slice:
    """Rank ``rank``'s contiguous share of ``total`` in whole ``unit``s, balanced.

    Heads split evenly (callers check); an MLP width that ``world`` does not divide (say
    16384 over 3 ranks) splits into shares one unit apart, which sum to the same output.
    """
    units, rem = divmod(total, unit)
    if rem or units < world:
        raise TensorParallelError(f"{total} rows do not split into {world} shares of {unit}")
    base, extra = divmod(units, world)
    start = rank * base + min(rank, extra)
    size = base + (1 if rank < extra else 0)
    return slice(start * unit, (start + size) * unit)


def _shard_rows(linear: nn.Linear, rank: int, world: int, unit: int = 1) -> None:
    """Keep this rank's contiguous share of ``linear``'s output rows (in multiples of ``unit``)."""
    sl = _bounds(linear.weight.shape[0], rank, world, unit)
    linear.weight = nn.Parameter(linear.weight.detach()[sl].clone(), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[sl].clone(), requires_grad=False)
    linear.out_features = sl.stop - sl.start


def _shard_columns(linear: nn.Linear, rank: int, world: int, unit: int = 1) -> None:
    """Keep this rank's share of input columns; the bias is added once (on rank 0)."""
    sl = _bounds(linear.weight.shape[1], rank, world, unit)
    linear.weight = nn.Parameter(linear.weight.detach()[:, sl].clone(), requires_grad=False)
    if linear.bias is not None and rank != 0:
        linear.bias = nn.Parameter(torch.zeros_like(linear.bias), requires_grad=False)
    linear.in_features = sl.stop - sl.start


def _all_reduce_hook(group: Any) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(output, group=group)
        return output
    return hook


def _split_mlp(mlp: GatedMLP, rank: int, world: int) -> None:
    _shard_rows(mlp.gate_proj, rank, world)
    _shard_rows(mlp.up_proj, rank, world)
    _shard_columns(mlp.down_proj, rank, world)


def _keep_kv_head(linear: nn.Linear, head: int, head_dim: int) -> None:
    """Keep one KV head's rows (replicated on the ranks that share it)."""
    sl = slice(head * head_dim, (head + 1) * head_dim)
    linear.weight = nn.Parameter(linear.weight.detach()[sl].clone(), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[sl].clone(), requires_grad=False)
    linear.out_features = head_dim


def _split_gqa(attn: GroupedQueryAttention, rank: int, world: int) -> None:
    """Whole query heads per rank; KV heads split, or replicated when ranks outnumber them.

    With ``world`` a multiple of the KV heads, rank ``r``'s query heads all belong to KV
    head ``r * kv_heads // world``, which that rank keeps whole (each KV head is held by
    ``world / kv_heads`` ranks).
    """
    if attn.heads % world:
        raise TensorParallelError(f"{attn.heads} attention heads do not split over {world} ranks")
    replicate = attn.kv_heads % world != 0
    if replicate and world % attn.kv_heads:
        raise TensorParallelError(f"{attn.kv_heads} KV heads do not split over {world} ranks "
                                  "(nor does the world size replicate them evenly)")
    hd = attn.head_dim
    _shard_rows(attn.q_proj, rank, world, hd)
    if replicate:
        head = rank * attn.kv_heads // world
        _keep_kv_head(attn.k_proj, head, hd)
        _keep_kv_head(attn.v_proj, head, hd)
    else:
        _shard_rows(attn.k_proj, rank, world, hd)
        _shard_rows(attn.v_proj, rank, world, hd)
    _shard_columns(attn.o_proj, rank, world)
    attn.heads //= world
    attn.kv_heads = 1 if replicate else attn.kv_heads // world


def _split_mla(attn: MultiHeadLatentAttention, rank: int, world: int) -> None:
    if attn.heads % world:
        raise TensorParallelError(f"{attn.heads} heads do not split over {world} ranks")
    qk = attn.nope + attn.rope_dim
    _shard_rows(attn.q_b_proj if hasattr(attn, "q_b_proj") else attn.q_proj, rank, world, qk)
    _shard_rows(attn.kv_b_proj, rank, world, attn.nope + attn.v_dim)
    _shard_columns(attn.o_proj, rank, world)
    attn.heads //= world


def apply_tensor_parallel(model: Transformer, group: Any = None) -> Transformer:
    """Split ``model`` in place over the ranks of ``group`` (default: the world group).

    Call after loading weights (every rank loads the full checkpoint) and before
    ``setup_caches``. Returns the model. Raises :class:`TensorParallelError` when
    heads, KV heads or hidden sizes do not divide by the world size.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if world == 1:
        return model
    args = model.args
    for layer in model.model.layers:
        assert isinstance(layer, DecoderLayer)
        attn = layer.self_attn
        if isinstance(attn, MultiHeadLatentAttention):
            _split_mla(attn, rank, world)
        else:
            _split_gqa(attn, rank, world)
        attn.register_forward_hook(_all_reduce_hook(group))
        mlp = layer.mlp
        if isinstance(mlp, MixtureOfExperts):
            for expert in mlp.experts:
                _split_mlp(expert, rank, world)  # type: ignore[arg-type]
            _split_mlp(mlp.shared_experts, rank, world)
        else:
            _split_mlp(mlp, rank, world)
        mlp.register_forward_hook(_all_reduce_hook(group))
    # the KV cache per rank holds its own KV heads (MLA's latent cache is shared, unchanged)
    if not args.is_mla:
        model.args = dataclasses.replace(args, num_heads=args.num_heads // world,
                                         num_kv_heads=max(1, args.num_kv_heads // world))
    log.info("tensor parallel: rank %d of %d", rank, world)
    return model
