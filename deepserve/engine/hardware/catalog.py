"""Typed loader and lookups for the accelerator knowledge base.

The data lives in ``data/*.yaml`` (one file per vendor family), reviewed by people; this
module only parses, validates the types and indexes it. It imports no torch so that the
operator and the CLI can use it on machines without an accelerator stack.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4")
"""Precisions that carry a dense throughput figure in the catalog."""

LABEL_KEYS: dict[str, str] = {
    "gfd": "nvidia.com/gpu.product",
    "gke": "cloud.google.com/gke-accelerator",
    "gke_tpu": "cloud.google.com/gke-tpu-accelerator",
    "karpenter": "karpenter.k8s.aws/instance-gpu-name",
    "karpenter_accelerator": "karpenter.k8s.aws/instance-accelerator-name",
    "amd": "amd.com/gpu.product-name",
}
"""Short names used in the data files -> the Kubernetes node label keys they stand for."""

DEEPSERVE_LABEL = "deepserve.io/accelerator"
"""A node label whose value is a catalog id; it resolves every row, whatever the vendor."""

MEMORY_HINT_LABELS: dict[str, int] = {
    # label key -> multiplier that turns the label value into MiB per device
    "nvidia.com/gpu.memory": 1,
    "karpenter.k8s.aws/instance-gpu-memory": 1,
}
"""Node labels that state per-device memory (MiB); used to split labels shared by variants."""

KINDS = frozenset({"gpu", "tpu", "npu", "lpu", "ipu"})
BASES = frozenset({"datasheet", "derived", "estimate"})

# GFD appends these to gpu.product when MIG or time-slicing is configured.
_GFD_SUFFIX = re.compile(r"(-MIG-.*|-SHARED)$", re.IGNORECASE)


def normalize_label_value(value: str) -> str:
    """Return the comparable form of a label value (case-folded, spaces/underscores -> '-')."""
    value = _GFD_SUFFIX.sub("", value.strip())
    return re.sub(r"[\s_]+", "-", value).lower()


@dataclass(frozen=True)
class Accelerator:
    """One accelerator model as its vendor's data sheet describes it.

    ``tflops`` holds dense (not sparse) peak throughput per precision in TFLOPS (TOPS for
    int8); ``fp32`` is the non-tensor vector peak. Memory is per device in GiB (vendors'
    "GB" for HBM/GDDR capacities are binary sizes), bandwidth in GB/s (10^9 bytes/s),
    interconnect is the per-device intra-node bandwidth (both directions) in GB/s.
    """

    id: str
    vendor: str
    name: str
    kind: str
    memory_gib: float
    memory_type: str
    bandwidth_gbs: float
    tflops: Mapping[str, float]
    compute_units: int
    tdp_w: int
    interconnect_gbs: float
    interconnect: str
    year: int
    source: str
    basis: str = "datasheet"
    notes: str = ""
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def supports(self, precision: str) -> bool:
        """Return True when the device has a dense throughput figure for ``precision``."""
        return self.tflops.get(precision, 0.0) > 0.0

    def peak_tflops(self, precision: str) -> float:
        """Return dense peak TFLOPS for ``precision``; raise KeyError when unsupported."""
        if not self.supports(precision):
            raise KeyError(f"{self.id} has no {precision} throughput")
        return self.tflops[precision]

    @property
    def memory_bytes(self) -> int:
        """Device memory in bytes."""
        return int(self.memory_gib * 2**30)

    def label_values(self, label_key: str) -> tuple[str, ...]:
        """Return the values of the full Kubernetes ``label_key`` that name this device."""
        return self.labels.get(label_key, ())


class CatalogError(ValueError):
    """A data file is malformed; the message names the file, the row and the field."""


def _as_float(row: Mapping[str, Any], name: str, where: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: field {name!r} must be a number, got {value!r}")
    return float(value)


def _as_str(row: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = row.get(name, default)
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def parse_row(row: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> Accelerator:
    """Build an :class:`Accelerator` from one data-file row; raise CatalogError naming the field."""
    merged = {**defaults, **row}
    rid = _as_str(merged, "id", where)
    where = f"{where} ({rid})"
    raw_tflops = merged.get("tflops") or {}
    if not isinstance(raw_tflops, Mapping):
        raise CatalogError(f"{where}: field 'tflops' must be a mapping")
    unknown = set(raw_tflops) - set(PRECISIONS)
    if unknown:
        raise CatalogError(f"{where}: field 'tflops' has unknown precisions {sorted(unknown)}")
    tflops = {p: _as_float(raw_tflops, p, f"{where} tflops") for p in raw_tflops}
    labels: dict[str, tuple[str, ...]] = {}
    for short, values in (merged.get("labels") or {}).items():
        if short not in LABEL_KEYS:
            raise CatalogError(f"{where}: unknown label kind {short!r}; known {sorted(LABEL_KEYS)}")
        if isinstance(values, str):
            values = [values]
        labels[LABEL_KEYS[short]] = tuple(str(v) for v in values)
    labels[DEEPSERVE_LABEL] = (rid,)
    kind = _as_str(merged, "kind", where, "gpu")
    basis = _as_str(merged, "basis", where, "datasheet")
    if kind not in KINDS:
        raise CatalogError(f"{where}: field 'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    if basis not in BASES:
        raise CatalogError(f"{where}: field 'basis' must be one of {sorted(BASES)}, got {basis!r}")
    return Accelerator(
        id=rid,
        vendor=_as_str(merged, "vendor", where),
        name=_as_str(merged, "name", where),
        kind=kind,
        memory_gib=_as_float(merged, "memory_gib", where),
        memory_type=_as_str(merged, "memory_type", where),
        bandwidth_gbs=_as_float(merged, "bandwidth_gbs", where),
        tflops=tflops,
        compute_units=int(_as_float(merged, "compute_units", where)),
        tdp_w=int(_as_float(merged, "tdp_w", where)),
        interconnect_gbs=_as_float(merged, "interconnect_gbs", where),
        interconnect=_as_str(merged, "interconnect", where),
        year=int(_as_float(merged, "year", where)),
        source=_as_str(merged, "source", where),
        basis=basis,
        notes=str(merged.get("notes", "")),
        labels=labels,
    )


class Catalog:
    """An indexed, read-only set of accelerators.

    Iterating yields accelerators in data-file order. Lookups by label compare normalized
    values (case, spaces/underscores, GFD's ``-MIG-*``/``-SHARED`` suffixes ignored).
    """

    def __init__(self, accelerators: list[Accelerator]) -> None:
        self._by_id: dict[str, Accelerator] = {}
        self._by_label: dict[tuple[str, str], list[Accelerator]] = {}
        for acc in accelerators:
            if acc.id in self._by_id:
                raise CatalogError(f"duplicate accelerator id {acc.id!r}")
            self._by_id[acc.id] = acc
            for key, values in acc.labels.items():
                for value in values:
                    self._by_label.setdefault((key, normalize_label_value(value)), []).append(acc)

    def __iter__(self) -> Iterator[Accelerator]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, accelerator_id: object) -> bool:
        return accelerator_id in self._by_id

    def get(self, accelerator_id: str) -> Accelerator:
        """Return the accelerator with this id; raise KeyError naming close ids when unknown."""
        try:
            return self._by_id[accelerator_id]
        except KeyError:
            near = [i for i in self._by_id if accelerator_id.lower() in i][:5]
            raise KeyError(f"unknown accelerator id {accelerator_id!r}; similar: {near}") from None

    def candidates_by_label(self, label_key: str, value: str) -> tuple[Accelerator, ...]:
        """Return every accelerator that ``label_key=value`` may name (variants share labels)."""
        return tuple(self._by_label.get((label_key, normalize_label_value(value)), ()))

    def by_label(
        self, label_key: str, value: str, memory_mib: int | None = None
    ) -> Accelerator | None:
        """Return the accelerator named by ``label_key=value``, or None when unknown/ambiguous.

        When several variants share the label (Karpenter's ``a100`` for 40 and 80 GB), the
        per-device memory in MiB picks the variant whose capacity is nearest (within 12%).
        """
        found = self.candidates_by_label(label_key, value)
        if len(found) == 1:
            return found[0]
        if not found or memory_mib is None:
            return None
        gib = memory_mib / 1024
        best = min(found, key=lambda a: abs(a.memory_gib - gib))
        return best if abs(best.memory_gib - gib) <= 0.12 * best.memory_gib else None

    def resolve_node_labels(self, labels: Mapping[str, str]) -> Accelerator | None:
        """Return the accelerator a node's labels name, trying every known label key."""
        memory_mib: int | None = None
        for key, mult in MEMORY_HINT_LABELS.items():
            raw = labels.get(key, "")
            if raw.isdigit():
                memory_mib = int(raw) * mult
                break
        for key in (DEEPSERVE_LABEL, *LABEL_KEYS.values()):
            if key in labels:
                acc = self.by_label(key, labels[key], memory_mib)
                if acc is not None:
                    return acc
        return None


def _data_files() -> list[Any]:
    root = resources.files("deepserve.engine.hardware").joinpath("data")
    return sorted((p for p in root.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)


def parse_document(text: str, where: str) -> list[Accelerator]:
    """Parse one data file's text: ``{defaults: {...}, accelerators: [rows]}``."""
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, Mapping) or not isinstance(doc.get("accelerators"), list):
        raise CatalogError(f"{where}: expected a mapping with an 'accelerators' list")
    defaults = doc.get("defaults") or {}
    return [
        parse_row(row, defaults, f"{where} row {i}") for i, row in enumerate(doc["accelerators"])
    ]


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """Load and index every data file shipped with the package (cached)."""
    rows: list[Accelerator] = []
    for path in _data_files():
        rows.extend(parse_document(path.read_text(encoding="utf-8"), path.name))
    log.debug("loaded %d accelerators", len(rows))
    return Catalog(rows)
