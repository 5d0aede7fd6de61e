"""ClinicalDicomReader: multi-frame, colour and non-axial DICOM files read as MONAI reads a series."""

import copy

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from monai.transforms import LoadImage  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from omnifm_monai.data import packaged_image  # noqa: E402
from omnifm_monai.data.dicom import LUMA_WEIGHTS, ClinicalDicomReader  # noqa: E402

IOP = {"axial": [1, 0, 0, 0, 1, 0], "sagittal": [0, 1, 0, 0, 0, -1], "coronal": [1, 0, 0, 0, 0, -1]}


def _load(path):
    return LoadImage(reader=ClinicalDicomReader, image_only=True, ensure_channel_first=True)(str(path))


def _frames(rng, count=3, rows=5, columns=4):
    return (rng.random((count, rows, columns)) * 1000).astype(np.uint16)


def _write(ds, pixels, path, **tags):
    ds = copy.deepcopy(ds)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    for name in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if name in ds:
            delattr(ds, name)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path)
    return path


@pytest.mark.parametrize("plane", sorted(IOP))
def test_a_multi_frame_file_reads_as_the_series_of_its_frames(plane, tmp_path):
    """Reference: the same frames as one single-frame file each, positioned along the slice normal, read by
    MONAI's own series reader. Data and affine agree; MONAI's reader alone puts the frames on the middle axis."""
    frames = _frames(np.random.default_rng(0))
    base = pydicom.dcmread(packaged_image("MR_small.dcm"))
    iop = IOP[plane]
    normal = np.cross(iop[:3], iop[3:])
    spacing = 2.5
    multi = _write(base, frames, tmp_path / "multi.dcm", NumberOfFrames=len(frames), ImageOrientationPatient=iop,
                   ImagePositionPatient=[0.0, 0.0, 0.0], SpacingBetweenSlices=spacing)  # fmt: skip
    series = tmp_path / "series"
    series.mkdir()
    for i, frame in enumerate(frames):
        _write(base, frame, series / f"{i}.dcm", ImageOrientationPatient=iop, InstanceNumber=i + 1,
               ImagePositionPatient=list(normal * spacing * i))  # fmt: skip
    from_file, from_series = _load(multi), _load(series)
    assert from_file.shape == (1, 4, 5, 3)  # (columns, rows, frames)
    np.testing.assert_array_equal(from_file.numpy(), from_series.numpy())
    np.testing.assert_allclose(from_file.affine.numpy(), from_series.affine.numpy(), atol=1e-6)
    from monai.data import PydicomReader

    plain = LoadImage(reader=PydicomReader, image_only=True, ensure_channel_first=True)(str(multi))
    assert plain.shape == (1, 5, 3, 4)  # what the reader fixes


@pytest.mark.parametrize("plane", sorted(IOP))
def test_a_single_slice_gets_its_normal_as_third_axis(plane, tmp_path):
    ds = pydicom.dcmread(packaged_image("MR_small.dcm"))
    ds.ImageOrientationPatient = IOP[plane]
    ds.save_as(tmp_path / "slice.dcm")
    image = _load(tmp_path / "slice.dcm")
    assert image.shape == (1, 64, 64, 1)
    affine = image.affine.numpy()[:3, :3]
    lps = np.cross(IOP[plane][:3], IOP[plane][3:]) * float(ds.SliceThickness)
    np.testing.assert_allclose(affine[:, 2], lps * [-1, -1, 1], atol=1e-6)
    assert abs(np.linalg.det(affine)) > 0  # invertible: any orientation transform can place it


def test_colour_is_read_as_luma_and_monochrome1_as_monochrome2(tmp_path, caplog):
    path = get_testdata_file("examples_rgb_color.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)  # (rows, columns, 3)
    with caplog.at_level("WARNING"):
        grey = _load(path)
    assert "examples_rgb_color.dcm: colour DICOM (RGB) read as grey" in caplog.text
    np.testing.assert_allclose(
        grey[0, ..., 0].numpy(), (rgb @ np.asarray(LUMA_WEIGHTS, np.float32)).T, rtol=1e-5
    )

    frames = _frames(np.random.default_rng(1), count=1)[0]
    base = pydicom.dcmread(packaged_image("MR_small.dcm"))
    mono2 = _load(_write(base, frames, tmp_path / "m2.dcm"))
    mono1 = _load(_write(base, frames, tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(mono1.numpy(), frames.max() + frames.min() - mono2.numpy())


def test_a_colour_multi_frame_ultrasound_is_a_grey_volume_of_its_frames():
    path = get_testdata_file("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    image = _load(path)
    assert image.shape == (1, ds.Columns, ds.Rows, ds.NumberOfFrames)
    first = ds.pixel_array[0].astype(np.float32) @ np.asarray(LUMA_WEIGHTS, np.float32)
    np.testing.assert_allclose(image[0, ..., 0].numpy(), first.T, rtol=1e-5)
