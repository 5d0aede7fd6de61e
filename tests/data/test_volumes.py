"""3D items (``segmentation_3d``): a split's contiguous slices written once as a volume on the source grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from omnifm_monai.data import DataValidationError, validate_datalist, write_datalist
from omnifm_monai.data.layout import TASKS, VOLUME_TASKS, datalist_path, find_sites
from omnifm_monai.data.sources import _Volume
from omnifm_monai.data.volumes import _runs, _volume_items, _volumes


def _volume(shape=(12, 10, 20)) -> _Volume:
    rng = np.random.default_rng(0)
    gm, wm = rng.random((2, *shape)).astype(np.float32) / 2
    affine = np.array([[-4.0, 0, 0, 30], [0, 4.0, 0, -50], [0, 0, 4.0, -20], [0, 0, 0, 1]])
    return _Volume("synthetic", rng.random(shape, dtype=np.float32), affine, "test", "test",
                   tissue=np.stack([gm, wm]), tissue_source="template", crop=(2, 11, 1, 9))  # fmt: skip


def test_runs_group_contiguous_slices_of_a_split():
    assert _runs([7, 3, 4, 5, 12, 13], 1) == [(3, 5), (7, 7), (12, 13)]
    assert _runs([0, 2, 4, 9], 2) == [(0, 4), (9, 9)]  # a stride of 2 keeps every other slice
    assert _runs([], 1) == []


def test_volumes_are_cropped_on_the_source_grid_with_argmax_labels(tmp_path):
    vol = _volume()
    splits = {"training": [2, 3, 4, 5, 6, 7], "validation": [10, 11, 12], "test": [15, 16, 17, 18]}
    records = _volumes(vol, tmp_path, splits)
    assert [(r["split"], r["z_range"]) for r in records] == [
        ("training", [2, 7]), ("validation", [10, 12]), ("test", [15, 18])
    ]  # fmt: skip
    rec = records[2]
    image, label = (nib.load(tmp_path / rec[k]) for k in ("image", "label"))
    assert image.shape == label.shape == (9, 8, 4) == tuple(rec["shape"])  # crop box (2:11, 1:9), z 15..18
    np.testing.assert_allclose(image.affine, label.affine)
    # voxel (i, j, k) of the written volume is voxel (2 + i, 1 + j, 15 + k) of the source, at the same world point
    np.testing.assert_allclose(image.affine @ [3, 4, 2, 1], vol.affine @ [5, 5, 17, 1])
    np.testing.assert_allclose(np.asarray(image.dataobj), vol.image[2:11, 1:9, 15:19])
    gm, wm = vol.tissue[:, 2:11, 1:9, 15:19]
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.argmax(np.stack([1 - gm - wm, gm, wm]), 0))
    items = _volume_items(vol, records, ("training", "validation", "test"))
    assert [len(v) for v in items.values()] == [1, 1, 1]
    assert items["test"][0]["provenance"]["z_range"] == [15, 18]


def test_the_volume_task_is_a_layout_task_that_validation_knows(tmp_path):
    assert "segmentation_3d" in VOLUME_TASKS and "segmentation_3d" not in TASKS  # not built by default
    records = _volumes(_volume(), tmp_path / "site", {"training": [1, 2, 3], "validation": [], "test": []})
    items = _volume_items(_volume(), records, ("training", "validation", "test"))
    write_datalist(
        tmp_path / "site", "segmentation_3d", {"labels": {"0": "bg", "1": "gm", "2": "wm"}, **items}
    )
    assert find_sites(tmp_path, "segmentation_3d") == {"site": str(tmp_path / "site")}
    assert validate_datalist(datalist_path(tmp_path / "site", "segmentation_3d"), "segmentation_3d")["items"] == {
        "training": 1, "validation": 0, "test": 0
    }  # fmt: skip
    broken = json.loads(datalist_path(tmp_path / "site", "segmentation_3d").read_text())
    del broken["training"][0]["label"]
    write_datalist(tmp_path / "site", "segmentation_3d", broken)
    with pytest.raises(DataValidationError, match="label"):
        validate_datalist(datalist_path(tmp_path / "site", "segmentation_3d"), "segmentation_3d")
