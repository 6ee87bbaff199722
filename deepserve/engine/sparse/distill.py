"""Distil indexers for a dense checkpoint from its own dense attention.

DeepSeek-V3.2's dense warm-up trains the indexer with the KL divergence between the
main attention distribution (summed over heads, renormalised) and the indexer's softmax;
the model is frozen. This does the same, layer by layer in one backward pass: a dense
forward pass records every layer's input and head-averaged attention probabilities,
then only the indexers are trained. Call it before serving: it resizes the KV cache.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from deepserve.engine.model.attention import AttentionBatch, dense_attention
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.sparse.indexer import IndexerConfig
from deepserve.engine.sparse.install import (
    attach_indexers,
    attention_modules,
    capture_input_hook,
    capture_query_latent_hook,
    indexer_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillReport:
    """Outcome of :func:`distill_indexers`: KL at the first and last step, and time."""

    steps: int
    first_kl: float
    last_kl: float
    seconds: float


class _Recorder:
    """An attention function that stores the layer input and head-mean attention probs."""

    def __init__(self) -> None:
        self.pending_x: torch.Tensor | None = None
        self.pending_q_input: torch.Tensor | None = None
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.targets: dict[int, torch.Tensor] = {}

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 batch: AttentionBatch, scale: float, layer: int) -> torch.Tensor:
        assert self.pending_x is not None
        x = self.pending_x
        q_in = x if self.pending_q_input is None else self.pending_q_input
        self.inputs[layer] = (x.detach(), q_in.detach())
        self.pending_x = self.pending_q_input = None
        groups = q.shape[1] // k.shape[1]
        kf = k.float().repeat_interleave(groups, dim=1)
        logits = torch.einsum("bhtd,bhsd->bhts", q.float(), kf) * scale
        probs = logits.masked_fill(~batch.mask, -math.inf).softmax(-1)  # [B, H, T, S]
        self.targets[layer] = probs.mean(dim=1).detach()  # [B, T, S]
        return dense_attention(q, k, v, batch, scale, layer)


def _record(model: Transformer, tokens: torch.Tensor) -> dict[int, _Recorder]:
    """Run a dense forward pass over ``tokens`` [B, T] recording every layer."""
    recorders: dict[int, _Recorder] = {}
    hooks = []
    for module in attention_modules(model):
        rec = recorders[module.layer] = _Recorder()
        module.attention_fn = rec
        hooks.append(module.register_forward_pre_hook(capture_input_hook(rec)))
        if hasattr(module, "q_a_layernorm"):
            norm = module.q_a_layernorm
            assert isinstance(norm, torch.nn.Module)
            hooks.append(norm.register_forward_hook(capture_query_latent_hook(rec)))
    try:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        slots = torch.arange(tokens.shape[0], device=tokens.device)
        with torch.no_grad():
            model(tokens, positions, slots)
    finally:
        for hook in hooks:
            hook.remove()
        for module in attention_modules(model):
            module.attention_fn = dense_attention
    return recorders


def indexer_kl(model: Transformer, recorders: dict[int, _Recorder],
               positions: torch.Tensor) -> torch.Tensor:
    """Mean KL(dense attention || indexer softmax) over layers and queries."""
    assert model.rope_cos is not None and model.rope_sin is not None
    cos, sin = model.rope_cos[positions].float(), model.rope_sin[positions].float()
    seqlen = positions.shape[1]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool, device=positions.device).tril()
    losses = []
    for module in attention_modules(model):
        indexer = indexer_of(module)
        assert indexer is not None
        x, q_in = recorders[module.layer].inputs[module.layer]
        target = recorders[module.layer].targets[module.layer][..., :seqlen]  # [B, T, T]
        keys = indexer.keys(x, cos.to(x.dtype), sin.to(x.dtype))
        scores = indexer.scores(x, q_in, keys, cos.to(x.dtype), sin.to(x.dtype))
        log_p = scores.masked_fill(~causal, -math.inf).log_softmax(-1)
        kl = target * (target.clamp_min(1e-12).log() - log_p.masked_fill(~causal, 0.0))
        losses.append(kl.sum(-1).mean())
    return torch.stack(losses).mean()


def distill_indexers(model: Transformer, batches: Iterable[torch.Tensor],
                     config: IndexerConfig | None = None, lr: float = 3e-3,
                     max_seconds: float | None = None) -> DistillReport:
    """Train every layer's indexer on ``batches`` (token ids [B, T]) against dense attention.

    The model's own weights are frozen. Returns a :class:`DistillReport`; stops early
    after ``max_seconds``. Leaves the model with dense attention and fresh caches of
    the last batch's shape (re-run ``setup_caches`` before serving).
    """
    attach_indexers(model, config)
    params = [p for m in attention_modules(model) for p in indexer_of(m).parameters()]  # type: ignore[union-attr]
    frozen = [p for p in model.parameters() if all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    start, steps, first, last = time.monotonic(), 0, math.nan, math.nan
    shape: tuple[int, int] | None = None
    try:
        for tokens in batches:
            if shape != tuple(tokens.shape):
                shape = (int(tokens.shape[0]), int(tokens.shape[1]))
                model.setup_caches(shape[0], shape[1])
            recorders = _record(model, tokens)
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
            loss = indexer_kl(model, recorders, positions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            last = float(loss.detach())
            first = last if steps == 1 else first
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                break
    finally:
        for p in params:
            p.requires_grad_(False)
    report = DistillReport(steps, first, last, time.monotonic() - start)
    log.info("distilled indexers: %d steps, KL %.4f -> %.4f in %.1fs", steps, first, last,
             report.seconds)
    return report


def attention_recall(model: Transformer, tokens: torch.Tensor, top_k: int, sinks: int,
                     local_window: int) -> float:
    """Share of dense attention mass that the indexer's selection keeps (1.0 = lossless).

    Runs ``tokens`` [B, T] densely, selects per query as sparse attention would, and
    averages over layers, heads and queries the probability mass on selected tokens.
    Resizes the KV cache to ``tokens``' shape.
    """
    from deepserve.engine.sparse.attention import select_tokens

    attach_indexers(model)
    bsz, seqlen = int(tokens.shape[0]), int(tokens.shape[1])
    model.setup_caches(bsz, seqlen)
    recorders = _record(model, tokens)
    positions = torch.arange(seqlen, device=tokens.device).expand(bsz, -1)
    assert model.rope_cos is not None and model.rope_sin is not None
    cos, sin = model.rope_cos[positions], model.rope_sin[positions]
    valid = torch.ones(seqlen, seqlen, dtype=torch.bool, device=tokens.device).tril().expand(bsz, -1, -1)
    kept = []
    with torch.no_grad():
        for module in attention_modules(model):
            indexer = indexer_of(module)
            assert indexer is not None
            x, q_in = recorders[module.layer].inputs[module.layer]
            scores = indexer.scores(x, q_in, indexer.keys(x, cos, sin), cos, sin)
            index, chosen = select_tokens(scores, valid, positions, top_k, sinks, local_window)
            probs = recorders[module.layer].targets[module.layer][..., :seqlen]  # [B, T, T]
            kept.append((probs.gather(-1, index) * chosen).sum(-1).mean())
    return float(torch.stack(kept).mean())
