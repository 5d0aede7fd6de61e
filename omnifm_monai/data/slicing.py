"""From a volume to 2D slices: the axial extent, leak-free slab splits, in-plane resampling, slice files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .layout import SPLITS
from .sources import _Volume


def _extent(mask: np.ndarray, fraction: float = 0.1) -> tuple[int, int]:
    """Axial extent: first/last slice whose mask area is >= ``fraction`` of the largest (drops thin tails)."""
    area = mask.sum(axis=(0, 1))
    z = np.nonzero(area >= fraction * area.max())[0]
    return int(z[0]), int(z[-1])


def _split(lo: int, hi: int, chunks: int, gap: int, stride: int | None, target: int, fractions, rng):
    """Contiguous slabs: ``chunks`` equal blocks of [lo, hi] (the level bins), each cut into a training,
    validation and test slab (seeded order) with ``gap`` unused slices between any two slabs."""
    bounds = np.linspace(lo, hi + 1, chunks + 1)
    usable = hi - lo + 1 - (3 * chunks - 1) * gap
    stride = stride or max(1, round(usable / target))
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(chunks):
        a, b = int(np.ceil(bounds[c])) + (gap if c else 0), int(np.ceil(bounds[c + 1]))
        n = b - a - 2 * gap
        n_val, n_test = (max(1, round(f * n)) for f in fractions[1:])
        if n - n_val - n_test < 1:
            raise ValueError(f"slices {lo}-{hi} are too few for {chunks} block(s) of 3 slabs with gap={gap}.")
        for s in rng.permutation(3):
            length = (n - n_val - n_test, n_val, n_test)[s]
            out[SPLITS[s]] += range(a, a + length, stride)
            a += length + gap
    return {s: sorted(v) for s, v in out.items()}, bounds


def _resample(sl: np.ndarray, crop, spacing, size: int, smooth: bool = True):
    """Crop box -> square field of view (padding the short side) -> ``size`` x ``size`` pixels.

    Returns the slice and the 4x4 map from output pixel (u, v, 0) to source voxel (i, j, 0)."""
    x0, x1, y0, y1 = crop
    pixel = max((x1 - x0) * spacing[0], (y1 - y0) * spacing[1]) / size  # isotropic output spacing (mm)
    step = pixel / np.asarray(spacing)
    origin = np.array([(x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2]) - (size - 1) / 2 * step
    if smooth:  # anti-alias before downsampling
        sl = ndi.gaussian_filter(sl, np.maximum((step - 1) / 2, 0))
    grid = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = origin[:, None, None] + grid * step[:, None, None]
    out = ndi.map_coordinates(sl, coords, order=1, mode="constant", cval=0.0)
    index = np.eye(4)
    index[[0, 1], [0, 1]], index[:2, 3] = step, origin
    return out.astype(np.float32), index


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _slices(vol: _Volume, folder: Path, splits: dict, bounds, size: int) -> list[dict]:
    """Write every sampled slice (image, label) once; return one record per slice for the tasks."""
    spacing = np.linalg.norm(vol.affine[:3, :2], axis=0)
    records = []
    for split, zs in splits.items():
        for z in zs:
            stem = f"{vol.name}_z{z:03d}.nii.gz"
            image, index = _resample(vol.image[:, :, z], vol.crop, spacing, size)
            index[2, 3] = z
            affine = vol.affine @ index
            _save(np.clip(image, 0, 1), affine, folder / "images" / stem)
            rec: dict[str, Any] = {"split": split, "z": z, "image": f"images/{stem}", "area": {}}
            if vol.tissue is not None:
                gm, wm = (_resample(t[:, :, z], vol.crop, spacing, size)[0] for t in vol.tissue)
                label = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
                _save(label, affine, folder / "labels" / stem)
                rec["label"] = f"labels/{stem}"
                rec["area"] = {"grey matter": (label == 1).mean(), "white matter": (label == 2).mean()}
            if vol.bone is not None:
                bone, _ = _resample(vol.bone[:, :, z].astype(np.float32), vol.crop, spacing, size, False)
                rec["area"]["bone"] = (bone >= 0.5).mean()
            if vol.brain is not None:
                # the level bin (block of ``bounds``) holding z: bins 0 .. len(bounds) - 2
                rec["level"] = int(np.clip(np.searchsorted(bounds, z, side="right") - 1, 0, len(bounds) - 2))
            records.append(rec)
    return records
