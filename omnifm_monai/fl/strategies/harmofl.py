"""HarmoFL (Jiang et al., AAAI 2022)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import IterationEvents

from omnifm_monai.transforms import AmplitudeNormalize, amplitude_bank

from .base import SiteContext, Strategy

__all__ = ["HarmoFL"]


class HarmoFL(Strategy):
    """HarmoFL (Jiang et al., AAAI 2022): FedAvg on the server; on each site (1) amplitude normalisation:
    every image the network sees (training and evaluation) has its low-frequency amplitude (window ``beta``)
    replaced by the site's mean amplitude, which never leaves the site; (2) weight perturbation (WPOpt): each
    step's gradient is taken at the weights moved by ``rho`` along the normalised gradient (as SAM), which
    flattens the loss landscape that the sites' models are averaged on.

    Choices of this implementation: the site's mean amplitude comes from its training images as the bundle
    loads them without random transforms (``bank_dataloader``), computed once; normalisation is a forward
    pre-hook, so one network shared by several sites (the simulator) normalises with the active site's mean.
    """

    name = "harmofl"

    def __init__(self, rho: float = 0.05, beta: float = 0.1, **options: Any) -> None:
        super().__init__(rho=rho, beta=beta, **options)
        self.rho, self.beta = rho, beta

    def setup_site(self, ctx: SiteContext) -> None:
        loader = ctx.workflow.bank_dataloader or ctx.trainer.data_loader
        images = [image for batch in loader for image in batch["image"]]
        ctx.runtime["harmofl_norm"] = AmplitudeNormalize(
            torch.as_tensor(amplitude_bank(images)).mean(0), beta=self.beta
        )
        network = ctx.network
        if not hasattr(network, "_harmofl_active"):  # one hook per network, whichever site is active
            network._harmofl_active = [None]

            def normalise(module, args):
                norm = module._harmofl_active[0]
                if norm is None:
                    return None
                images = args[0]
                # normalised as plain tensors, written into a copy of the batch: a MetaTensor batch keeps its
                # own metadata (stacking per-image MetaTensors leaves a batch that postprocessing cannot extend)
                out = images.clone()
                with torch.no_grad():
                    out.copy_(torch.stack([norm(x) for x in images.as_subclass(torch.Tensor)]))
                return (out, *args[1:])

            network.register_forward_pre_hook(normalise)
        ctx.trainer.add_event_handler(
            IterationEvents.BACKWARD_COMPLETED, lambda engine: self._perturbed_gradient(ctx, engine)
        )

    def _activate(self, ctx: SiteContext) -> None:
        ctx.network._harmofl_active[0] = ctx.runtime["harmofl_norm"]

    def before_training(self, ctx):
        self._activate(ctx)

    def prepare_evaluation(self, ctx, payload):
        self._activate(ctx)

    def _perturbed_gradient(self, ctx: SiteContext, engine) -> None:
        """Replace the step's gradient by the one at ``w + rho * g / ||g||`` (same batch), then restore ``w``."""
        params = [p for p in ctx.network.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) if params else 0
        if not params or norm == 0:
            return
        with torch.no_grad():
            weights = [p.detach().clone() for p in params]
            for p in params:
                p.add_(self.rho * p.grad / norm)
        engine.optimizer.zero_grad(set_to_none=False)
        batch = engine.prepare_batch(
            engine.state.batch, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        engine.loss_function(
            engine.inferer(inputs, engine.network, *args, **kwargs), targets
        ).mean().backward()
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
