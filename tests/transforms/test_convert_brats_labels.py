"""BraTS label values {0, 1, 2, 4} -> classes {0, 1, 2, 3}, or a whole-tumour mask; array and dictionary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from omnifm_monai.transforms import (
    ConvertBraTSLabels,
    ConvertBraTSLabelsD,
    ConvertBraTSLabelsd,
    ConvertBraTSLabelsDict,
)

LABELS = np.array([[[0, 1], [2, 4]]], dtype=np.uint8)  # (C, H, W), the values a BraTS seg file holds


@pytest.mark.parametrize("as_torch", [False, True])
def test_classes_and_whole_tumour(as_torch):
    img = torch.as_tensor(LABELS) if as_torch else LABELS
    out = ConvertBraTSLabels()(img)
    assert type(out) is type(img) and out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(np.asarray(out), [[[0, 1], [2, 3]]])
    np.testing.assert_array_equal(np.asarray(ConvertBraTSLabels(whole_tumour=True)(img)), [[[0, 1], [1, 1]]])
    brats_2023 = np.array([0, 1, 2, 3])  # BraTS 2023 labels enhancing tumour 3: it stays 3
    np.testing.assert_array_equal(np.asarray(ConvertBraTSLabels()(brats_2023)), [0, 1, 2, 3])


def test_metatensor_keeps_its_metadata():
    img = MetaTensor(torch.as_tensor(LABELS), affine=torch.eye(4) * 2, meta={"filename_or_obj": "seg.nii.gz"})
    out = ConvertBraTSLabels()(img)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    assert out.meta["filename_or_obj"] == "seg.nii.gz"


def test_dictionary_version_and_aliases():
    assert ConvertBraTSLabelsD is ConvertBraTSLabelsDict is ConvertBraTSLabelsd
    d = {"label": LABELS, "image": LABELS.astype(np.float32)}
    out = ConvertBraTSLabelsd("label")(d)
    assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(out["image"], d["image"])  # other keys untouched
    whole = ConvertBraTSLabelsd("label", whole_tumour=True)({"label": np.array([0, 1, 2, 4])})["label"]
    np.testing.assert_array_equal(whole, [0, 1, 1, 1])
    assert ConvertBraTSLabelsd("seg", allow_missing_keys=True)({"label": LABELS})["label"] is LABELS
