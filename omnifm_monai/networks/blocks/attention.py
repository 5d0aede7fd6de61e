"""MONAI's attention blocks, computed with fewer operations: the same parameters, state-dict keys and values.

OmniFM's fusion and prompts attend over a few dozen tokens, where a step's cost is the number of operations
rather than their size. MONAI's blocks reshape through ``einops`` and multiply through ``einsum``; these
subclasses use views and ``matmul`` on the same weights in the same order, and fall back to MONAI's forward
for every option they do not cover (dropout, causal masks, relative positions, flash attention, saved
attention maps, a reduced attention dtype).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import CrossAttentionBlock, TransformerBlock
from monai.networks.blocks.selfattention import SABlock

__all__ = ["CrossAttention", "TransformerLayer", "multi_head_attention"]


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` per head: ``q (B, T, h * d)``, ``k, v (B, S, h * d)`` -> ``(B, T, h * d)``."""
    b, t, width = q.shape
    heads = [z.view(b, z.shape[1], num_heads, width // num_heads).transpose(1, 2) for z in (q, k, v)]
    weights = (heads[0] @ heads[1].transpose(-1, -2) * scale).softmax(-1)
    return (weights @ heads[2]).transpose(1, 2).reshape(b, t, width)


def _covered(block: SABlock | CrossAttentionBlock) -> bool:
    """Whether ``block``'s options are the plain ones the lean path computes."""
    return not (
        block.dropout_rate
        or block.causal
        or block.save_attn
        or block.use_flash_attention
        or block.attention_dtype is not None
        or block.rel_positional_embedding is not None
    )


class CrossAttention(CrossAttentionBlock):
    """:class:`monai.networks.blocks.CrossAttentionBlock` with the lean forward (same arguments)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if not _covered(self):
            return super().forward(x, context)
        kv = x if context is None else context
        out = multi_head_attention(self.to_q(x), self.to_k(kv), self.to_v(kv), self.num_heads, self.scale)
        return self.out_proj(out)


class TransformerLayer(TransformerBlock):
    """:class:`monai.networks.blocks.TransformerBlock` whose self-attention takes the lean path (same
    arguments); cross-attention layers and attention masks use MONAI's forward."""

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn = self.attn
        if self.with_cross_attention or attn_mask is not None or not _covered(attn):
            return super().forward(x, context, attn_mask)
        h = self.norm1(x)
        if attn.use_combined_linear:  # qkv's output is laid out (q | k | v), each (heads, head_dim)
            q, k, v = attn.qkv(h).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        out = multi_head_attention(q, k, v, attn.num_heads, attn.scale)
        x = x + (attn.out_proj(out) if attn.include_fc else out)
        return x + self.mlp(self.norm2(x))
