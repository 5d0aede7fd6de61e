"""FedDG-style amplitude exchange (Liu et al., CVPR 2021)."""

from __future__ import annotations

from typing import Any

import torch
from monai.transforms import Compose, RandomizableTrait

from omnifm_monai.transforms import RandAmplitudeMixd, amplitude_bank

from .base import Strategy, tensor_problem

__all__ = ["FedDG", "insert_before_random"]


def insert_before_random(dataset: Any, transform: Any) -> None:
    """Put ``transform`` first in the random part of a MONAI dataset's ``Compose`` (the cached deterministic
    part stays valid: a ``CacheDataset`` replays its transforms from the first random one)."""
    compose = dataset.transform
    if not isinstance(compose, Compose):
        raise TypeError(f"the training dataset's transform is {type(compose).__name__}, not a MONAI Compose.")
    transforms = list(compose.transforms)
    first = next((i for i, t in enumerate(transforms) if isinstance(t, RandomizableTrait)), len(transforms))
    compose.transforms = tuple(transforms[:first] + [transform] + transforms[first:])


class FedDG(Strategy):
    """FedDG-style amplitude exchange (Liu et al., CVPR 2021, ELCFS without the episodic boundary loss):
    FedAvg of the weights; each site uploads the amplitude spectra of ``num_amplitudes`` training images,
    the server pools them, and clients mix the low-frequency amplitude of their images with other sites'
    (``RandAmplitudeMixd``, window ``beta``)."""

    name = "feddg"

    def __init__(self, num_amplitudes: int = 8, beta: float = 0.01, **options: Any) -> None:
        super().__init__(num_amplitudes=num_amplitudes, beta=beta, **options)
        self.num_amplitudes, self.beta = num_amplitudes, beta

    # ---------------------------------------------------------------- server
    def init_state(self, global_weights):
        return {"amplitudes": {}}

    def server_payload(self, state):
        return {"amplitudes": state["amplitudes"]}

    def validate_extra(self, update, state):
        if "amplitudes" not in update.extra:
            return None
        value = update.extra["amplitudes"]
        shape = next(iter(state["amplitudes"].values())).shape[1:] if state["amplitudes"] else None
        return tensor_problem("amplitudes", value, (None, *shape) if shape is not None else None) or (
            "amplitudes must hold at least one spectrum" if value.dim() < 2 or len(value) == 0 else None
        )

    def aggregate(self, global_weights, updates, state):
        new, _ = super().aggregate(global_weights, updates, state)
        amplitudes = dict(state["amplitudes"])
        amplitudes.update({u.site: u.extra["amplitudes"] for u in updates if "amplitudes" in u.extra})
        return new, {**state, "amplitudes": amplitudes}

    # ---------------------------------------------------------------- client
    def setup_site(self, ctx):
        mixer = RandAmplitudeMixd(keys="image", bank=None, beta=self.beta)
        insert_before_random(ctx.trainer.data_loader.dataset, mixer)
        ctx.runtime["amplitude_mixer"] = mixer

    def before_training(self, ctx):
        others = [a for site, a in (ctx.payload.get("amplitudes") or {}).items() if site != ctx.site]
        ctx.runtime["amplitude_mixer"].set_bank(torch.cat(others).numpy() if others else None)

    def upload(self, ctx, local, iterations):
        dataset = ctx.trainer.data_loader.dataset
        count = min(self.num_amplitudes, len(dataset))
        images = [dataset[int(i)]["image"] for i in torch.linspace(0, len(dataset) - 1, count).long()]
        return {"amplitudes": torch.as_tensor(amplitude_bank(images))}
