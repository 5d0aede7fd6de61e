"""Run 2D networks on 2D images and on 3D volumes alike: in-plane resizing and slice items."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform, Resized

__all__ = ["ResizePlanard", "SliceItemsd"]


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
