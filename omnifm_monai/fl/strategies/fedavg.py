"""FedAvg and the two references every table needs: Local (no federation) and Centralized (pooled data)."""

from __future__ import annotations

from torch import nn

from .base import Strategy

__all__ = ["Centralized", "FedAvg", "LocalOnly"]

FedAvg = Strategy  # the base class is FedAvg: every other strategy changes one part of it


class LocalOnly(Strategy):
    """Local training only: every key is private, nothing is aggregated (the no-federation reference)."""

    name = "local"
    shares_weights = False

    def private_keys(self, network: nn.Module) -> set[str]:
        return set(network.state_dict())

    def aggregate(self, global_weights, updates, state):
        return dict(global_weights), state


class Centralized(Strategy):
    """Centralized (pooled) training: one client trains on the union of every site's training data."""

    name = "centralized"
    pooled = True
