"""MOON (Li et al., CVPR 2021)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from .base import Strategy

__all__ = ["MOON"]


class MOON(Strategy):
    """MOON (Li et al., CVPR 2021): FedAvg on the server; clients add a model-contrastive term
    ``-mu * log(exp(sim(z, z_glob)/T) / (exp(sim(z, z_glob)/T) + exp(sim(z, z_prev)/T)))`` on pooled features
    (the network's ``features``)."""

    name = "moon"

    def __init__(self, mu: float = 1.0, temperature: float = 0.5, **options: Any) -> None:
        super().__init__(mu=mu, temperature=temperature, **options)
        self.mu, self.temperature = mu, temperature

    def setup_site(self, ctx):
        captured: dict[str, Any] = {}
        ctx.network.register_forward_pre_hook(lambda _, args: captured.__setitem__("args", args))
        models: dict[str, torch.nn.Module] = ctx.runtime.setdefault("moon_models", {})

        def features(network, args) -> torch.Tensor:
            return F.normalize(network.features(*args), dim=-1)

        def reference(name: str) -> torch.nn.Module:
            model = models.get(name)
            if model is None:
                model = models[name] = copy.deepcopy(ctx.network).eval().requires_grad_(False)
            model.load_state_dict(ctx.state[name])
            return model

        def contrastive() -> torch.Tensor:
            if "global_model" not in ctx.state or "args" not in captured:
                return torch.zeros(())
            z = features(ctx.network, captured["args"])
            with torch.no_grad():
                z_glob = features(reference("global_model"), captured["args"])
                z_prev = features(reference("previous_model"), captured["args"])
            logits = torch.stack([(z * z_glob).sum(-1), (z * z_prev).sum(-1)], dim=1) / self.temperature
            return self.mu * F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))

        ctx.loss_terms["moon"] = contrastive

    def before_training(self, ctx):
        # previous = this site's model after its last round (the global one at first)
        state = {k: v.detach().clone() for k, v in ctx.network.state_dict().items()}
        ctx.state["previous_model"] = ctx.state.get("local_model", state)
        ctx.state["global_model"] = state

    def after_training(self, ctx):
        ctx.state["local_model"] = {k: v.detach().clone() for k, v in ctx.network.state_dict().items()}
