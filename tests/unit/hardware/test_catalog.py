"""The knowledge base: size, integrity, plausible magnitudes, and label resolution."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from deepserve.engine.hardware import (
    LABEL_KEYS,
    CatalogError,
    load_catalog,
    normalize_label_value,
    parse_document,
)

pytestmark = pytest.mark.unit

CAT = load_catalog()
GFD, GKE, KARP, AMD = (LABEL_KEYS[k] for k in ("gfd", "gke", "karpenter", "amd"))

# GB/s ranges per memory technology (per device); wide, but they catch unit slips (TB/s, Gbps).
BANDWIDTH_RANGE = {
    "GDDR5": (100, 400), "GDDR5X": (300, 600), "GDDR6": (90, 1000), "GDDR6X": (500, 1100),
    "GDDR7": (400, 1900), "HBM": (300, 2000), "HBM2": (400, 1600), "HBM2e": (700, 3800),
    "HBM3": (1500, 5400), "HBM3e": (4000, 8200), "LPDDR4": (50, 200), "LPDDR4X": (100, 600),
    "LPDDR5": (100, 700), "LPDDR5X": (200, 600), "DDR4": (20, 100), "SRAM": (10000, 100000),
}
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def test_catalog_has_at_least_200_accelerators_across_vendors() -> None:
    assert len(CAT) >= 200
    vendors = {a.vendor for a in CAT}
    assert {"nvidia", "amd", "intel", "google", "aws", "huawei"} <= vendors


def test_ids_are_unique_and_slug_shaped() -> None:
    ids = [a.id for a in CAT]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids)


def test_shared_labels_are_only_memory_variants_told_apart_by_memory() -> None:
    seen: dict[tuple[str, str], list] = defaultdict(list)
    for acc in CAT:
        for key, values in acc.labels.items():
            for v in values:
                seen[(key, normalize_label_value(v))].append(acc)
    for (key, value), accs in seen.items():
        if len(accs) > 1:
            mems = sorted(a.memory_gib for a in accs)
            assert all(b > a * 1.25 for a, b in itertools.pairwise(mems)), (key, value)
            for a in accs:  # each variant resolves with its own memory hint
                assert CAT.by_label(key, value, int(a.memory_gib * 1024)) is a
            assert CAT.by_label(key, value) is None  # ambiguous without a hint: not guessed


def test_label_values_are_valid_kubernetes_label_values() -> None:
    for acc in CAT:
        for values in acc.labels.values():
            for v in values:
                assert LABEL_VALUE.match(v), (acc.id, v)


def test_every_row_is_sourced_with_a_vendor_url_and_basis() -> None:
    for acc in CAT:
        assert acc.source.startswith("https://"), acc.id
        assert acc.basis in {"datasheet", "derived", "estimate"}
        if acc.tdp_w == 0:
            assert "not published" in acc.notes, acc.id


def test_magnitudes_are_plausible() -> None:
    for a in CAT:
        lo, hi = BANDWIDTH_RANGE[a.memory_type]
        assert lo <= a.bandwidth_gbs <= hi, (a.id, a.memory_type, a.bandwidth_gbs)
        assert 0.1 <= a.memory_gib <= 300, a.id
        assert 2014 <= a.year <= 2026, a.id
        assert 0 <= a.interconnect_gbs <= 2500, a.id
        assert a.tdp_w == 0 or 30 <= a.tdp_w <= 1500, a.id
        assert a.compute_units >= 1, a.id
        assert a.tflops and all(0.5 <= v <= 20000 for v in a.tflops.values()), a.id


def test_precision_ordering_holds_where_supported() -> None:
    for a in CAT:
        t = a.tflops
        if "fp8" in t and "bf16" in t:
            assert t["fp8"] >= t["bf16"], a.id
        if "fp4" in t and "fp8" in t:
            assert t["fp4"] >= t["fp8"], a.id
        if "tf32" in t and "bf16" in t:
            assert t["tf32"] <= t["bf16"], a.id
        if "int8" in t and "fp16" in t:
            assert t["int8"] >= t["fp16"], a.id


def test_known_generations_support_what_their_data_sheets_say() -> None:
    assert not CAT.get("nvidia-a100-sxm4-80gb").supports("fp8")
    assert CAT.get("nvidia-h100-sxm5-80gb").supports("fp8")
    assert CAT.get("nvidia-b200").supports("fp4")
    assert not CAT.get("nvidia-tesla-v100-sxm2-32gb").supports("bf16")
    assert CAT.get("amd-instinct-mi300x").peak_tflops("bf16") == pytest.approx(1307.4)
    with pytest.raises(KeyError, match="fp8"):
        CAT.get("nvidia-tesla-t4").peak_tflops("fp8")


@pytest.mark.parametrize(("key", "value", "memory_mib", "expected"), [
    (GFD, "NVIDIA-A100-SXM4-80GB", None, "nvidia-a100-sxm4-80gb"),
    (GFD, "NVIDIA-H100-80GB-HBM3", None, "nvidia-h100-sxm5-80gb"),
    (GFD, "NVIDIA-L4", None, "nvidia-l4"),
    (GFD, "NVIDIA-H200", None, "nvidia-h200-sxm-141gb"),
    (GFD, "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", None, "nvidia-a100-sxm4-40gb"),
    (GFD, "Tesla-T4-SHARED", None, "nvidia-tesla-t4"),
    (GFD, "NVIDIA GeForce RTX 4090", None, "nvidia-geforce-rtx-4090"),
    (GKE, "nvidia-tesla-a100", None, "nvidia-a100-sxm4-40gb"),
    (GKE, "nvidia-h100-80gb", None, "nvidia-h100-sxm5-80gb"),
    (GKE, "nvidia-l4", None, "nvidia-l4"),
    (KARP, "h100", None, "nvidia-h100-sxm5-80gb"),
    (KARP, "l4", None, "nvidia-l4"),
    (KARP, "a10g", None, "nvidia-a10g"),
    (KARP, "a100", 40960, "nvidia-a100-sxm4-40gb"),
    (KARP, "a100", 81920, "nvidia-a100-sxm4-80gb"),
    (AMD, "AMD_Instinct_MI300X_OAM", None, "amd-instinct-mi300x"),
    ("deepserve.io/accelerator", "intel-gaudi3-oam", None, "intel-gaudi3-oam"),
])
def test_cluster_label_strings_resolve(key: str, value: str, memory_mib: int | None,
                                       expected: str) -> None:
    acc = CAT.by_label(key, value, memory_mib)
    assert acc is not None and acc.id == expected


def test_dev_cluster_node_labels_resolve() -> None:
    """The local cluster's simulated pools carry GFD labels plus gpu.memory (MiB)."""
    nodes = {
        "nvidia-a100-sxm4-80gb": {GFD: "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"},
        "nvidia-h100-sxm5-80gb": {GFD: "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"},
        "nvidia-l4": {GFD: "NVIDIA-L4", "nvidia.com/gpu.memory": "23034"},
    }
    for expected, labels in nodes.items():
        acc = CAT.resolve_node_labels(labels)
        assert acc is not None and acc.id == expected
    assert CAT.resolve_node_labels({"kubernetes.io/os": "linux"}) is None
    assert CAT.resolve_node_labels({GFD: "NVIDIA-Imaginary-9000"}) is None


def test_bad_rows_fail_naming_the_file_row_and_field() -> None:
    bad = "accelerators:\n- {id: x, vendor: v, name: X, memory_gib: big}\n"
    with pytest.raises(CatalogError, match=r"f\.yaml row 0 \(x\): field 'memory_gib'"):
        parse_document(bad, "f.yaml")
    with pytest.raises(CatalogError, match="unknown precisions"):
        parse_document("accelerators:\n- {id: y, tflops: {fp7: 1}}\n", "g.yaml")


def test_knowledge_base_imports_no_torch() -> None:
    code = "import sys, deepserve.engine.hardware as h; h.load_catalog(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
