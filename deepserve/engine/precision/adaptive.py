"""Linear layers that compute in a precision chosen per forward pass.

:func:`apply_adaptive_precision` swaps every ``nn.Linear`` of the decoder layers (not the
embedding, the output head or indexers) for an :class:`AdaptiveLinear` that keeps the
weight in each precision in use — the master copy (the loaded dtype) plus bf16/fp16
copies and an fp8 copy with scales — and multiplies in the precision the shared
:class:`PrecisionState` names. Activations between layers, attention and the KV cache
stay in the master dtype, so a sequence may change precision from step to step.
Parameter names are unchanged (``weight``/``bias``), so state dicts still match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from deepserve.engine.contract.precision import (
    LOAD_PRECISIONS,
    TORCH_DTYPE_NAMES,
    weight_copies,
)
from deepserve.engine.precision.fp8 import (
    Fp8Weight,
    fp8_hardware_support,
    fp8_linear,
    quantize_weight,
)

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {p: getattr(torch, TORCH_DTYPE_NAMES[p]) for p in LOAD_PRECISIONS}
PRECISION_OF: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass
class PrecisionState:
    """The precision the next forward pass uses (shared by every :class:`AdaptiveLinear`)."""

    master: str
    current: str
    use_scaled_mm: bool = False
    max_abs_input: float = 0.0  # largest |x| seen while ``track_range`` is on
    track_range: bool = False


class AdaptiveLinear(nn.Module):
    """``nn.Linear`` with per-precision weight copies; computes in ``state.current``."""

    def __init__(self, linear: nn.Linear, state: PrecisionState, precisions: tuple[str, ...],
                 fp8_block: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.state = state
        self.copies: dict[str, torch.Tensor] = {}
        self.fp8: Fp8Weight | None = None
        for p in precisions:
            if p == "fp8":
                self.fp8 = quantize_weight(self.weight, fp8_block)
            elif p != state.master:
                self.copies[p] = self.weight.detach().to(DTYPES[p])

    def extra_bytes(self) -> int:
        """Bytes held by the extra precision copies (beyond the master weight)."""
        extra = sum(t.numel() * t.element_size() for t in self.copies.values())
        return extra + (self.fp8.nbytes if self.fp8 is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.track_range:
            state.max_abs_input = max(state.max_abs_input, float(x.detach().abs().max()))
        precision = state.current
        if precision == state.master:
            return F.linear(x, self.weight, self.bias)
        if precision == "fp8":
            if self.fp8 is None:
                raise RuntimeError("fp8 was not prepared for this layer")
            return fp8_linear(x, self.fp8, self.bias, state.use_scaled_mm)
        dtype = DTYPES[precision]
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.copies[precision], bias).to(x.dtype)


@dataclass
class AdaptivePrecisionHandle:
    """The installed precision switch: its state, the layers, and what the copies cost."""

    model: nn.Module
    state: PrecisionState
    precisions: tuple[str, ...]
    layers: list[AdaptiveLinear] = field(default_factory=list)
    fp8_native: bool = False
    fp8_reason: str = ""

    @property
    def extra_bytes(self) -> int:
        """Bytes of weight copies held beyond the master weights."""
        return sum(layer.extra_bytes() for layer in self.layers)

    @contextmanager
    def use(self, precision: str) -> Iterator[None]:
        """Compute in ``precision`` inside the block."""
        if precision not in self.precisions:
            raise ValueError(f"precision {precision!r} not prepared; have {self.precisions}")
        previous, self.state.current = self.state.current, precision
        try:
            yield
        finally:
            self.state.current = previous


def available_precisions(master: torch.dtype, device: torch.device,
                         allow_reference_fp8: bool = False) -> tuple[str, ...]:
    """Precisions worth offering (:func:`~deepserve.engine.contract.precision.weight_copies`):
    none above the master dtype; fp8 where hardware has it.

    On devices without native fp8 the reference path is offered only when
    ``allow_reference_fp8`` (for numerics checks; it is slower than bf16 there).
    """
    native, _ = fp8_hardware_support(str(device))
    return weight_copies("auto", PRECISION_OF[master], native or allow_reference_fp8)


def apply_adaptive_precision(model: nn.Module, precisions: tuple[str, ...] | None = None,
                             fp8_block: int = 0, allow_reference_fp8: bool = False,
                             ) -> AdaptivePrecisionHandle:
    """Swap the decoder's linear layers for :class:`AdaptiveLinear` and return the handle.

    ``precisions`` defaults to :func:`available_precisions` for the model's device and
    dtype. Modules named ``lm_head`` or inside an ``indexer`` keep their ``nn.Linear``.
    """
    weight = next(model.parameters())
    master = PRECISION_OF[weight.dtype]
    precisions = precisions or available_precisions(weight.dtype, weight.device, allow_reference_fp8)
    if master not in precisions:
        precisions = (master, *precisions)
    native, reason = fp8_hardware_support(str(weight.device))
    state = PrecisionState(master=master, current=master, use_scaled_mm=native)
    handle = AdaptivePrecisionHandle(model, state, tuple(precisions), fp8_native=native,
                                     fp8_reason=reason)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if (isinstance(child, nn.Linear) and full.startswith("model.layers.")
                    and ".indexer." not in f"{full}."):
                adaptive = AdaptiveLinear(child, state, handle.precisions, fp8_block)
                setattr(module, child_name, adaptive)
                handle.layers.append(adaptive)
    log.info("adaptive precision on %d linear layers: %s (fp8: %s); copies %.1f MiB",
             len(handle.layers), ",".join(handle.precisions), reason, handle.extra_bytes / 2**20)
    return handle
