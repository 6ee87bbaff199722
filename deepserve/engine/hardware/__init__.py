"""Accelerator knowledge base: 200+ devices with data-sheet figures and cluster label names.

Imports no torch. Use :func:`load_catalog` and look devices up by id or by node label::

    cat = load_catalog()
    h100 = cat.by_label("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")
    h100.supports("fp8")  # True
"""

from deepserve.engine.hardware.catalog import (
    DEEPSERVE_LABEL,
    LABEL_KEYS,
    PRECISIONS,
    Accelerator,
    Catalog,
    CatalogError,
    load_catalog,
    normalize_label_value,
    parse_document,
)

__all__ = [
    "DEEPSERVE_LABEL",
    "LABEL_KEYS",
    "PRECISIONS",
    "Accelerator",
    "Catalog",
    "CatalogError",
    "load_catalog",
    "normalize_label_value",
    "parse_document",
]
