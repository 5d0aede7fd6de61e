"""Server optimisers (Reddi et al., ICLR 2021; Hsu et al., 2019): the averaged update is a pseudo-gradient."""

from __future__ import annotations

from typing import Any

import torch

from .base import Strategy

__all__ = ["FedAdam", "FedAvgM", "FedYogi"]


class _ServerOptimizer(Strategy):
    """Shared logic of server-optimiser strategies: ``d = mean_i w_i - w`` drives a server-side step."""

    def init_state(self, global_weights):
        zeros = {k: torch.zeros_like(v) for k, v in global_weights.items() if v.is_floating_point()}
        return {"m": zeros, "v": {k: z.clone() for k, z in zeros.items()}}

    def aggregate(self, global_weights, updates, state):
        mean, _ = super().aggregate(global_weights, updates, state)
        new, m, v = dict(mean), {}, {}  # non-float buffers: plain average
        for k in state["m"]:
            new[k], m[k], v[k] = self.step(
                global_weights[k], mean[k] - global_weights[k], state["m"][k], state["v"][k]
            )
        return new, {**state, "m": m, "v": v}

    def step(self, w, delta, m, v):
        raise NotImplementedError


class FedAvgM(_ServerOptimizer):
    """FedAvgM (Hsu et al., 2019): server momentum ``v <- beta v + delta``, ``w <- w + lr v`` with
    ``delta = mean_i w_i - w``."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, **options: Any) -> None:
        super().__init__(**options)
        self.server_lr, self.momentum = server_lr, momentum

    def step(self, w, delta, m, v):
        m = self.momentum * m + delta
        return w + self.server_lr * m, m, v


class FedAdam(_ServerOptimizer):
    """FedAdam (Reddi et al., ICLR 2021): ``m <- b1 m + (1-b1) d``, ``v <- b2 v + (1-b2) d^2``,
    ``w <- w + lr m / (sqrt(v) + tau)`` with ``d = mean_i w_i - w``."""

    name = "fedadam"

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau

    def second_moment(self, v, delta):
        return self.beta2 * v + (1 - self.beta2) * delta**2

    def step(self, w, delta, m, v):
        m = self.beta1 * m + (1 - self.beta1) * delta
        v = self.second_moment(v, delta)
        return w + self.server_lr * m / (v.sqrt() + self.tau), m, v


class FedYogi(FedAdam):
    """FedYogi (Reddi et al., ICLR 2021): as FedAdam with ``v <- v - (1-b2) d^2 sign(v - d^2)``."""

    name = "fedyogi"

    def second_moment(self, v, delta):
        d2 = delta**2
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)
