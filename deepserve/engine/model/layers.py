"""Feed-forward building blocks: RMSNorm, gated MLP and DeepSeek's mixture of experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepserve.engine.model.args import ModelArgs


def stack_linears(parts: list[nn.Module | None]) -> nn.Linear | None:
    """One ``nn.Linear`` computing ``parts`` side by side (outputs concatenated), or None."""
    if not parts or any(type(p) is not nn.Linear for p in parts):
        return None
    linears = [p for p in parts if isinstance(p, nn.Linear)]
    first = linears[0]
    has_bias = first.bias is not None
    if any((p.bias is not None) != has_bias or p.in_features != first.in_features for p in linears):
        return None
    grad = first.weight.requires_grad
    fused = nn.Linear(first.in_features, sum(p.out_features for p in linears), bias=has_bias,
                      device="meta")
    with torch.no_grad():  # allocate only the stacked copy, on the weights' device
        fused.weight = nn.Parameter(torch.cat([p.weight for p in linears]), requires_grad=grad)
        if has_bias:
            fused.bias = nn.Parameter(torch.cat([p.bias for p in linears if p.bias is not None]),
                                      requires_grad=grad)
    return fused


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 like the reference models."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.gate_up_proj: nn.Linear | None = None  # set by fuse_projections()

    def fuse_projections(self) -> bool:
        """Stack gate and up projections into one ``gate_up_proj`` (see :func:`stack_linears`)."""
        self.gate_up_proj = stack_linears([getattr(self, "gate_proj", None), getattr(self, "up_proj", None)])
        if self.gate_up_proj is None:
            return False
        del self.gate_proj, self.up_proj
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TopKRouter(nn.Module):
    """DeepSeek-V3 router: sigmoid scores, bias-corrected group-limited top-k selection."""

    e_score_correction_bias: torch.Tensor

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.experts, self.top_k = args.n_routed_experts, args.num_experts_per_tok
        self.n_group, self.topk_group = args.n_group, args.topk_group
        self.norm_topk_prob, self.scaling = args.norm_topk_prob, args.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.experts, args.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(weights [N, k], expert indices [N, k])`` for tokens ``x`` [N, D]."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # [N, E]
        choice = scores + self.e_score_correction_bias.float()
        per_group = choice.view(-1, self.n_group, self.experts // self.n_group)
        group_scores = per_group.topk(min(2, per_group.shape[-1]), dim=-1)[0].sum(dim=-1)
        groups = group_scores.topk(self.topk_group, dim=-1, sorted=False)[1]  # [N, topk_group]
        group_mask = torch.zeros_like(group_scores).scatter_(1, groups, 1.0).bool()
        expert_mask = group_mask.unsqueeze(-1).expand_as(per_group).reshape(-1, self.experts)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
        indices = choice.topk(self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scaling, indices


class MixtureOfExperts(nn.Module):
    """Shared experts for every token plus top-k routed experts (DeepSeekMoE)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        dim, hidden = args.hidden_size, args.moe_intermediate_size
        self.gate = TopKRouter(args)
        self.experts = nn.ModuleList(GatedMLP(dim, hidden) for _ in range(args.n_routed_experts))
        self.shared_experts = GatedMLP(dim, hidden * args.n_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # x: [B, T, D]
        flat = x.reshape(-1, shape[-1])  # [N, D]
        weights, indices = self.gate(flat)  # [N, k]
        routed = torch.zeros_like(flat)
        # Only experts that received tokens run; grouped GEMMs can replace this loop later.
        for expert in indices.unique().tolist():
            token, slot = torch.where(indices == expert)
            out = self.experts[expert](flat[token]) * weights[token, slot, None].to(flat.dtype)
            routed.index_add_(0, token, out)
        return (routed + self.shared_experts(flat)).view(shape)
