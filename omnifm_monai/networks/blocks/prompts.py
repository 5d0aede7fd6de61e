"""Prefix-Suffix Spectral Prompts (PSP): global prefix from the fused spectral prior, private suffix."""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttention, TransformerLayer

__all__ = ["PRIVATE_PREFIX", "PrefixSuffixPrompt", "is_private"]

# Parameters whose name contains this tag are site-private: never sent, never overwritten.
PRIVATE_PREFIX = "private_"


def is_private(name: str) -> bool:
    """Whether a parameter/state-dict key is site-private under the project's name rule."""
    return any(part.startswith(PRIVATE_PREFIX) for part in name.split("."))


class PrefixSuffixPrompt(nn.Module):
    """Run ``[prefix(Z) || r || c]`` through shared transformer layers.

    The prefix compresses the fused prior ``Z`` to ``num_prefix_tokens`` tokens by attention pooling with
    learnable queries; the suffix ``c`` is one learnable token per site (``private_suffix``, N(0, 0.02^2)),
    excluded from aggregation by :func:`is_private`; ``num_suffix_tokens`` > 1 gives a site more private capacity
    (their outputs are averaged). Segment-type embeddings mark the three parts.

    Args:
        embed_dim: token size ``d``.
        num_prefix_tokens: prefix length ``m_p``.
        num_layers: shared transformer layers.
        num_heads: attention heads.
        mlp_ratio: MLP width relative to ``d``.
        use_prefix: include the prefix (else ``Z`` is ignored).
        use_suffix: include the private suffix.
        num_suffix_tokens: private suffix tokens ``m_c``.

    Returns ``(delta_r, c_out)``: the update of the backbone positions ``(B, L, d)`` (output minus input)
    and the suffix output ``(B, d)``, the mean of the suffix tokens' outputs (``None`` without suffix).
    """

    def __init__(
        self,
        embed_dim: int,
        num_prefix_tokens: int = 4,
        num_layers: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        use_prefix: bool = True,
        use_suffix: bool = True,
        num_suffix_tokens: int = 1,
    ) -> None:
        super().__init__()
        if not (use_prefix or use_suffix):
            raise ValueError("PrefixSuffixPrompt needs the prefix, the suffix or both.")
        if num_suffix_tokens < 1:
            raise ValueError(f"num_suffix_tokens must be >= 1, got {num_suffix_tokens}.")
        self.use_prefix, self.use_suffix = use_prefix, use_suffix
        self.num_suffix = num_suffix_tokens if use_suffix else 0
        if use_prefix:
            self.prefix_queries = nn.Parameter(torch.randn(1, num_prefix_tokens, embed_dim) * 0.02)
            self.prefix_pool = CrossAttention(embed_dim, num_heads)
        if use_suffix:
            self.private_suffix = nn.Parameter(torch.randn(1, num_suffix_tokens, embed_dim) * 0.02)
        self.segment = nn.Parameter(torch.zeros(3, embed_dim))  # prefix / backbone / suffix
        self.layers = nn.Sequential(
            *[TransformerLayer(embed_dim, int(embed_dim * mlp_ratio), num_heads) for _ in range(num_layers)]
        )

    def forward(
        self, tokens: torch.Tensor, prior: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, length = tokens.shape[:2]
        parts = [tokens + self.segment[1]]
        if self.use_prefix:
            if prior is None:
                raise ValueError("the prefix needs the fused prior Z.")
            prefix = self.prefix_pool(self.prefix_queries.expand(b, -1, -1), context=prior)
            parts.insert(0, prefix + self.segment[0])
        if self.use_suffix:
            parts.append(self.private_suffix.expand(b, -1, -1) + self.segment[2])
        out = self.layers(torch.cat(parts, dim=1))
        start = out.shape[1] - length - self.num_suffix
        delta = out[:, start : start + length] - tokens
        return delta, (out[:, out.shape[1] - self.num_suffix :].mean(1) if self.use_suffix else None)
