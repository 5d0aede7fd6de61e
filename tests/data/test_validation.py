"""validate_datalist: a valid datalist passes; each kind of bad input fails naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from omnifm_monai.data.validation import DataValidationError, check_datalist, validate_datalist

pydicom_data = pytest.importorskip("pydicom.data")


def _nii(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path.name


def _datalist(folder: Path, name: str = "datalist.json", **content) -> Path:
    path = folder / name
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A valid segmentation site: 3 NIfTI images with label maps."""
    rng = np.random.default_rng(0)
    items = []
    for k in range(3):
        seg = np.zeros((8, 8, 4), np.uint8)
        seg[2:5, 2:5, 1:3] = 1 + k % 2
        items.append(
            {
                "image": _nii(tmp_path / f"img{k}.nii.gz", rng.random((8, 8, 4)).astype(np.float32)),
                "label": _nii(tmp_path / f"seg{k}.nii.gz", seg),
            }
        )
    labels = {"0": "background", "1": "a", "2": "b"}
    _datalist(tmp_path, labels=labels, training=items[:2], validation=items[2:], test=[])
    return tmp_path


def _snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _fails(path: Path, task: str, *words: str, **kwargs) -> None:
    with pytest.raises(DataValidationError) as err:
        validate_datalist(path, task, **kwargs)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_valid_datalist_passes_and_writes_nothing(site):
    before = _snapshot(site)
    out = validate_datalist(site / "datalist.json", "segmentation", expected_channels=1)
    assert out["items"] == {"training": 2, "validation": 1, "test": 0} and out["files_read"] == 6
    assert validate_datalist(site / "datalist.json", "segmentation", max_items=1)["files_read"] == 4
    assert validate_datalist(site / "datalist.json", "segmentation", check_images=False)["files_read"] == 0
    assert check_datalist(site / "datalist.json", "segmentation") == str(site / "datalist.json")
    assert _snapshot(site) == before


def test_usable_from_bundle_config(site):
    path = str(site / "datalist.json")
    parser = ConfigParser(
        {
            "imports": ["$import omnifm_monai", "$import omnifm_monai.data.validation"],
            "datalist": f"$omnifm_monai.data.validation.check_datalist('{path}', 'segmentation', expected_channels=1)",
            "checked": {"_target_": "omnifm_monai.data.validation.check_datalist", "datalist_path": path, "task": "segmentation"},
            "bad": f"$omnifm_monai.data.validation.check_datalist('{path}', 'segmentation', expected_channels=3)",
        }
    )  # fmt: skip
    assert parser.get_parsed_content("datalist") == path and parser.get_parsed_content("checked") == path
    with pytest.raises(RuntimeError) as err:  # MONAI wraps expression errors; the cause is ours
        parser.get_parsed_content("bad")
    assert isinstance(err.value.__cause__, DataValidationError) and "channels" in str(err.value.__cause__)


def test_datalist_level_errors(site):
    _fails(site / "nope.json", "segmentation", "nope.json", "not found")
    (site / "broken.json").write_text('{"training": [')
    _fails(site / "broken.json", "segmentation", "broken.json", "JSON")
    _fails(_datalist(site, "empty.json", training=[], validation=[]), "segmentation", "empty.json", "empty")
    keys = _datalist(site, "keys.json", training=[{"image": "img0.nii.gz"}])
    _fails(keys, "segmentation", "keys.json", "missing", "label")
    with pytest.raises(ValueError, match="task"):
        validate_datalist(site / "datalist.json", "detection")


def test_missing_files(site):
    gone = _datalist(site, "gone.json", training=[{"image": "absent_img.nii.gz", "label": "seg0.nii.gz"}])
    _fails(gone, "segmentation", "absent_img.nii.gz", "not found")
    gone = _datalist(site, "gone.json", training=[{"image": "img0.nii.gz", "label": "absent_seg.nii.gz"}])
    _fails(gone, "segmentation", "absent_seg.nii.gz", "not found")


def test_truncated_nifti(site):
    data = (site / "img0.nii.gz").read_bytes()
    (site / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    bad = _datalist(site, "cut.json", training=[{"image": "cut.nii.gz", "label": "seg0.nii.gz"}])
    _fails(bad, "segmentation", "cut.nii.gz", "truncated")
    before = _snapshot(site)
    _fails(bad, "segmentation", "cut.nii.gz", check_images=True)
    assert _snapshot(site) == before
    validate_datalist(bad, "segmentation", check_images=False)  # existence only: passes


def test_dicom_file_series_and_corrupt(tmp_path):
    src = pydicom_data.get_testdata_file("CT_small.dcm")
    (tmp_path / "series").mkdir()
    for k in range(3):  # a series folder: the image path is the folder
        shutil.copy(src, tmp_path / "series" / f"slice{k}.dcm")
    shutil.copy(src, tmp_path / "ct.dcm")
    data = Path(src).read_bytes()
    (tmp_path / "corrupt.dcm").write_bytes(data[: len(data) // 2])
    classes = ["normal", "abnormal"]
    good = _datalist(
        tmp_path,
        "good.json",
        classes=classes,
        training=[{"image": "series", "label": 0}, {"image": "ct.dcm", "label": 1}],
    )
    assert validate_datalist(good, "classification", expected_channels=1)["files_read"] == 2
    bad = _datalist(tmp_path, "bad.json", classes=classes, training=[{"image": "corrupt.dcm", "label": 0}])
    _fails(bad, "classification", "corrupt.dcm", "corrupt", "DICOM")
    (tmp_path / "series" / "slice1.dcm").write_bytes(data[: len(data) // 2])
    _fails(good, "classification", "slice1.dcm", "corrupt")  # the bad slice is named, not just the folder


def test_image_content_errors(site):
    _fails(site / "datalist.json", "segmentation", "img0.nii.gz", "channels", expected_channels=3)
    nan = np.ones((8, 8, 4), np.float32)
    nan[0, 0, 0] = np.nan
    _nii(site / "nan.nii.gz", nan)
    bad = _datalist(site, "nan.json", training=[{"image": "nan.nii.gz", "label": "seg0.nii.gz"}])
    _fails(bad, "segmentation", "nan.nii.gz", "NaN")
    _nii(site / "soft.nii.gz", np.full((8, 8, 4), 0.5, np.float32))
    bad = _datalist(site, "soft.json", training=[{"image": "img0.nii.gz", "label": "soft.nii.gz"}])
    _fails(bad, "segmentation", "soft.nii.gz", "non-integer")
    _nii(site / "seg7.nii.gz", np.full((8, 8, 4), 7, np.uint8))
    bad = _datalist(
        site,
        "seg7.json",
        labels={"0": "bg", "1": "a"},
        training=[{"image": "img0.nii.gz", "label": "seg7.nii.gz"}],
    )
    _fails(bad, "segmentation", "seg7.nii.gz", "[7]")


def test_label_index_errors(site):
    bad = _datalist(site, "cls.json", classes=["a", "b"], training=[{"image": "img0.nii.gz", "label": 5}])
    _fails(bad, "classification", "cls.json", "out of range")
    bad = _datalist(site, "cls.json", classes=["a", "b"], training=[{"image": "img0.nii.gz", "label": "b"}])
    _fails(bad, "classification", "cls.json", "not an integer")
    vqa = {"image": "img0.nii.gz", "question": "Is it?", "answer": "yes", "label": 2}
    _fails(
        _datalist(site, "vqa.json", answers=["no", "yes"], training=[vqa]), "vqa", "vqa.json", "out of range"
    )
    _fails(
        _datalist(site, "vqa.json", answers=["no", "yes"], training=[{**vqa, "label": 0}]),
        "vqa",
        "vqa.json",
        "'no'",
    )
    assert validate_datalist(
        _datalist(site, "vqa.json", answers=["no", "yes"], training=[{**vqa, "label": 1}]), "vqa"
    )


def test_files_are_read_once_until_one_changes(site, monkeypatch):
    """A site's workflows validate the same datalist many times: the files are read once per process, and
    read again as soon as one of them changes."""
    import omnifm_monai.data.validation as validation

    reads = []
    monkeypatch.setattr(validation, "_VALIDATED", set())
    monkeypatch.setattr(
        validation, "read_image", lambda p, _read=validation.read_image: reads.append(p) or _read(p)
    )
    datalist = site / "datalist.json"
    validate_datalist(datalist, "segmentation", expected_channels=1)
    first = len(reads)
    assert first == 6
    validate_datalist(datalist, "segmentation", expected_channels=1)
    assert len(reads) == first  # nothing changed: not read again
    validate_datalist(datalist, "segmentation", expected_channels=1, max_items=1)
    assert len(reads) > first  # other arguments: a check of its own
    nan = np.full((8, 8, 4), np.nan, np.float32)
    _nii(site / "img0.nii.gz", nan)  # a file changed after it passed: read again, and refused
    _fails(datalist, "segmentation", "img0.nii.gz", "NaN")


def test_inference_inputs_are_read_as_the_bundle_reads_them_or_refused_naming_the_file(tmp_path):
    """Every refusal names the file and the problem in one line; a usable NIfTI, DICOM and DICOM series pass."""
    from PIL import Image

    from omnifm_monai.data import packaged_image
    from omnifm_monai.data.validation import check_inference_input

    rng = np.random.default_rng(0)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((16, 16, 3), dtype=np.float32), np.eye(4)), good)
    check_inference_input(good)
    check_inference_input(packaged_image("MR_small.dcm"))

    def nifti(name, data):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / name)
        return tmp_path / name

    nan = rng.random((16, 16, 3), dtype=np.float32)
    nan[2, 3, 1] = np.nan
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8), "RGB").save(tmp_path / "colour.png")
    import pydicom

    ds = pydicom.dcmread(packaged_image("MR_small.dcm"))
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # one sagittal slice
    sagittal = tmp_path / "sagittal.dcm"
    ds.save_as(sagittal)
    cases = {
        nifti("nan.nii.gz", nan): "NaN",
        nifti("constant.nii.gz", np.full((16, 16, 3), 7.0, np.float32)): "constant",
        nifti("four_d.nii.gz", rng.random((8, 8, 4, 2, 3), dtype=np.float32)): "spatial dimensions",
        truncated: "cannot be read",
        tmp_path / "empty.nii.gz": "empty",
        tmp_path / "colour.png": "grey",
        tmp_path / "missing.nii.gz": "no such file",
    }
    check_inference_input(sagittal)  # a single slice of any plane is read in its own plane
    for path, problem in cases.items():
        with pytest.raises(DataValidationError, match=problem) as err:
            check_inference_input(path)
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message, message


def test_labels_outside_the_networks_classes_are_refused_without_a_declared_label_list(site):
    """Without a top-level ``labels`` / ``classes`` list, the bundle's ``num_classes`` bounds the values, so a
    label the network cannot predict fails before training instead of inside epoch 1."""
    datalist = json.loads((site / "datalist.json").read_text())
    undeclared = _datalist(site, "undeclared.json", training=datalist["training"])
    assert validate_datalist(undeclared, "segmentation", num_classes=3)  # values 0-2
    _fails(undeclared, "segmentation", "seg1.nii.gz", "[2]", "[0, 1]", num_classes=2)
    _fails(site / "datalist.json", "segmentation", "declared labels", num_classes=2)  # 0-2 declared
    # stored values the bundle maps to classes (BraTS's 0, 1, 2, 4): they, not range(num_classes), bound the maps
    assert validate_datalist(undeclared, "segmentation", num_classes=4, label_values=[0, 1, 2, 4])
    _fails(undeclared, "segmentation", "has values [1] not in the labels [0, 2, 4]", label_values=[0, 2, 4])
    _fails(site / "datalist.json", "segmentation", "declared labels [0, 1, 2]", label_values=[0, 2, 4])
    cls = _datalist(site, "cls.json", training=[{"image": "img0.nii.gz", "label": 7}])
    _fails(cls, "classification", "cls.json", "label 7 out of range for 4 classes", num_classes=4)
    assert validate_datalist(cls, "classification")  # no bound known: any index >= 0
