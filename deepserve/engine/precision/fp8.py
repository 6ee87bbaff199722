"""FP8 (E4M3) weights with per-channel or block scales, and the scaled-matmul paths.

Weights are quantised once: per output channel (one float32 scale per row, the layout
``torch._scaled_mm``'s row-wise scaling takes) or per 128x128 block (DeepSeek-V3's fp8
checkpoint layout). Activations are quantised per token at run time. On GPUs whose
knowledge-base entry supports fp8 (and compute capability >= 8.9) the matmul runs on
fp8 tensor cores via ``torch._scaled_mm``; elsewhere a reference path dequantises and
multiplies in float32 — identical numerics up to accumulation order, used on CPU. On GPUs,
activations are quantised by one Triton kernel (``kernels.fp8_gemm.quantize_rows``) and
decode-sized products (at most 16 rows) of per-channel weights use the weight-only fp8 GEMV
(activations stay in 16 bits; half the weight bytes of bf16), since ``torch._scaled_mm`` is
slower than a bf16 GEMV at those sizes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepserve.engine.kernels.fp8_gemm import (
    GEMV_MAX_ROWS,
    fp8_weight_gemv,
    fp8_weight_gemv_supported,
    quantize_rows,
    quantize_rows_supported,
)

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448 for E4M3 (OCP FP8 spec)


@dataclass(frozen=True)
class Fp8Weight:
    """A quantised weight ``[N, K]``: ``data`` fp8 and ``scale`` [N, 1] or [N/b, K/b] float32."""

    data: torch.Tensor
    scale: torch.Tensor
    block: int = 0  # 0: per output channel

    def dequantize(self) -> torch.Tensor:
        """Return the weight in float32."""
        w = self.data.float()
        if not self.block:
            return w * self.scale
        b = self.block
        scale = self.scale.repeat_interleave(b, 0).repeat_interleave(b, 1)
        return w * scale[: w.shape[0], : w.shape[1]]

    @property
    def nbytes(self) -> int:
        """Bytes held (data and scales)."""
        return self.data.numel() * self.data.element_size() + self.scale.numel() * 4


def quantize_weight(weight: torch.Tensor, block: int = 0) -> Fp8Weight:
    """Quantise ``weight`` [N, K] to E4M3 with per-channel (``block=0``) or block scales."""
    w = weight.detach().float()
    if not block:
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / FP8_MAX  # [N, 1]
        return Fp8Weight((w / scale).to(FP8_DTYPE), scale)
    n, k = w.shape
    pad_n, pad_k = -n % block, -k % block
    padded = F.pad(w, (0, pad_k, 0, pad_n))
    tiles = padded.view((n + pad_n) // block, block, (k + pad_k) // block, block)
    scale = tiles.abs().amax(dim=(1, 3)).clamp_min(1e-12) / FP8_MAX  # [N/b, K/b]
    q = (tiles / scale[:, None, :, None]).view_as(padded)[:n, :k]
    return Fp8Weight(q.to(FP8_DTYPE), scale, block)


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` [M, K] per row: ``(fp8 [M, K], scale [M, 1] float32)``."""
    if quantize_rows_supported(x):
        return quantize_rows(x)
    scale = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12) / FP8_MAX
    return (x.float() / scale).to(FP8_DTYPE), scale


def fp8_linear_reference(x: torch.Tensor, weight: Fp8Weight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + b`` with x quantised per token and W in fp8, dequantised to float32."""
    shape = x.shape
    xq, xs = quantize_activation(x.reshape(-1, shape[-1]))
    out = (xq.float() * xs) @ weight.dequantize().t()
    if bias is not None:
        out = out + bias.float()
    return out.view(*shape[:-1], -1).to(x.dtype)


def fp8_linear_scaled_mm(x: torch.Tensor, weight: Fp8Weight,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same product on fp8 tensor cores (``torch._scaled_mm``, row-wise scales).

    Needs a per-channel weight, K and N multiples of 16 and a CUDA device with fp8.
    """
    shape = x.shape
    xq, xs = quantize_activation(x.reshape(-1, shape[-1]))
    out = torch._scaled_mm(xq, weight.data.t(), scale_a=xs, scale_b=weight.scale.t(),
                           bias=None, out_dtype=torch.bfloat16)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.view(*shape[:-1], -1).to(x.dtype)


def scaled_mm_usable(weight: Fp8Weight) -> bool:
    """True when ``weight`` fits ``torch._scaled_mm``'s row-wise layout constraints."""
    n, k = weight.data.shape
    return weight.data.is_cuda and not weight.block and n % 16 == 0 and k % 16 == 0


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None,
               use_scaled_mm: bool = False) -> torch.Tensor:
    """fp8 linear layer: weight-only GEMV for a few rows, tensor-core path when allowed and
    usable, else the reference."""
    rows = x.numel() // x.shape[-1]
    if use_scaled_mm and not weight.block and rows <= GEMV_MAX_ROWS:
        flat = x.reshape(rows, x.shape[-1])
        if fp8_weight_gemv_supported(flat, weight.data):
            out = fp8_weight_gemv(flat, weight.data, weight.scale)
            if bias is not None:
                out = out + bias.to(out.dtype)
            return out.view(*x.shape[:-1], -1)
    if use_scaled_mm and scaled_mm_usable(weight):
        return fp8_linear_scaled_mm(x, weight, bias)
    return fp8_linear_reference(x, weight, bias)


@functools.lru_cache(maxsize=8)
def fp8_hardware_support(device: str) -> tuple[bool, str]:
    """Whether ``device`` runs fp8 matmuls natively, and why (knowledge base + capability).

    The GPU is looked up in ``deepserve.engine.hardware`` by its product name (the
    GPU Feature Discovery label form) and must list an fp8 throughput; the CUDA compute
    capability must be at least 8.9 (Ada/Hopper) for ``torch._scaled_mm``.
    """
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False, f"{dev.type}: no fp8 tensor cores; reference (dequantised) path"
    from deepserve.engine.hardware import load_catalog

    name = torch.cuda.get_device_name(dev)
    memory_mib = torch.cuda.get_device_properties(dev).total_memory // 2**20
    acc = load_catalog().by_label("nvidia.com/gpu.product", name, memory_mib)
    capability = torch.cuda.get_device_capability(dev)
    if acc is None:
        return False, f"{name}: not in the hardware knowledge base"
    if not acc.supports("fp8"):
        return False, f"{acc.id}: no fp8 throughput in the knowledge base"
    if capability < (8, 9) or not hasattr(torch, "_scaled_mm"):
        return False, f"{acc.id}: compute capability {capability} lacks torch._scaled_mm fp8"
    return True, f"{acc.id}: fp8 {acc.peak_tflops('fp8')} TFLOPS dense"
