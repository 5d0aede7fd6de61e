"""FedPer (Arivazhagan et al., 2019) and FedRep (Collins et al., ICML 2021): a private task head."""

from __future__ import annotations

from typing import Any

from monai.utils import IgniteInfo, min_version, optional_import

from .base import Strategy, head_keys

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["FedPer", "FedRep"]


class FedPer(Strategy):
    """FedPer (Arivazhagan et al., 2019): FedAvg of the body; the task head stays local."""

    name = "fedper"

    def private_keys(self, network):
        return super().private_keys(network) | head_keys(network)


class FedRep(FedPer):
    """FedRep (Collins et al., ICML 2021): head local; each round clients first fit the head with the body
    frozen (``head_epochs``), then the body with the head frozen; the server averages the body."""

    name = "fedrep"

    def __init__(self, head_epochs: int = 1, **options: Any) -> None:
        Strategy.__init__(self, head_epochs=head_epochs, **options)
        self.head_epochs = head_epochs

    def setup_site(self, ctx):
        head = head_keys(ctx.network)

        def phase(engine) -> None:
            head_phase = engine.state.epoch - ctx.state.get("round_start_epoch", 0) <= self.head_epochs
            for n, p in ctx.network.named_parameters():
                trainable = (
                    n in head
                ) == head_phase or n in ctx.private_keys - head  # suffix etc. always train
                p.requires_grad_(trainable)
                if not trainable:
                    p.grad = None

        ctx.trainer.add_event_handler(Events.EPOCH_STARTED, phase)

    def before_training(self, ctx):
        ctx.state["round_start_epoch"] = ctx.trainer.state.epoch
