"""From a volume to 3D items (task ``segmentation_3d``): each split's slab(s) of the volume as a NIfTI volume.

A split's axial slices (the same ones the slice tasks use, :mod:`.slicing`) are grouped into contiguous runs;
every run is written once as an image volume and a label volume, cropped in-plane to the volume's head box,
on the volume's own grid (its spacing: the builder's, e.g. 3-4 mm for CPU training). A virtual subject's
split is its whole brain extent, so it gives one volume; a real volume cut into slabs gives one volume per
slab, with the slabs' gaps between them. Labels: argmax of background / grey matter / white matter fractions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .slicing import _save
from .sources import _Volume

VOLUME_DESCRIPTION = (
    "Brain volume (a virtual subject's, or a slab of a real volume) -> grey/white matter label volume "
    "(0 background, 1 GM, 2 WM), on the volume's grid."
)


def _runs(zs: list[int], step: int) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of sorted slice indices whose neighbours lie at most ``step`` apart."""
    runs: list[list[int]] = []
    for z in sorted(zs):
        if runs and z - runs[-1][1] <= step:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    return [(a, b) for a, b in runs]


def _volumes(vol: _Volume, folder: Path, splits: dict[str, list[int]], step: int = 1) -> list[dict]:
    """Write every split's runs of slices as image / label volumes under ``folder``; one record per volume."""
    if vol.tissue is None:
        raise ValueError(f"{vol.name} has no tissue maps: no segmentation_3d items can be made from it.")
    nx, ny = vol.image.shape[:2]
    x0, x1, y0, y1 = vol.crop or (0, nx, 0, ny)
    (folder / "images_3d").mkdir(parents=True, exist_ok=True)
    (folder / "labels_3d").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for split, zs in splits.items():
        for lo, hi in _runs(zs, step):
            stem = f"{vol.name}_z{lo:03d}-{hi:03d}.nii.gz"
            box = (slice(x0, x1), slice(y0, y1), slice(lo, hi + 1))
            index = np.eye(4)
            index[:3, 3] = (x0, y0, lo)  # output voxel (0, 0, 0) is source voxel (x0, y0, lo)
            affine = vol.affine @ index
            image = np.clip(vol.image[box], 0, 1).astype(np.float32)
            gm, wm = (t[box] for t in vol.tissue)
            label = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
            _save(image, affine, folder / "images_3d" / stem)
            _save(label, affine, folder / "labels_3d" / stem)
            records.append(
                {"split": split, "image": f"images_3d/{stem}", "label": f"labels_3d/{stem}",
                 "z_range": [lo, hi], "shape": list(image.shape)}
            )  # fmt: skip
    return records


def _volume_items(vol: _Volume, records: list[dict], splits) -> dict[str, list[dict]]:
    """The ``segmentation_3d`` items of ``records`` per split, with their provenance."""
    items: dict[str, list[dict]] = {s: [] for s in splits}
    for rec in records:
        provenance = {"image": vol.image_kind, "label": vol.tissue_source, "source": vol.source,
                      "volume": vol.name, "z_range": rec["z_range"]}  # fmt: skip
        items[rec["split"]].append({"image": rec["image"], "label": rec["label"], "provenance": provenance})
    return items
