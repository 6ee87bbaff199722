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
    last = torch.tensor([tokens.shape[0] - 1], device=device)
    logits = model(tokens.to(device)[None], positions, slots, last=last,
                   fresh=start_pos == 0)  # [1, 1, V]
    return logits[0, -1].float()


def prefill_batch(model: Transformer, prompts: list[torch.Tensor], slots: list[int]) -> torch.Tensor:
    """Prefill several fresh prompts (each [T_i]) into ``slots`` in one forward pass.

    Shorter prompts are padded on the right: causal attention keeps padding out of every
    real token's context, and the padding's cache rows lie beyond the prompt, where decode
    overwrites each row before it is ever attended. Returns each prompt's last logits
    [N, V] (fp32), equal to :func:`prefill` one prompt at a time up to matmul rounding.
    """
    device = model.lm_head.weight.device
    longest = max(int(p.shape[0]) for p in prompts)
    tokens = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : prompt.shape[0]] = prompt.to(device)
    positions = torch.arange(longest, device=device)[None].expand(len(prompts), -1)
    last = torch.tensor([int(p.shape[0]) - 1 for p in prompts], device=device)
    logits = model(tokens, positions, torch.tensor(slots, device=device), last=last, fresh=True)
    return logits[:, 0].float()


def prefill_paged(model: Transformer, tokens: torch.Tensor, table: torch.Tensor,
                  start_pos: int = 0) -> torch.Tensor:
    """Write ``tokens`` [T] at ``start_pos`` through a block table [1, blocks] (a paged
    cache); return the last logits [V] (fp32)."""
    device = model.lm_head.weight.device
    positions = torch.arange(start_pos, start_pos + tokens.shape[0], device=device)[None]
    last = torch.tensor([tokens.shape[0] - 1], device=device)
    logits = model(tokens.to(device)[None], positions, None, last=last, fresh=start_pos == 0,
                   block_table=table.to(device))
    return logits[0, -1].float()


def decode_step(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor,
                block_table: torch.Tensor | None = None) -> torch.Tensor:
    """Feed one token per slot: ``tokens``/``positions`` [slots]; return logits [slots, V].

    ``block_table`` [slots, blocks]: the sequences' blocks in a paged cache."""
    if block_table is None:  # the plain call: pipeline stages stand in for the model here
        logits = model(tokens[:, None], positions[:, None], None)  # [slots, 1, V]
    else:
        logits = model(tokens[:, None], positions[:, None], None, block_table=block_table)
    return logits[:, 0].float()
