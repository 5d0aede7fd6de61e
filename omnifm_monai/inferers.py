"""Inferers for 2D networks that also read 3D volumes."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer

__all__ = ["PlanarInferer"]


class PlanarInferer(Inferer):
    """A 2D image goes through the network as it is; a 3D volume goes slice by slice along its last axis.

    Args:
        sw_batch_size: slices per forward pass for volumes.
    """

    def __init__(self, sw_batch_size: int = 16) -> None:
        super().__init__()
        self.sw_batch_size = sw_batch_size

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if inputs.ndim == 4:  # (B, C, H, W)
            return network(inputs, *args, **kwargs)
        slicer = SliceInferer(
            roi_size=tuple(inputs.shape[2:4]), sw_batch_size=self.sw_batch_size, spatial_dim=2, progress=False
        )
        return slicer(inputs, network, *args, **kwargs)
