"""Zero-initialised tanh gate: the identity at initialisation, so a wrapped backbone is unchanged."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ZeroGate"]


class ZeroGate(nn.Module):
    """``x + tanh(alpha) * delta`` with ``alpha`` initialised to ``init`` (0: exact identity).

    Note that at ``alpha = 0`` only ``alpha`` receives a gradient; everything behind the gate starts
    learning once ``alpha`` has moved (as in Flamingo's gated cross-attention).
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(init)))

    @property
    def value(self) -> torch.Tensor:
        return torch.tanh(self.alpha)

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return x + self.value * delta
