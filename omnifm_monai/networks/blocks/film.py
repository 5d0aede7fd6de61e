"""FiLM from the private suffix: a site's own scale and shift of a decoder's feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SuffixFiLM"]


class SuffixFiLM(nn.Module):
    """``u -> u * (1 + scale_l(c)) + shift_l(c)`` at each level ``l`` of a decoder, from the suffix output ``c``.

    One linear map per level, zero-initialised: at initialisation every level is the identity, so a wrapped
    backbone computes its own function. The maps are shared (averaged); what makes the modulation a site's own
    is ``c``, computed from the site's private suffix tokens. This gives the private suffix a path to every
    decoder level of a UNet rather than a single point (a personal signal at the bottleneck alone barely
    changes a segmentation).

    Args:
        embed_dim: size of ``c``.
        channels: feature channels of the modulated levels, in the order they are applied.

    ``forward(c (B, embed_dim))`` returns one ``(scale, shift)`` pair per level, each ``(B, channels[l])``.
    """

    def __init__(self, embed_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = list(channels)
        self.maps = nn.ModuleList(nn.Linear(embed_dim, 2 * c) for c in self.channels)
        for m in self.maps:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, c: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [tuple(m(c).chunk(2, dim=-1)) for m in self.maps]

    @staticmethod
    def apply(u: torch.Tensor, modulation: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``u (B, C, *S)`` scaled and shifted per channel (unchanged for ``None``)."""
        if modulation is None:
            return u
        scale, shift = (m.reshape(*m.shape, *([1] * (u.dim() - 2))) for m in modulation)
        return u * (1 + scale) + shift
