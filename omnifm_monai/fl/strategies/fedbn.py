"""FedBN (Li et al., ICLR 2021)."""

from __future__ import annotations

from .base import Strategy, norm_keys

__all__ = ["FedBN"]


class FedBN(Strategy):
    """FedBN (Li et al., ICLR 2021): FedAvg except normalisation layers (weights and statistics), kept local."""

    name = "fedbn"

    def private_keys(self, network):
        return super().private_keys(network) | norm_keys(network)
