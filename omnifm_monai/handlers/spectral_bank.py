"""Keep an OmniFM network's spectral knowledge bank filled from a site's own data."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from omnifm_monai.networks.blocks import kmeans_centroids

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["SpectralBankRefresh", "site_centroids"]


@torch.no_grad()
def site_centroids(
    network: torch.nn.Module,
    data: Iterable,
    num_centroids: int = 16,
    image_key: str = "image",
    device: torch.device | str | None = None,
    seed: int = 0,
    min_images_per_centroid: int = 1,
) -> torch.Tensor:
    """``Q`` k-means centroids of the spectral tokens of every image in ``data`` (batches of dicts).

    This summary, not per-image tokens, is what a site shares with the bank (bandwidth and privacy); with
    ``min_images_per_centroid`` > 1 no centroid is the token of fewer images than that.
    """
    was_training = network.training
    network.eval()
    tokens = []
    for batch in data:
        images = batch[image_key].to(device) if device is not None else batch[image_key]
        tokens.append(network.spectral_keys(images).cpu())
    network.train(was_training)
    if not tokens:
        raise ValueError("no images to summarise: the data is empty.")
    return kmeans_centroids(
        torch.cat(tokens), num_centroids, seed=seed, min_cluster_size=min_images_per_centroid
    )


class SpectralBankRefresh:
    """At the start of every ``interval``-th epoch, merge this site's centroids into the network's bank.

    Standalone (single-site) training uses this as a one-site federation, so OmniFM's retrieval and SPA
    work without a server; in federated training the server's bank replaces it (the bank's ``federated``
    flag, set by the OmniFM strategy on each site, turns this handler off).

    Args:
        network: an OmniFM network with a bank.
        data_loader: the site's training data (its deterministic view is enough).
        num_centroids: ``Q``.
        site: this site's id in the bank.
        modality: this site's modality tag (a name known to the bank, or an index).
        image_key: image key in the batches.
        interval: epochs between refreshes.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        data_loader: Iterable,
        num_centroids: int = 16,
        site: int = 0,
        modality: int | str = 0,
        image_key: str = "image",
        interval: int = 1,
    ) -> None:
        self.network, self.data_loader, self.num_centroids = network, data_loader, num_centroids
        self.site, self.modality, self.image_key, self.interval = site, modality, image_key, interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        bank = getattr(self.network, "bank", None)
        if bank is None or bank.federated:
            return  # GSKR switched off, or the federation's server keeps the bank
        centroids = site_centroids(
            self.network,
            self.data_loader,
            self.num_centroids,
            self.image_key,
            engine.state.device,
            seed=engine.state.epoch,
        )
        self.network.bank.merge([{"keys": centroids, "site": self.site, "modality": self.modality}])
