"""InputRankNiftiWriter: a prediction is written with its input's spatial rank and full affine."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage

from omnifm_monai.data.writers import InputRankNiftiWriter

SAGITTAL = torch.tensor(
    [[0, 0, 0.8, 10.0], [-0.3, 0, 0, 20.0], [0, -0.3, 0, 30.0], [0, 0, 0, 1]], dtype=torch.float64
)


def _save(image, folder, writer=InputRankNiftiWriter):
    SaveImage(output_dir=folder, output_postfix="seg", separate_folder=False, resample=False, writer=writer)(
        image
    )
    return nib.load(next(folder.iterdir()))


@pytest.mark.parametrize("spatial", [(6, 5, 1), (6, 5, 4), (6, 5)])
def test_written_with_the_inputs_rank_and_affine(spatial, tmp_path):
    data = torch.arange(np.prod(spatial), dtype=torch.float32).reshape(1, *spatial)
    affine = SAGITTAL if len(spatial) == 3 else torch.eye(4, dtype=torch.float64)
    image = MetaTensor(data, affine=affine, meta={"spatial_shape": spatial, "filename_or_obj": "in.nii.gz"})
    written = _save(image, tmp_path)
    assert written.shape == spatial
    np.testing.assert_array_equal(np.asarray(written.dataobj), data[0].numpy())
    np.testing.assert_allclose(written.affine, affine.numpy(), atol=1e-6)


def test_monais_default_writer_cannot_write_a_sagittal_slice(tmp_path):
    """Why the writer exists: MONAI squeezes the slice to 2D and cannot place it with its 2D affine."""
    image = MetaTensor(torch.rand(1, 6, 5, 1), affine=SAGITTAL, meta={"spatial_shape": (6, 5, 1), "filename_or_obj": "in.nii.gz"})  # fmt: skip
    with pytest.raises(RuntimeError, match="cannot find a suitable writer"):
        _save(image, tmp_path, writer=None)
