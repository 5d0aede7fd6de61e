"""Embedding-wise Cross-Attention Fusion (ECAF)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttention

__all__ = ["CrossAttentionFusion"]


class CrossAttentionFusion(nn.Module):
    """``Z = CrossAttn(query=LN(r), key=value=LN(S W_s))``: backbone tokens attend to spectral tokens.

    The backbone is not modified; the caller adds ``Z`` to ``r`` through a :class:`ZeroGate`.

    Args:
        embed_dim: backbone token size ``d`` (must be divisible by ``num_heads``).
        context_dim: spectral token size ``d_s``.
        num_heads: attention heads.
        dropout: attention dropout.

    Shapes: ``tokens (B, L, d)``, ``context (B, K, d_s)`` -> ``(B, L, d)``.
    """

    def __init__(self, embed_dim: int, context_dim: int, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}).")
        self.norm_tokens = nn.LayerNorm(embed_dim)
        self.context_proj = nn.Linear(context_dim, embed_dim)
        self.norm_context = nn.LayerNorm(embed_dim)
        self.attn = CrossAttention(embed_dim, num_heads, dropout_rate=dropout)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm_tokens(tokens), context=self.norm_context(self.context_proj(context)))
