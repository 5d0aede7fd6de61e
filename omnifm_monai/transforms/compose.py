"""A ``Compose`` whose later transforms (a training pipeline's random augmentations) run on plain tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.transforms import Compose

__all__ = ["PlainTensorCompose"]


def _plain(data: Any) -> Any:
    """``data`` with every MetaTensor (at the top level, or a dictionary's value) as a plain tensor."""
    if isinstance(data, MetaTensor):
        return data.as_tensor()
    if isinstance(data, Mapping):
        return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in data.items()}
    return data


class PlainTensorCompose(Compose):
    """``Compose`` whose transforms from index ``plain_from`` on run on plain tensors, with MONAI's metadata
    tracking off.

    For a training pipeline ``deterministic + random`` with ``plain_from = len(deterministic)``: the deterministic
    part keeps its metadata (and is what ``CacheDataset`` caches, up to the first random transform); the random
    augmentations, whose output only feeds the network, skip the per-operation metadata bookkeeping of
    ``MetaTensor`` (2-3x faster on small 2D slices: ``benchmarks/augmentation.py``) and return plain tensors.
    It is one flat ``Compose``: its random transforms are seeded exactly as in ``Compose(transforms)`` and draw the
    same numbers, so the two compute the same values (a nested ``Compose`` would re-seed its children).

    The tracking switch is MONAI's process-wide flag (:func:`monai.data.set_track_meta`), set while the plain part
    runs and restored afterwards, also when a transform raises: do not share one dataset between threads that
    apply transforms at the same time (``DataLoader`` workers are processes: they are fine).

    Args:
        transforms: the transforms, in order.
        plain_from: index of the first transform that runs on plain tensors (0: all of them).
        kwargs: the other arguments of ``monai.transforms.Compose``.
    """

    def __init__(self, transforms: Sequence | None = None, plain_from: int = 0, **kwargs: Any) -> None:
        super().__init__(transforms, **kwargs)
        if not 0 <= plain_from <= len(self.transforms):
            raise ValueError(f"plain_from must lie in [0, {len(self.transforms)}], got {plain_from}.")
        self.plain_from = plain_from

    def __call__(self, input_, start=0, end=None, threading=False, lazy=None):
        stop = len(self.transforms) if end is None else end
        split = min(max(start, self.plain_from), stop)
        if split > start:  # the tracked part (what CacheDataset caches)
            input_ = super().__call__(input_, start=start, end=split, threading=threading, lazy=lazy)
        if split == stop:
            return input_
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(_plain(input_), start=split, end=stop, threading=threading, lazy=lazy)
        finally:
            set_track_meta(tracking)
