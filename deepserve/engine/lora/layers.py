"""Many LoRA adapters in one forward pass: a resident pool of stacked A/B weights per layer.

:func:`install_lora` wraps every projection an adapter may target (attention q/k/v/o, MLA's
query and latent projections, dense MLP gate/up/down) in a :class:`LoraLinear`. Each holds
the resident adapters' weights stacked by pool slot, ``A [slots, R, in]`` and
``B [slots, out, R]`` with the adapter's scale folded into ``B``; slot 0 is the base model
(all zeros), so a base-only row gets ``base(x) + 0`` — bit-identical to the base model.

Which adapter each row of a pass uses is one index per row, :attr:`LoraState.rows`, set
by the runtime before the pass (:meth:`LoraState.bind`). Two ways to apply it, same result:

- ``segments`` (eager, the default): rows are grouped by adapter on the host (the runtime
  knows them, so no device sync) and each group runs two small matmuls,
  ``y[rows] += (x[rows] @ A_i^T) @ B_i^T`` — a grouped GEMM reading each adapter once;
- ``gather`` (static shapes, for compiled / CUDA-graph decode): ``A[rows]`` and ``B[rows]``
  are gathered per row and applied with two ``bmm`` (the BGMV form of Punica/S-LoRA),
  reading the index from a fixed buffer that a graph replay sees updated.

A fused projection (``qkv_proj``, ``gate_up_proj``) is one LoRA of rank ``parts x R``: the
parts' A matrices stacked, their B matrices block-diagonal, which is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

MODES = ("segments", "gather")


@dataclass
class LoraState:
    """The adapter index of every row of the current pass, shared by all LoRA layers.

    ``rows`` is a fixed buffer of ``capacity_rows`` entries; a pass over B rows reads its
    first B. ``segments`` is the same index grouped on the host: ``[(slot, row ids)]`` for
    the non-base slots (empty: no row uses an adapter and the LoRA layers add nothing).
    """

    rows: torch.Tensor
    mode: str = "segments"
    segments: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    bound: int = 0  # rows bound for the current pass

    def bind(self, slots: Sequence[int]) -> None:
        """Set the pool slot (0 = base) of each row of the next forward pass."""
        n = len(slots)
        if n > self.rows.shape[0]:
            raise ValueError(f"{n} rows bound, the LoRA row buffer holds {self.rows.shape[0]}")
        self.rows[:n].copy_(torch.tensor(list(slots), dtype=torch.long))
        self.rows[n:].zero_()
        self.bound = n
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(slots):
            if slot:
                groups.setdefault(slot, []).append(row)
        device = self.rows.device
        self.segments = [(slot, torch.tensor(ids, dtype=torch.long, device=device))
                         for slot, ids in sorted(groups.items())]

    def clear(self) -> None:
        """Every row uses the base model."""
        self.bind([])


class LoraLinear(nn.Module):
    """``base(x)`` plus, for each row, its adapter's ``B A x`` (scale folded into B).

    ``parts`` are the ``(name, out_features)`` of the projections this module computes side
    by side (one for a plain projection; q/k/v or gate/up when fused).
    """

    lora_a: torch.Tensor
    lora_b: torch.Tensor

    def __init__(self, base: nn.Module, state: LoraState, parts: Sequence[tuple[str, int]],
                 in_features: int, slots: int, rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        self.base, self.state = base, state
        self.parts = tuple(parts)
        self.in_features, self.rank = in_features, rank
        self.out_features = sum(out for _, out in self.parts)
        total = rank * len(self.parts)
        self.register_buffer("lora_a", torch.zeros(slots + 1, total, in_features, dtype=dtype,
                                                   device=device), persistent=False)
        self.register_buffer("lora_b", torch.zeros(slots + 1, self.out_features, total, dtype=dtype,
                                                   device=device), persistent=False)

    def set_slot(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Load one adapter into pool ``slot``: ``weights[part] = (A [r, in], B_scaled [out, r])``;
        parts it does not target stay zero."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        out0 = 0
        for i, (name, out) in enumerate(self.parts):
            if name in weights:
                a, b = weights[name]
                r = a.shape[0]
                self.lora_a[slot, i * self.rank: i * self.rank + r].copy_(a)
                self.lora_b[slot, out0: out0 + out, i * self.rank: i * self.rank + r].copy_(b)
            out0 += out

    def clear_slot(self, slot: int) -> None:
        """Zero pool ``slot`` (an evicted adapter)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = cast(torch.Tensor, self.base(x))  # x: [B, T, in] -> y: [B, T, out]
        state = self.state
        if state.mode == "gather":
            rows = state.rows[: x.shape[0]]
            a = self.lora_a.index_select(0, rows)  # [B, R, in]
            b = self.lora_b.index_select(0, rows)  # [B, out, R]
            h = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]).to(a.dtype), a.transpose(1, 2))
            delta = torch.bmm(h, b.transpose(1, 2))  # [B, T, out]
            return y + delta.view(y.shape).to(y.dtype)
        for slot, ids in state.segments:
            xs = x.index_select(0, ids).to(self.lora_a.dtype)  # [n, T, in]
            delta = (xs @ self.lora_a[slot].T) @ self.lora_b[slot].T  # [n, T, out]
            y.index_add_(0, ids, delta.to(y.dtype))
        return y


@dataclass
class LoraTarget:
    """Where an adapter's module (its Hugging Face path) lands: a layer and one of its parts."""

    layer: LoraLinear
    part: str
    in_features: int
    out_features: int


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    weight = cast(torch.Tensor, module.weight)
    return int(weight.shape[1]), int(weight.shape[0])


def _targets_of(model: nn.Module) -> list[tuple[nn.Module, str, str, list[tuple[str, int]]]]:
    """``(parent, attribute, hf path prefix, parts)`` of every projection an adapter may target."""
    from deepserve.engine.model.attention import GroupedQueryAttention, MultiHeadLatentAttention
    from deepserve.engine.model.layers import GatedMLP

    found: list[tuple[nn.Module, str, str, list[tuple[str, int]]]] = []
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, GroupedQueryAttention):
            if module.qkv_proj is not None:
                q, k, v = module.qkv_split
                found.append((module, "qkv_proj", prefix, [("q_proj", q), ("k_proj", k), ("v_proj", v)]))
            else:
                for name in ("q_proj", "k_proj", "v_proj"):
                    found.append((module, name, prefix, [(name, _linear_shape(getattr(module, name))[1])]))
            found.append((module, "o_proj", prefix, [("o_proj", _linear_shape(module.o_proj)[1])]))
        elif isinstance(module, MultiHeadLatentAttention):
            # kv_b_proj is read as a weight (absorbed into the query), never called: not a target
            for name in ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "o_proj"):
                if hasattr(module, name):
                    found.append((module, name, prefix, [(name, _linear_shape(getattr(module, name))[1])]))
        elif isinstance(module, GatedMLP) and ".experts." not in f".{path}.":
            if "shared_experts" in path:
                continue
            if module.gate_up_proj is not None:
                half = _linear_shape(module.gate_up_proj)[1] // 2
                found.append((module, "gate_up_proj", prefix, [("gate_proj", half), ("up_proj", half)]))
            else:
                for name in ("gate_proj", "up_proj"):
                    found.append((module, name, prefix, [(name, _linear_shape(getattr(module, name))[1])]))
            found.append((module, "down_proj", prefix, [("down_proj", _linear_shape(module.down_proj)[1])]))
    return found


def install_lora(model: nn.Module, slots: int, rank: int, rows: int,
                 mode: str = "segments") -> tuple[LoraState, dict[str, LoraTarget]]:
    """Wrap the targetable projections of ``model`` for ``slots`` resident adapters of rank
    up to ``rank``; ``rows`` bounds the rows of one pass (the cache slots).

    Returns the shared :class:`LoraState` and a map from each projection's Hugging Face
    module path (``model.layers.0.self_attn.q_proj``) to where its weights go. Call after
    fusing projections and installing adaptive precision (the base layer may be either).
    """
    if mode not in MODES:
        raise ValueError(f"lora mode: one of {MODES}, got {mode!r}")
    weight = next(model.parameters())
    state = LoraState(torch.zeros(max(rows, 1), dtype=torch.long, device=weight.device), mode)
    targets: dict[str, LoraTarget] = {}
    for parent, attr, prefix, parts in _targets_of(model):
        base = getattr(parent, attr)
        in_features, _ = _linear_shape(base)
        layer = LoraLinear(base, state, parts, in_features, slots, rank,
                           cast(torch.Tensor, base.weight).dtype, weight.device)
        setattr(parent, attr, layer)
        for part, out in parts:
            targets[f"{prefix}{part}"] = LoraTarget(layer, part, in_features, out)
    return state, targets
