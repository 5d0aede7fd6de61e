"""FedDyn (Acar et al., ICLR 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Strategy, weighted_average
from .fedprox import distance_to_global, snapshot_global

__all__ = ["FedDyn"]


class FedDyn(Strategy):
    """FedDyn (Acar et al., ICLR 2021): clients minimise ``L_i(w) - <g_i, w> + alpha/2 ||w - w_global||^2``
    and update ``g_i <- g_i - alpha (w_i - w_global)``; the server keeps
    ``h <- h - alpha * (1/N) sum_i (w_i - w_global)`` and sets ``w <- mean_i w_i - h / alpha``."""

    name = "feddyn"

    def __init__(self, alpha: float = 0.01, num_sites: int | None = None, **options: Any) -> None:
        super().__init__(alpha=alpha, **options)
        self.alpha, self.num_sites = alpha, num_sites

    @classmethod
    def resolve_options(cls, network, sites: Sequence[str]):
        return {"num_sites": len(sites)}

    # ---------------------------------------------------------------- server
    def init_state(self, global_weights):
        return {"h": {k: torch.zeros_like(v) for k, v in global_weights.items() if v.is_floating_point()}}

    def aggregate(self, global_weights, updates, state):
        full = [u.full_weights(global_weights) for u in updates]
        n = self.num_sites or len(updates)
        mean = weighted_average(full, [1.0] * len(full))
        h = {
            k: h_k - self.alpha * sum(w[k] - global_weights[k] for w in full) / n
            for k, h_k in state["h"].items()
        }
        new = {k: (mean[k] - h[k] / self.alpha) if k in h else mean[k] for k in mean}
        return new, {**state, "h": h}

    # ---------------------------------------------------------------- client
    def setup_site(self, ctx):
        def linear() -> torch.Tensor:  # -<g_i, w>
            grad = ctx.state.get("grad", {})
            return -sum((p * grad[n]).sum() for n, p in ctx.trainable() if n in grad)

        ctx.loss_terms["proximal"] = lambda: self.alpha / 2 * distance_to_global(ctx)
        ctx.loss_terms["linear"] = linear

    def before_training(self, ctx):
        snapshot_global(ctx)
        ctx.state.setdefault("grad", {n: torch.zeros_like(p) for n, p in ctx.trainable()})

    def upload(self, ctx, local, iterations):
        grad = ctx.state["grad"]
        for n, _ in ctx.trainable():
            grad[n] = grad[n] - self.alpha * (local[n] - ctx.global_weights[n]).to(grad[n].device)
        return {}
