"""Adaptive precision scheduling (APS) and fp8 weights with scaled matmuls."""

from deepserve.engine.precision.adaptive import (
    AdaptiveLinear,
    AdaptivePrecisionHandle,
    PrecisionState,
    apply_adaptive_precision,
    available_precisions,
)
from deepserve.engine.precision.fp8 import (
    Fp8Weight,
    fp8_hardware_support,
    fp8_linear,
    fp8_linear_reference,
    quantize_activation,
    quantize_weight,
)
from deepserve.engine.precision.scheduler import (
    Calibration,
    PrecisionChoice,
    PrecisionScheduler,
    embedding_outlier_signal,
    relative_error,
)

__all__ = [
    "AdaptiveLinear",
    "AdaptivePrecisionHandle",
    "Calibration",
    "Fp8Weight",
    "PrecisionChoice",
    "PrecisionScheduler",
    "PrecisionState",
    "apply_adaptive_precision",
    "available_precisions",
    "embedding_outlier_signal",
    "fp8_hardware_support",
    "fp8_linear",
    "fp8_linear_reference",
    "quantize_activation",
    "quantize_weight",
    "relative_error",
]
