"""A DICOM reader for what clinics send, on MONAI's ``PydicomReader``.

MONAI's reader lays a single-file DICOM out for a 2D slice of an axial series; three common files are read
wrong by it:

- a multi-frame file (``NumberOfFrames`` > 1) comes out with its frames on the middle axis;
- a colour file (RGB / YBR ultrasound, ``PALETTE COLOR``) comes out with its colour samples as a spatial axis;
- a single slice outside the axial plane gets a third affine column that is not its normal, so no
  orientation transform can place it.

:class:`ClinicalDicomReader` reads a single file as a volume of shape (columns, rows, frames) (one frame for
a slice) whose affine's third column is the slice normal times the frame spacing, converts colour to grey
(ITU-R BT.601 luma; one log line names the file) and ``MONOCHROME1`` to ``MONOCHROME2``. A folder (a DICOM
series) is read by ``PydicomReader`` as it is. Bundles use it as ``LoadImaged``'s ``reader``, followed by
:class:`omnifm_monai.transforms.PlaneOrientationd`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from monai.data import PydicomReader
from monai.data.utils import affine_to_spacing
from monai.utils import MetaKeys

__all__ = ["ClinicalDicomReader", "LUMA_WEIGHTS"]

logger = logging.getLogger(__name__)

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, the luma of DICOM's YBR_FULL


def _frame_spacing(ds: Any) -> float:
    """Distance between frames (or a slice's thickness), 1 when the file does not say."""
    offsets = getattr(ds, "GridFrameOffsetVector", None)  # RT dose frames
    if offsets is not None and len(offsets) > 1 and float(offsets[1]) != float(offsets[0]):
        return abs(float(offsets[1]) - float(offsets[0]))
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        value = getattr(ds, name, None)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


class ClinicalDicomReader(PydicomReader):
    """``PydicomReader`` that reads single DICOM files of any plane, frame count and colour model right."""

    def _get_array_data(self, img, filename):
        data = super()._get_array_data(img, filename)
        kind = str(getattr(img, "PhotometricInterpretation", "MONOCHROME2")).upper()
        if kind == "PALETTE COLOR":
            try:
                from pydicom.pixels import apply_color_lut
            except ImportError:  # pydicom < 3
                from pydicom.pixel_data_handlers.util import apply_color_lut

            data = apply_color_lut(data, img)
        if kind == "PALETTE COLOR" or int(getattr(img, "SamplesPerPixel", 1)) > 1:
            data = np.asarray(data, dtype=np.float32)[..., :3] @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
            logger.warning("%s: colour DICOM (%s) read as grey (ITU-R BT.601 luma).", filename, kind)
        elif kind == "MONOCHROME1":  # lowest value white: invert to MONOCHROME2's sense
            data = data.max() + data.min() - data
        if self.has_series:  # a slice of a series folder: PydicomReader stacks the slices itself
            return data
        frames = int(getattr(img, "NumberOfFrames", 1) or 1)
        # (frames, rows, columns) -> (rows, columns, frames); PydicomReader then swaps the first two axes
        return np.moveaxis(data, 0, -1) if frames > 1 else data[..., None]

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        array, meta = super().get_data(data)
        ds = data[0] if isinstance(data, list) and len(data) == 1 else data
        iop = (
            None if self.has_series or isinstance(ds, list) else getattr(ds, "ImageOrientationPatient", None)
        )
        if iop is not None and len(iop) == 6:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float)) * _frame_spacing(ds)
            normal[:2] *= -1 if self.affine_lps_to_ras else 1  # DICOM's patient space is LPS
            for key in (MetaKeys.AFFINE, MetaKeys.ORIGINAL_AFFINE):
                meta[key][:3, 2] = normal
            meta["spacing"] = affine_to_spacing(meta[MetaKeys.ORIGINAL_AFFINE], r=3)
        return array, meta
