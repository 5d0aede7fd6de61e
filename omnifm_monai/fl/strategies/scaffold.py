"""SCAFFOLD (Karimireddy et al., ICML 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines import IterationEvents

from .base import Strategy, tensor_problem

__all__ = ["SCAFFOLD"]


class SCAFFOLD(Strategy):
    """SCAFFOLD (Karimireddy et al., ICML 2020): clients correct gradients with ``c - c_i`` and send
    ``dc_i = c_i+ - c_i`` with ``c_i+ = c_i - c + (w_global - w_i) / (K * lr)``; the server averages the
    weights and sets ``c <- c + (|S| / N) mean_i dc_i``."""

    name = "scaffold"

    def __init__(self, num_sites: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.num_sites = num_sites

    @classmethod
    def resolve_options(cls, network, sites: Sequence[str]):
        return {"num_sites": len(sites)}

    # ---------------------------------------------------------------- server
    def init_state(self, global_weights):
        return {
            "control": {k: torch.zeros_like(v) for k, v in global_weights.items() if v.is_floating_point()}
        }

    def server_payload(self, state):
        return {"control": state["control"]}

    def validate_extra(self, update, state):
        delta = update.extra.get("control_delta")
        if not isinstance(delta, dict) or set(delta) != set(state["control"]):
            return "control_delta is missing or does not hold one tensor per shared floating weight"
        for key, control in state["control"].items():
            problem = tensor_problem(f"control_delta[{key}]", delta[key], tuple(control.shape))
            if problem:
                return problem
        return None

    def aggregate(self, global_weights, updates, state):
        new, _ = super().aggregate(global_weights, updates, state)
        share = len(updates) / (self.num_sites or len(updates))
        control = {
            k: c + share * torch.stack([u.extra["control_delta"][k] for u in updates]).mean(0)
            for k, c in state["control"].items()
        }
        return new, {**state, "control": control}

    # ---------------------------------------------------------------- client
    def setup_site(self, ctx):
        def correct(engine) -> None:
            c, c_i = ctx.state.get("control"), ctx.state.get("local_control")
            if not c:
                return
            for n, p in ctx.trainable():
                if p.grad is not None and n in c:
                    p.grad.add_(c[n].to(p.device) - c_i.get(n, torch.zeros_like(c[n])).to(p.device))

        ctx.trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, correct)

    def before_training(self, ctx):
        ctx.state["control"] = ctx.payload.get("control") or {}
        ctx.state.setdefault(
            "local_control", {k: torch.zeros_like(v) for k, v in ctx.state["control"].items()}
        )

    def upload(self, ctx, local, iterations):
        if not ctx.state.get("control"):
            return {}
        lr = ctx.trainer.optimizer.param_groups[0]["lr"]
        steps = max(1, iterations)
        c, c_i = ctx.state["control"], ctx.state["local_control"]
        new_c_i = {k: c_i[k] - c[k] + (ctx.global_weights[k] - local[k]) / (steps * lr) for k in c}
        ctx.state["local_control"] = new_c_i
        return {"control_delta": {k: new_c_i[k] - c_i[k] for k in c}}
