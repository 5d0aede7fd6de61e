"""Run 2D networks on 2D images and on 3D volumes alike: in-plane resizing and slice items."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, Orientationd, Resized

__all__ = ["PlaneOrientation", "PlaneOrientationd", "ResizePlanard", "SliceItemsd", "plane_axcodes"]


def plane_axcodes(image: torch.Tensor, axcodes: str = "RAS") -> str:
    """``axcodes`` for a volume; for a single slice (one spatial axis of size 1), ``axcodes`` reordered so
    that the slice's normal comes last and its plane keeps the first two axes: ``ASR`` for a sagittal
    slice, ``RSA`` for a coronal one. The 2D networks run on the last axis's slices."""
    shape = tuple(image.shape[1:])
    if not isinstance(image, MetaTensor) or len(shape) != 3 or shape.count(1) != 1:
        return axcodes
    column = np.asarray(image.affine, dtype=float)[:3, shape.index(1)]
    normal = int(np.argmax(np.abs(column)))  # the world axis (0 = R/L, 1 = A/P, 2 = S/I) the slice faces
    return "".join(c for i, c in enumerate(axcodes) if i != normal) + axcodes[normal]


class PlaneOrientation(Orientation):
    """MONAI's ``Orientation`` to ``axcodes`` that keeps a single slice in its own plane (:func:`plane_axcodes`):
    a sagittal or coronal slice becomes one 2D slice on the last axis, not a stack of 1-pixel strips."""

    def __call__(self, data_array: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:
        target = self.axcodes
        self.axcodes = plane_axcodes(data_array, target)
        try:
            return super().__call__(data_array, lazy=lazy)
        finally:
            self.axcodes = target


class PlaneOrientationd(Orientationd):
    """Dictionary version of :class:`PlaneOrientation`; ``Invertd`` restores the original orientation."""

    def __init__(self, keys: KeysCollection, axcodes: str = "RAS", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, axcodes=axcodes, allow_missing_keys=allow_missing_keys)
        self.ornt_transform = PlaneOrientation(axcodes=axcodes)


class ResizePlanard(Resized):
    """Resize the two in-plane axes to ``size`` x ``size`` and keep any further axis (the slices of a volume).

    A ``Resized`` whose target is chosen per image, so MONAI's ``Invertd`` restores the original grid.
    """

    def __init__(
        self, keys: KeysCollection, size: int, mode: str = "area", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, spatial_size=(size, size), mode=mode, allow_missing_keys=allow_missing_keys)
        self.size = size

    def __call__(self, data: Mapping[Hashable, object], lazy: bool | None = None) -> dict:
        for key in self.key_iterator(dict(data)):
            extra = data[key].ndim - 3  # channel-first: (C, H, W[, D])
            self.resizer.spatial_size = (self.size, self.size, *([-1] * extra))
        return super().__call__(data, lazy=lazy)


class SliceItemsd(MapTransform):
    """Split a channel-first 3D volume into one item per slice along the last axis; a 2D image gives one item.

    Each item keeps the other keys and gets ``slice_index``; MONAI's ``list_data_collate`` flattens the
    lists into batches of slices.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys or d[keys[0]].ndim == 3:
            return [{**d, "slice_index": 0}]
        depth = d[keys[0]].shape[-1]
        return [{**d, **{k: d[k][..., i] for k in keys}, "slice_index": i} for i in range(depth)]
