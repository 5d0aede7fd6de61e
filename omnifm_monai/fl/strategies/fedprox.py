"""FedProx (Li et al., MLSys 2020)."""

from __future__ import annotations

from typing import Any

import torch

from .base import SiteContext, Strategy

__all__ = ["FedProx", "distance_to_global"]


def distance_to_global(ctx: SiteContext) -> torch.Tensor:
    """``||w - w_global||^2`` over the shared trainable parameters (``ctx.state["global"]``, set each round)."""
    ref = ctx.state.get("global")
    if not ref:
        return torch.zeros(())
    return sum((p - ref[n].to(p.device)).pow(2).sum() for n, p in ctx.trainable() if n in ref)


def snapshot_global(ctx: SiteContext) -> None:
    """Keep the round's starting (global) parameters for a proximal term."""
    ctx.state["global"] = {n: p.detach().clone() for n, p in ctx.trainable()}


class FedProx(Strategy):
    """FedProx (Li et al., MLSys 2020): FedAvg on the server; clients add ``mu/2 ||w - w_global||^2``."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, **options: Any) -> None:
        super().__init__(mu=mu, **options)
        self.mu = mu

    def setup_site(self, ctx):
        ctx.loss_terms["proximal"] = lambda: self.mu / 2 * distance_to_global(ctx)

    def before_training(self, ctx):
        snapshot_global(ctx)
