"""Install sparse attention into a built model through the attention seam, and load indexers.

The model code knows nothing of this: each attention module gets a ``LightningIndexer``
submodule (``self_attn.indexer``, the DeepSeek-V3.2 tensor names), a forward pre-hook
that hands the layer input to the indexer, and a :class:`SparseAttention` as its
``attention_fn``. :meth:`SparseAttentionHandle.remove` restores dense attention.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.hooks import RemovableHandle

from deepserve.engine.model.attention import (
    GroupedQueryAttention,
    MultiHeadLatentAttention,
    dense_attention,
)
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import SparseAttentionOptions
from deepserve.engine.sparse.attention import PassState, SparseAttention, SparseCounters
from deepserve.engine.sparse.indexer import IndexerConfig, LightningIndexer

log = logging.getLogger(__name__)

INDEXER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.self_attn\.indexer\.")
Attention: TypeAlias = GroupedQueryAttention | MultiHeadLatentAttention


@dataclass
class SparseAttentionHandle:
    """What :func:`apply_sparse_attention` installed: per-layer functions, counters, hooks."""

    model: Transformer
    options: SparseAttentionOptions
    counters: SparseCounters
    functions: dict[int, SparseAttention] = field(default_factory=dict)
    hooks: list[RemovableHandle] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        """Counters as numbers (see :class:`SparseCounters`)."""
        return self.counters.as_dict()

    def set_force_select(self, value: bool) -> None:
        """Run the selection path even when the budget covers the context (for tests)."""
        for fn in self.functions.values():
            fn.force_select = value

    def set_sync_free(self, value: bool) -> None:
        """No host sync per pass (CUDA-graph capturable); see :class:`SparseAttention`."""
        for fn in self.functions.values():
            fn.sync_free = value

    def remove(self) -> None:
        """Restore dense attention and drop the hooks (indexer weights stay on the model)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        for module in attention_modules(self.model):
            module.attention_fn = dense_attention
        self.functions.clear()


def attention_modules(model: nn.Module) -> list[Attention]:
    """Every attention module of ``model`` in layer order."""
    return [m for m in model.modules() if isinstance(m, GroupedQueryAttention | MultiHeadLatentAttention)]


def indexer_of(module: nn.Module) -> LightningIndexer | None:
    """The indexer attached to an attention module, if any."""
    indexer = getattr(module, "indexer", None)
    return indexer if isinstance(indexer, LightningIndexer) else None


def attach_indexers(model: Transformer, config: IndexerConfig | None = None,
                    seed: int = 0) -> IndexerConfig:
    """Give every attention module an indexer (seeded random init) unless it has one.

    Returns the config in use. Random indexers select poorly: load trained weights
    (:func:`load_indexer_weights`) or distil them (:mod:`deepserve.engine.sparse.distill`).
    """
    config = config or IndexerConfig.for_model(model.args)
    weight = model.lm_head.weight
    gen = torch.Generator().manual_seed(seed)
    for module in attention_modules(model):
        if indexer_of(module) is not None:
            continue
        indexer = LightningIndexer(model.args, config)
        with torch.no_grad():
            for p in indexer.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
        module.indexer = indexer.to(device=weight.device, dtype=weight.dtype)
    return config


def allocate_indexer_caches(model: Transformer) -> None:
    """Size every indexer key cache like the model's KV cache (after ``setup_caches``)."""
    for module in attention_modules(model):
        indexer = indexer_of(module)
        if indexer is None:
            continue
        cache = indexer.cache
        if cache is None or tuple(cache.k_cache.shape[:3]) != (model.cache_slots, 1, model.max_seq_len):
            indexer.allocate(model.cache_slots, model.max_seq_len)


def apply_sparse_attention(model: Transformer, options: SparseAttentionOptions,
                           config: IndexerConfig | None = None,
                           layers: set[int] | None = None) -> SparseAttentionHandle:
    """Switch ``model`` (all layers, or ``layers``) to indexer-gated sparse attention.

    Indexers already attached (loaded or distilled) are kept; missing ones are created.
    Indexer caches follow the model's KV cache: they are (re)allocated whenever
    ``setup_caches`` changed its size. Returns the handle with counters and ``remove()``.
    """
    attach_indexers(model, config)
    handle = SparseAttentionHandle(model, options, SparseCounters())
    shared = PassState()  # per-pass context, counts and selection bias, shared by layers
    for module in attention_modules(model):
        if layers is not None and module.layer not in layers:
            continue
        indexer = indexer_of(module)
        assert indexer is not None
        fn = SparseAttention(indexer, options.top_k, options.sinks, options.local_window,
                             handle.counters, shared=shared)
        handle.functions[module.layer] = fn
        module.attention_fn = fn
        handle.hooks.append(module.register_forward_pre_hook(capture_input_hook(fn)))
        if isinstance(module, MultiHeadLatentAttention) and hasattr(module, "q_a_layernorm"):
            handle.hooks.append(module.q_a_layernorm.register_forward_hook(capture_query_latent_hook(fn)))
    handle.hooks.append(model.register_forward_pre_hook(
        lambda mod, args: allocate_indexer_caches(model)))
    if model.max_seq_len:
        allocate_indexer_caches(model)
    log.info("sparse attention on %d layers: top_k=%d sinks=%d local_window=%d",
             len(handle.functions), options.top_k, options.sinks, options.local_window)
    return handle


class InputSink(Protocol):
    """Where the capture hooks put a layer's input and (MLA) query latent."""

    pending_x: torch.Tensor | None
    pending_q_input: torch.Tensor | None


def capture_input_hook(sink: InputSink) -> Any:
    """A forward pre-hook on an attention module that hands its input to ``sink``."""
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        sink.pending_x = args[0]
    return hook


def capture_query_latent_hook(sink: InputSink) -> Any:
    """A forward hook on MLA's ``q_a_layernorm`` that hands the query latent to ``sink``."""
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        sink.pending_q_input = output
    return hook


def indexer_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Indexer tensors under their checkpoint names (``model.layers.N.self_attn.indexer.*``)."""
    return {name: t for name, t in model.state_dict().items() if INDEXER_TENSOR.match(name)}


def load_indexer_weights(model: Transformer, model_dir: str | Path,
                         hf_config: dict[str, Any] | None = None) -> int:
    """Load DeepSeek-V3.2-style indexer tensors from ``model_dir``'s safetensors files.

    Reads only ``model.layers.N.self_attn.indexer.*`` (memory-mapped); the indexer
    shape comes from ``index_n_heads``/``index_head_dim`` in ``hf_config``. Returns the
    number of layers loaded (0 when the checkpoint has no indexer). Raises ``ValueError``
    when some layers carry an indexer and others do not, or shapes disagree.
    """
    found: dict[int, dict[str, torch.Tensor]] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                match = INDEXER_TENSOR.match(name)
                if match and int(match.group(1)) < model.args.num_layers:
                    found.setdefault(int(match.group(1)), {})[name[match.end():]] = f.get_tensor(name)
    if not found:
        return 0
    if len(found) != model.args.num_layers:
        raise ValueError(f"{model_dir}: indexer tensors for {len(found)} of "
                         f"{model.args.num_layers} layers")
    config = IndexerConfig.for_model(model.args, hf_config or _head_config(found[0]))
    attach_indexers(model, config)
    weight = model.lm_head.weight
    for module in attention_modules(model):
        indexer = indexer_of(module)
        assert indexer is not None
        state = {k: v.to(device=weight.device, dtype=weight.dtype) for k, v in found[module.layer].items()}
        try:
            indexer.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"layer {module.layer} indexer: {exc}") from exc
    log.info("loaded indexer weights for %d layers from %s", len(found), model_dir)
    return len(found)


def _head_config(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    head_dim = int(tensors["wk.weight"].shape[0])
    return {"index_head_dim": head_dim, "index_n_heads": int(tensors["weights_proj.weight"].shape[0])}
