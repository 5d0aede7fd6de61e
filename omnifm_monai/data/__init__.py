"""Data: the one site layout, the reference-site builder, readers for the paper's datasets, datalist checks.

Modules: :mod:`.layout` (``<root>/<site>/<task>.json``), :mod:`.reference_sites` (the builder, with
:mod:`.sources`, :mod:`.simulation` and :mod:`.slicing`), :mod:`.federation` (sites that own their virtual
subjects, with :mod:`.subjects` and :mod:`.appearance`), :mod:`.readers`, :mod:`.prepare` (a downloaded dataset
or a folder of NIfTI images as sites: ``python -m omnifm_monai.data prepare``), :mod:`.validation`.
"""

# the BraTS label map is a transform (omnifm_monai.transforms); re-exported here, where it was first
from omnifm_monai.transforms import ConvertBraTSLabels, ConvertBraTSLabelsd

from .federation import BUILDER_VERSION, build_federation_sites
from .layout import TASKS, datalist_path, find_sites, write_datalist
from .prepare import dirichlet_label_skew, prepare
from .readers import (
    read_brats,
    read_breakhis,
    read_medmnist,
    read_nifti,
    read_slake,
    read_vqa_rad,
    read_vqa_sources,
    split_by_group,
)
from .reference_sites import build_reference_sites
from .sources import packaged_image
from .validation import (
    DataValidationError,
    check_datalist,
    check_inference_input,
    inference_input_or_exit,
    read_image,
    validate_datalist,
)

__all__ = [
    "BUILDER_VERSION",
    "ConvertBraTSLabels",
    "ConvertBraTSLabelsd",
    "DataValidationError",
    "TASKS",
    "build_federation_sites",
    "build_reference_sites",
    "check_datalist",
    "check_inference_input",
    "inference_input_or_exit",
    "datalist_path",
    "dirichlet_label_skew",
    "find_sites",
    "packaged_image",
    "prepare",
    "read_brats",
    "read_breakhis",
    "read_image",
    "read_medmnist",
    "read_nifti",
    "read_slake",
    "read_vqa_rad",
    "read_vqa_sources",
    "split_by_group",
    "validate_datalist",
    "write_datalist",
]
