"""Data: the reference-site builder, readers for the paper's datasets, and datalist checks."""

from .readers import (
    ConvertBraTSLabels,
    ConvertBraTSLabelsd,
    read_brats,
    read_breakhis,
    read_medmnist,
    read_slake,
    read_vqa_rad,
    split_by_group,
)
from .reference_sites import build_reference_sites, packaged_image
from .validation import DataValidationError, check_datalist, read_image, validate_datalist

__all__ = [
    "ConvertBraTSLabels",
    "ConvertBraTSLabelsd",
    "DataValidationError",
    "build_reference_sites",
    "check_datalist",
    "packaged_image",
    "read_brats",
    "read_breakhis",
    "read_image",
    "read_medmnist",
    "read_slake",
    "read_vqa_rad",
    "split_by_group",
    "validate_datalist",
]
