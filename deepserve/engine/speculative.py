"""Speculative decoding with a draft model: k cheap guesses, one target pass to check them.

Each engine step, for every decoding sequence, a small draft model (same tokenizer, its own
static KV cache with the same slots) proposes ``k`` tokens autoregressively; the target model
then runs once over ``[last, d1 .. dk]`` at positions ``p .. p+k`` and yields k+1 next-token
distributions. Greedy rows keep the draft tokens while they equal the target's argmax and
add the target's token at the first difference (or a bonus token when all k match), so the
output is the target's own greedy output. Sampled rows use speculative rejection sampling
(Leviathan et al., arXiv:2211.17192; Chen et al., arXiv:2302.01318): draft token d_i ~ q_i
is kept with probability min(1, p_i(d_i) / q_i(d_i)); the first rejected one is replaced by a
sample from norm(max(0, p_i - q_i)); when all are kept a bonus token comes from p_{k+1}. The
emitted tokens are then distributed exactly as sampling the target alone (p and q are both
the request's temperature/top-k/top-p transform of the logits). Grammar-constrained rows
(``response_format``) take only the first, masked, target distribution (no guesses).

Cache rows past the accepted tokens hold rejected guesses; attention reads only rows up to a
query's own position and the next round writes from the first unaccepted position on, so
they are overwritten before anything reads them. Both caches get ``k + 1`` spare rows so a
guess never writes past the end. The draft feeds ``[token at p-1, last]`` first (a two-token
pass): that rewrites the one row a fully accepted round never fed it, so no bookkeeping of
draft positions is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from deepserve.engine.model.transformer import Transformer
from deepserve.engine.sampling import SamplingParams, filter_logits


class SpeculativeSequence(Protocol):
    """What a round needs of one running sequence (the runtime's ``_Sequence``)."""

    prompt_ids: list[int]
    output_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    next_pos: int
    last_token: int


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The request's sampling distribution over the vocabulary for ``logits`` [V]."""
    scaled = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    return torch.softmax(scaled, dim=-1)


def accept_greedy(target_logits: torch.Tensor, draft_tokens: list[int]) -> list[int]:
    """Greedy verification: the target's argmax tokens up to and including the first
    one that differs from the draft's guess (``target_logits`` [k+1, V])."""
    best = target_logits.argmax(dim=-1).tolist()
    out = []
    for i, token in enumerate(best):
        out.append(int(token))
        if i >= len(draft_tokens) or draft_tokens[i] != token:
            break
    return out


def accept_sampled(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: list[int],
                   generator: torch.Generator | None) -> list[int]:
    """Speculative rejection sampling (``target_probs`` [k+1, V], ``draft_probs`` [k, V],
    ``draft_tokens`` drawn from ``draft_probs``): 1..k+1 tokens distributed as the target's."""
    k = len(draft_tokens)
    u = torch.rand(k, generator=generator, device=target_probs.device).tolist() if k else []
    out: list[int] = []
    for i, token in enumerate(draft_tokens):
        p, q = float(target_probs[i, token]), float(draft_probs[i, token])
        if q > 0 and u[i] * q <= p:  # u < p/q, without dividing
            out.append(token)
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp(min=0)
        total = float(residual.sum())
        dist = residual / total if total > 0 else target_probs[i]
        out.append(int(torch.multinomial(dist, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(target_probs[k], 1, generator=generator)))
    return out


@dataclass
class SpeculativeStats:
    """Counters: rounds, draft tokens proposed and accepted, tokens emitted."""

    rows: int = 0  # (sequence, round) pairs that used the draft
    proposed: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 before any round)."""
        return self.accepted / self.proposed if self.proposed else 0.0


class SpeculativeDecoder:
    """A draft model with a static cache beside the target's; one round per engine step."""

    def __init__(self, draft: Transformer, num_tokens: int) -> None:
        if num_tokens < 1:
            raise ValueError(f"speculative_tokens: must be >= 1, got {num_tokens}")
        self.draft, self.k = draft, num_tokens
        self.stats = SpeculativeStats()

    @property
    def extra_rows(self) -> int:
        """Spare cache rows the target and the draft need past the longest sequence."""
        return self.k + 1

    def setup(self, slots: int, max_seq_len: int, target_vocab: int) -> None:
        """Allocate the draft's cache (``slots`` x ``max_seq_len`` + spare rows)."""
        if self.draft.args.vocab_size != target_vocab:
            raise ValueError(f"speculative_model: its vocabulary ({self.draft.args.vocab_size}) "
                             f"is not the target's ({target_vocab}); it must share the tokenizer")
        self.draft.setup_caches(slots, max_seq_len + self.extra_rows)

    @property
    def device(self) -> torch.device:
        return self.draft.lm_head.weight.device

    def prefill(self, slot: int, prompt_ids: list[int]) -> None:
        """Write a whole prompt into the draft's cache ``slot``."""
        device = self.device
        tokens = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None]
        positions = torch.arange(len(prompt_ids), device=device)[None]
        last = torch.tensor([len(prompt_ids) - 1], device=device)
        self.draft(tokens, positions, torch.tensor([slot], device=device), last=last, fresh=True)

    def propose(self, width: int, rows: Mapping[int, SpeculativeSequence],
                pad_positions: Mapping[int, int]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """k draft tokens for every slot in ``rows`` (slots 0..width-1 run; others pad at
        ``pad_positions``, else 0). Returns tokens [width, k] and, per step, the draft's
        sampling probabilities [width, V] (None for a step where every row is greedy)."""
        device = self.device
        prev = torch.zeros(width, dtype=torch.long)
        last = torch.zeros(width, dtype=torch.long)
        pos = torch.tensor([pad_positions.get(s, 0) for s in range(width)], dtype=torch.long)
        for slot, seq in rows.items():
            history = seq.prompt_ids + seq.output_ids  # the last one is seq.last_token
            prev[slot], last[slot], pos[slot] = history[-2], seq.last_token, seq.next_pos
        pos = pos.clamp(min=1)  # padding rows at position 0 would need a row -1
        tokens = torch.stack([prev, last], dim=1).to(device)  # [W, 2]
        positions = torch.stack([pos - 1, pos], dim=1).to(device)
        logits = self.draft(tokens, positions, None)[:, -1].float()  # [W, V]
        guesses, probs = [], []
        for step in range(self.k):
            token, p = self._pick(logits, rows)
            guesses.append(token)
            probs.append(p)
            if step + 1 < self.k:
                logits = self.draft(token.to(device)[:, None], (positions[:, -1] + step + 1)[:, None],
                                    None)[:, 0].float()
        return torch.stack(guesses, dim=1), probs

    def _pick(self, logits: torch.Tensor, rows: Mapping[int, SpeculativeSequence]
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        token = logits.argmax(dim=-1).cpu()
        sampled = {s: seq for s, seq in rows.items() if not seq.params.greedy}
        if not sampled:
            return token, None
        probs = torch.zeros_like(logits)
        for slot, seq in sampled.items():
            probs[slot] = probabilities(logits[slot], seq.params)
            token[slot] = int(torch.multinomial(probs[slot], 1, generator=seq.generator))
        return token, probs

    def verify(self, target_logits: torch.Tensor, guesses: torch.Tensor,
               draft_probs: list[torch.Tensor | None], slot: int,
               seq: SpeculativeSequence) -> list[int]:
        """The tokens row ``slot`` emits this round (``target_logits`` [k+1, V])."""
        draft_tokens = [int(t) for t in guesses[slot]]
        if seq.params.greedy:
            out = accept_greedy(target_logits, draft_tokens)
        else:
            target = torch.stack([probabilities(row, seq.params) for row in target_logits])
            q = torch.stack([p[slot] for p in draft_probs if p is not None])
            out = accept_sampled(target, q, draft_tokens, seq.generator)
        self.stats.rows += 1
        self.stats.proposed += len(draft_tokens)
        self.stats.accepted += len(out) - 1
        return out


def speculative_round(spec: SpeculativeDecoder, target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      width: int, rows: Mapping[int, SpeculativeSequence], guessing: set[int],
                      pad_positions: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor,
                                                                 list[torch.Tensor | None]]:
    """Propose with the draft, then run the target once over ``[last, guesses]``.

    ``target(tokens [W, k+1], positions [W, k+1])`` returns logits [W, k+1, V]. Rows not in
    ``guessing`` (grammar-constrained) feed their guesses too but use only the first
    distribution. Returns (target logits, guesses [W, k], draft probabilities per step).
    """
    guesses, probs = spec.propose(width, rows, pad_positions)
    tokens = torch.zeros(width, spec.k + 1, dtype=torch.long)
    start = torch.tensor([pad_positions.get(s, 0) for s in range(width)], dtype=torch.long)
    for slot, seq in rows.items():
        tokens[slot, 0], start[slot] = seq.last_token, seq.next_pos
        if slot in guessing:
            tokens[slot, 1:] = guesses[slot]
    positions = start[:, None] + torch.arange(spec.k + 1)[None]
    return target(tokens, positions), guesses, probs
