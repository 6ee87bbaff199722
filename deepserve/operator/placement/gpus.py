"""One GPU accounting: what counts as an accelerator in a pod or node, for every vendor.

Used by discovery (``placement.pools``), pool status (``controller.pools``) and GPU-time
billing (``metering.gputime``), so a GPU counts the same everywhere. Resource names are the
extended resources the vendors' device plugins advertise; NVIDIA MIG slices
(``nvidia.com/mig-1g.5gb``, per the NVIDIA GPU Operator's "mixed" MIG strategy) count as
accelerators of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

GPU_RESOURCES: tuple[str, ...] = (
    "nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "gpu.intel.com/xe", "habana.ai/gaudi",
    "google.com/tpu", "aws.amazon.com/neuron", "huawei.com/Ascend910",
)
"""Extended resources that count whole accelerators (one unit = one catalog device)."""

_VENDOR_RESOURCES: dict[str, str] = {
    "nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu", "google": "google.com/tpu",
    "aws": "aws.amazon.com/neuron", "huawei": "huawei.com/Ascend910",
}


def whole_device_resource(vendor: str, kind: str = "gpu") -> str:
    """The extended resource a vendor's device plugin advertises for one whole device.

    Intel's GPUs are ``gpu.intel.com/i915`` and its Gaudi accelerators ``habana.ai/gaudi``;
    a vendor without a known device plugin gets ``nvidia.com/gpu`` (the most common plugin).
    """
    if vendor == "intel":
        return "gpu.intel.com/i915" if kind == "gpu" else "habana.ai/gaudi"
    return _VENDOR_RESOURCES.get(vendor, "nvidia.com/gpu")


_MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(\d+)g\.(\d+)gb$")
_MIG_LABEL = re.compile(r"-MIG-(\d+)g\.(\d+)gb$", re.IGNORECASE)


def is_gpu_resource(name: str) -> bool:
    """True for a whole-device vendor resource or an NVIDIA MIG slice resource."""
    return name in GPU_RESOURCES or _MIG_RESOURCE.match(name) is not None


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def gpu_quantity(resources: Mapping[str, Any] | None) -> tuple[str, int]:
    """The first accelerator resource in ``resources`` and its count; ``("", 0)`` if none.

    Whole-device resources are checked before MIG slices, so a node advertising both reports
    its whole devices.
    """
    if not resources:
        return "", 0
    for key in GPU_RESOURCES:
        if key in resources:
            return key, _quantity(resources[key])
    for key in sorted(resources):
        if _MIG_RESOURCE.match(key):
            return key, _quantity(resources[key])
    return "", 0


def container_gpus(container: Mapping[str, Any]) -> int:
    """Accelerators one container holds: its limits, else its requests."""
    res = container.get("resources") or {}
    return max(gpu_quantity(res.get("limits"))[1], gpu_quantity(res.get("requests"))[1])


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds: max(largest init container, sum of app containers), any vendor."""
    spec = pod.get("spec") or {}
    app = sum(container_gpus(c) for c in spec.get("containers") or [])
    init = max((container_gpus(c) for c in spec.get("initContainers") or []), default=0)
    return max(app, init)


def node_gpus(node: Mapping[str, Any]) -> int:
    """Accelerators a node can hold: allocatable, else capacity."""
    status = node.get("status") or {}
    return gpu_quantity(status.get("allocatable") or status.get("capacity"))[1]


MIG_COMPUTE_SLICES = 7
"""Compute slices of a MIG-capable NVIDIA GPU (A100/H100/H200: a ``1g`` profile is 1/7)."""


def mig_profile(name: str) -> str | None:
    """The MIG profile (``1g.5gb``) named by a slice resource or GFD product label, or None."""
    match = _MIG_RESOURCE.match(name) or _MIG_LABEL.search(name)
    return f"{match.group(1)}g.{match.group(2)}gb" if match else None


def mig_compute_fraction(profile: str) -> float:
    """Share of the card's compute a MIG profile gets (``3g.20gb`` -> 3/7)."""
    match = re.match(r"^(\d+)g\.\d+gb$", profile)
    if match is None:
        raise ValueError(f"MIG profile {profile!r}: expected <compute>g.<memory>gb, e.g. 1g.5gb")
    return min(1.0, int(match.group(1)) / MIG_COMPUTE_SLICES)


def mig_slice_memory_gib(name: str) -> int | None:
    """Memory (GB) of a MIG slice named by a resource or GFD product label, or None.

    ``nvidia.com/mig-1g.5gb`` and ``NVIDIA-A100-SXM4-40GB-MIG-1g.5gb`` both give 5: a slice
    is its own accelerator with its own memory, never the whole card's.
    """
    match = _MIG_RESOURCE.match(name) or _MIG_LABEL.search(name)
    return int(match.group(2)) if match else None
