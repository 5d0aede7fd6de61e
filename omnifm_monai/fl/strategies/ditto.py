"""Ditto (Li et al., ICML 2021)."""

from __future__ import annotations

from typing import Any

from .base import Strategy
from .fedprox import distance_to_global, snapshot_global

__all__ = ["Ditto"]


class Ditto(Strategy):
    """Ditto (Li et al., ICML 2021): FedAvg of the global model; each client also trains a personal model
    with ``lam/2 ||v - w_global||^2`` and is evaluated with it."""

    name = "ditto"

    def __init__(self, lam: float = 0.1, **options: Any) -> None:
        super().__init__(lam=lam, **options)
        self.lam = lam

    def before_training(self, ctx):
        snapshot_global(ctx)

    def after_training(self, ctx):
        """From the stored personal model, the same epochs with the proximal term; then back to the global track."""
        global_track = ctx.shared_state()
        ctx.load(ctx.state.get("personal", global_track))
        ctx.loss_terms["ditto"] = lambda: self.lam / 2 * distance_to_global(ctx)
        try:
            ctx.train_local_epochs(optimizer_key="personal_optimizer")
        finally:
            del ctx.loss_terms["ditto"]
        ctx.state["personal"] = ctx.shared_state()
        ctx.load(global_track)  # what is sent is the global-track model

    def evaluation_weights(self, ctx):
        return ctx.state.get("personal")
