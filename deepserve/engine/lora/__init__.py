"""LoRA adapters served on one base model (issue #19.5).

- :mod:`.layers`: :func:`install_lora` wraps the projections; many adapters in one pass
  (grouped per adapter, or gathered per row for static shapes);
- :mod:`.adapters`: the PEFT format on disk, ``builtin://tiny-lora-<seed>``;
- :mod:`.pool`: :class:`AdapterPool`, resident slots loaded on first use, evicted LRU.

:func:`install_adapters` puts them together for :class:`~deepserve.engine.options.EngineOptions`.
"""

from __future__ import annotations

from torch import nn

from deepserve.engine.lora.adapters import (
    AdapterError,
    AdapterWeights,
    make_tiny_adapter,
    read_adapter,
    resolve_adapter_dir,
    write_adapter,
)
from deepserve.engine.lora.layers import LoraLinear, LoraState, install_lora
from deepserve.engine.lora.pool import AdapterPool
from deepserve.engine.options import EngineOptions

__all__ = ["AdapterError", "AdapterPool", "AdapterWeights", "LoraLinear", "LoraState",
           "install_adapters", "install_lora", "make_tiny_adapter", "read_adapter",
           "resolve_adapter_dir", "write_adapter"]


def install_adapters(model: nn.Module, options: EngineOptions, rows: int,
                     static_shapes: bool = False) -> AdapterPool:
    """Wrap ``model`` for ``options.adapters`` and return the (empty) pool that loads them.

    ``rows`` is the most rows one pass has (the cache slots); ``static_shapes`` picks the
    per-row gather form, whose shapes do not depend on which adapters a batch uses
    (compiled decode, CUDA graphs). Raises ValueError for options adapters cannot run with.
    """
    if options.tensor_parallel > 1 or options.pipeline_parallel > 1:
        raise ValueError("adapters: not supported with tensor_parallel or pipeline_parallel > 1 yet")
    if options.kv_page_tokens:
        raise ValueError("adapters: not with kv_page_tokens yet (shared prompt blocks are keyed "
                         "by tokens only, and an adapter changes their keys and values)")
    state, targets = install_lora(model, options.max_resident_adapters, options.max_adapter_rank,
                                  rows, "gather" if static_shapes else "segments")
    return AdapterPool(state, targets, {a.name: a for a in options.adapters},
                       options.max_resident_adapters, options.max_adapter_rank, options.model_dir)
