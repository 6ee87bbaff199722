"""Prefill and one-token decode: the two small functions that get compiled on GPU.

``prefill`` runs one prompt into one cache slot; ``decode_step`` advances every slot by
one token with static shapes ([slots] in, [slots, vocab] out), which is what CUDA graphs
(``torch.compile(mode="reduce-overhead")``) need.
"""

from __future__ import annotations

import torch
from deepserve.engine.model.transformer import Transformer


def prefill(model: Transformer, tokens: torch.Tensor, slot: int, start_pos: int = 0) -> torch.Tensor:
    """Write ``tokens`` [T] into cache ``slot`` at ``start_pos``; return last logits [V] (fp32)."""
    device = model.lm_head.weight.device
    positions = torch.arange(start_pos, start_pos + tokens.shape[0], device=device)[None]  # [1, T]
    slots = torch.tensor([slot], device=device)
    logits = model(tokens.to(device)[None], positions, slots)  # [1, T, V]
    return logits[0, -1].float()


def decode_step(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Feed one token per slot: ``tokens``/``positions`` [slots]; return logits [slots, V]."""
    logits = model(tokens[:, None], positions[:, None], None)  # [slots, 1, V]
    return logits[:, 0].float()
