"""The precision vocabulary shared by the planner, the operator and the engine (no torch).

A *precision policy* is what a user asks for and what the planner hands the engine:
``auto`` (adaptive precision scheduling: the engine loads a master dtype and keeps extra
copies of the decoder's linear weights it may compute in) or one fixed precision. The
engine's copies (see :mod:`deepserve.engine.precision.adaptive`) are decided here, by
:func:`weight_copies`, so the memory model and the engine cannot disagree.
"""

from __future__ import annotations

POLICIES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "fp8")
"""Every ``spec.engine.precision`` / ``EngineOptions.precision`` / placement precision."""

LOAD_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
"""Precisions weights can be loaded in (the master dtype); fp8 exists only as a copy."""

TORCH_DTYPE_NAMES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                                     "fp8": "float8_e4m3fn"}
"""``torch.<name>`` of each precision (the engine builds its dtype map from this)."""

ELEMENT_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
"""Bytes per element of each precision."""

MANTISSA_BITS: dict[str, int] = {"fp32": 23, "fp16": 10, "bf16": 7, "fp8": 3}
"""Explicit mantissa bits (more is more accurate)."""

AUTO_MASTER_ORDER: tuple[str, ...] = ("bf16", "fp16", "fp32")
"""The master dtype ``auto`` loads on a GPU: the first of these the device supports."""


def check_policy(policy: str, field: str = "precision") -> str:
    """Return ``policy`` or raise ValueError naming ``field`` when it is not in :data:`POLICIES`."""
    if policy not in POLICIES:
        raise ValueError(f"{field} must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy


def master_precision(policy: str, device_type: str) -> str:
    """The dtype weights load in: the fixed precision, else bf16 on a GPU and fp32 on CPU."""
    check_policy(policy)
    if policy in LOAD_PRECISIONS:
        return policy
    return "bf16" if device_type == "cuda" else "fp32"


def weight_copies(policy: str, master: str, fp8_native: bool) -> tuple[str, ...]:
    """Precisions the engine holds each decoder linear weight in (the master first).

    ``fp8``: the master plus an fp8 copy. ``auto``: from an fp32 master also fp16 and bf16
    copies (never copies above the master; fp16 copies of bf16 weights may overflow), plus
    fp8 where the hardware runs it natively. A fixed precision holds only itself.
    """
    check_policy(policy)
    if policy == "fp8":
        return (master, "fp8")
    if policy != "auto":
        return (policy,)
    out = ["fp32", "fp16", "bf16"] if master == "fp32" else [master]
    if fp8_native:
        out.append("fp8")
    return tuple(out)


def compute_precision(policy: str, master: str) -> str:
    """The precision the planner rates speed at (``auto`` conservatively at its master)."""
    return "fp8" if policy == "fp8" else master
