"""Hierarchical attention gating (HAG): an indexer picks the tokens attention reads.

See ``docs/engine-features.md`` for the design (DeepSeek-V3.2 DSA-style lightning indexer
with attention sinks and a local window, versus NSA's three branches).
"""

from deepserve.engine.sparse.attention import (
    SparseAttention,
    SparseCounters,
    gathered_attention,
    select_tokens,
)
from deepserve.engine.sparse.indexer import IndexerConfig, IndexerKeyCache, LightningIndexer
from deepserve.engine.sparse.install import (
    SparseAttentionHandle,
    allocate_indexer_caches,
    apply_sparse_attention,
    attach_indexers,
    indexer_state_dict,
    load_indexer_weights,
)

__all__ = [
    "IndexerConfig",
    "IndexerKeyCache",
    "LightningIndexer",
    "SparseAttention",
    "SparseAttentionHandle",
    "SparseCounters",
    "allocate_indexer_caches",
    "apply_sparse_attention",
    "attach_indexers",
    "gathered_attention",
    "indexer_state_dict",
    "load_indexer_weights",
    "select_tokens",
]
