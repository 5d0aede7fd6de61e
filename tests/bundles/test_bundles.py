"""Model-zoo style checks of every bundle: properties, a 1-epoch run, evaluate, inference, verify, export."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata
from monai.transforms import LoadImage

from omnifm_monai.data import packaged_image
from omnifm_monai.data.dicom import ClinicalDicomReader
from omnifm_monai.fl.bundle import bundle_parser

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
SCHEMA = BUNDLES_DIR / "metadata_schema.json"

# bundle -> the datalist task it reads, the site it trains on, its key metric, and what inference writes
SPECS = {
    "omnifm_segmentation": dict(
        task="segmentation", site="icbm_t1", key_metric="val_mean_dice", output="nifti", postfix="seg"
    ),
    "omnifm_classification": dict(
        task="classification", site="icbm_t1", key_metric="val_accuracy", output="json", postfix="level"
    ),
    "omnifm_super_resolution": dict(
        task="super_resolution", site="icbm_t1", key_metric="val_ssim", output="nifti", postfix="sr"
    ),  # PSNR is unbounded
    # two inputs (image, question): MONAI's ckpt_export traces a single input, so configs/export.json traces both
    "omnifm_vqa": dict(
        task="vqa",
        site="icbm_t1",
        key_metric="val_accuracy",
        output="json",
        postfix="answer",
        forward_args={"extra_forward_args": {"question": torch.randint(1, 20, (1, 24))}},
    ),
}

pytestmark = pytest.mark.slow


def _overrides(name: str, root: Path, tmp: Path, **extra) -> dict:
    return {
        "bundle_root": str(BUNDLES_DIR / name),
        "dataset_dir": str(root / SPECS[name]["site"]),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "image_size": 32,
        "batch_size": 4,
        "max_epochs": 1,
        **extra,
    }


def _workflow(name: str, configs: list[str], workflow_type: str, overrides: dict) -> ConfigWorkflow:
    cfg = BUNDLES_DIR / name / "configs"
    return ConfigWorkflow(
        config_file=[str(cfg / c) for c in configs],
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def _run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    assert not workflow.check_properties()  # every property MONAI's FL client relies on is defined
    workflow.run()
    workflow.finalize()


def _infer(name: str, overrides: dict, input_path, out_dir: Path) -> None:
    """The bundle's inference (train.json + inference.json) on ``input_path``, written to ``out_dir``."""
    _run(
        _workflow(
            name,
            ["train.json", "inference.json"],
            "infer",
            {**overrides, "input_path": str(input_path), "output_dir": str(out_dir)},
        )
    )


def _dicom_series(folder: Path, depth: int = 3) -> Path:
    """A real CT slice written as a ``depth``-slice DICOM series (positions 2.5 mm apart)."""
    folder.mkdir(parents=True)
    for i in range(depth):
        ds = pydicom.dcmread(packaged_image("CT_small.dcm"))
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 2.5 * i]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"slice{i}.dcm")
    return folder


def _dicom_slice(path: Path, orientation: list[int]) -> Path:
    """The real MR slice with its header's orientation set to ``orientation`` (ImageOrientationPatient)."""
    ds = pydicom.dcmread(packaged_image("MR_small.dcm"))
    ds.ImageOrientationPatient = orientation
    ds.save_as(path)
    return path


def _multi_frame(path: Path, frames: int = 3) -> Path:
    """The real MR slice and shifted copies of it as one multi-frame DICOM file."""
    ds = pydicom.dcmread(packaged_image("MR_small.dcm"))
    pixels = np.stack([np.roll(ds.pixel_array, 4 * i, axis=0) for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path)
    return path


PLANES = {"axial": [1, 0, 0, 0, 1, 0], "sagittal": [0, 1, 0, 0, 0, -1], "coronal": [1, 0, 0, 0, 0, -1]}


@pytest.fixture(scope="module", params=sorted(SPECS))
def trained(request, reference_sites, tmp_path_factory):
    """Train each bundle for one epoch in a temporary folder; yields (name, overrides)."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    overrides = _overrides(name, reference_sites, tmp)
    _run(_workflow(name, ["train.json"], "train", overrides))
    return name, overrides


def test_train_writes_a_checkpoint_with_the_bank(trained):
    _, overrides = trained
    ckpt = Path(overrides["ckpt_dir"]) / "model.pt"
    state = torch.load(ckpt, weights_only=True)
    assert any(k.startswith("bank.") for k in state)
    assert state["bank.valid"].any()  # SpectralBankRefresh filled the bank from the site's own data
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_evaluate_reports_finite_metrics(trained):
    name, overrides = trained
    _run(_workflow(name, ["train.json", "evaluate.json"], "eval", overrides))
    with open(Path(overrides["output_dir"]) / "metrics.csv") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if row}
    key = SPECS[name]["key_metric"]
    assert key in metrics and math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0 + 1e-6
    if name == "omnifm_segmentation":  # HD95 is a test-split metric (train-time validation tracks Dice only)
        assert "val_hd95" in metrics


@pytest.mark.parametrize("source", ["nifti", "dicom", "dicom_sagittal", "dicom_series", "multi_frame"])
def test_inference_keeps_the_inputs_grid(trained, source, reference_sites, tmp_path):
    name, overrides = trained
    spec = SPECS[name]
    if source == "nifti":
        datalist = json.loads((reference_sites / spec["site"] / f"{spec['task']}.json").read_text())
        input_path = str(reference_sites / spec["site"] / datalist["test"][0]["image"])
    elif source == "dicom":
        input_path = packaged_image("MR_small.dcm")
    elif source == "dicom_sagittal":
        input_path = str(_dicom_slice(tmp_path / "sagittal.dcm", PLANES["sagittal"]))
    elif source == "multi_frame":
        input_path = str(_multi_frame(tmp_path / "frames.dcm"))
    else:
        input_path = str(_dicom_series(tmp_path / "series"))
    out_dir = tmp_path / "predictions"
    _infer(name, overrides, input_path, out_dir)
    written = [p for p in out_dir.iterdir() if not p.name.endswith("_novelty.json")]
    assert len(written) == 1 and spec["postfix"] in written[0].name
    # the out-of-distribution record beside it: a finite score against the threshold calibrated in training
    (record,) = [json.loads(p.read_text()) for p in out_dir.glob("*_novelty.json")]
    assert 0.0 <= record["novelty"] <= 2.0 and record["threshold"] > 0.0
    assert record["out_of_distribution"] == (record["novelty"] > record["threshold"])
    image = LoadImage(reader=ClinicalDicomReader, image_only=True)(input_path)
    if spec["output"] == "nifti":
        pred = LoadImage(image_only=True)(written[0])
        assert tuple(pred.shape) == tuple(image.shape)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    else:
        result = json.loads(written[0].read_text())
        depth = image.shape[-1] if source in ("dicom_series", "multi_frame") else 1
        assert len(result["predictions"]) == depth
        assert all(0.0 <= p["probability"] <= 1.0 for p in result["predictions"])


def test_a_slice_is_segmented_alike_whatever_plane_its_header_names(trained, tmp_path):
    """One MR slice whose header says axial, sagittal or coronal: each is oriented within its own plane (these
    three orientations all reach RAS by flipping both in-plane axes), so the network sees the same 2D image
    and the label maps, written on the input's grid, are equal. Oriented as a volume, the non-axial slices
    would become stacks of 1-pixel strips."""
    name, overrides = trained
    if name != "omnifm_segmentation":
        pytest.skip("a property of the segmentation bundle's label map")
    maps = {}
    for plane, orientation in PLANES.items():
        path = _dicom_slice(tmp_path / f"{plane}.dcm", orientation)
        out_dir = tmp_path / f"pred_{plane}"
        _infer(name, overrides, path, out_dir)
        pred = LoadImage(image_only=True)(next(out_dir.glob("*_seg.nii.gz")))
        np.testing.assert_allclose(
            pred.affine, LoadImage(reader=ClinicalDicomReader, image_only=True)(str(path)).affine, atol=1e-4
        )
        maps[plane] = np.asarray(pred)
    assert len(np.unique(maps["axial"])) > 1  # something was segmented
    np.testing.assert_array_equal(maps["sagittal"], maps["axial"])
    np.testing.assert_array_equal(maps["coronal"], maps["axial"])


def test_verify_metadata_and_net_in_out(trained):
    name, overrides = trained
    cfg = BUNDLES_DIR / name / "configs"
    verify_metadata(meta_file=str(cfg / "metadata.json"), filepath=str(SCHEMA))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(cfg / "metadata.json"),
        config_file=str(cfg / "train.json"),
        bundle_root=overrides["bundle_root"],
        dataset_dir=overrides["dataset_dir"],  # VQA sizes come from the data
        **SPECS[name].get("forward_args", {}),
    )


def test_export_torchscript_matches_the_checkpoint(trained, tmp_path):
    name, overrides = trained
    cfg = BUNDLES_DIR / name / "configs"
    target = tmp_path / "model.ts"
    ckpt = Path(overrides["ckpt_dir"]) / "model.pt"
    if name == "omnifm_vqa":  # traced with both inputs by the bundle's export config, as its docs run it
        export = {**overrides, "image_size": 128, "filepath": str(target)}
        workflow = _workflow(name, ["train.json", "export.json"], None, export)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    else:
        ckpt_export(
            net_id="network_def",
            filepath=str(target),
            ckpt_file=str(ckpt),
            meta_file=str(cfg / "metadata.json"),
            config_file=str(cfg / "train.json"),
            bundle_root=overrides["bundle_root"],
            dataset_dir=overrides["dataset_dir"],
            use_trace=True,
            input_shape=[1, 1, 128, 128],
        )
    exported, meta, extra = load_net_with_metadata(str(target), more_extra_files=("train.json",))
    assert meta["version"] == json.loads((cfg / "metadata.json").read_text())["version"]
    assert json.loads(extra["train.json"]) == json.loads((cfg / "train.json").read_text())
    workflow = _workflow(name, ["train.json"], "train", overrides)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(ckpt, weights_only=True))
    inputs = [torch.rand(2, 1, 128, 128)]
    if name == "omnifm_vqa":  # questions other than the traced example's, one of them padded
        question = torch.randint(1, len(workflow.parser.get_parsed_content("vocabulary")), (2, 24))
        question[1, 6:] = 0
        inputs.append(question)
        # the question is a live input of the trace, not a constant
        assert not torch.allclose(exported(*inputs), exported(inputs[0], question.roll(1, 0)), atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(exported(*inputs), network.eval()(*inputs), atol=1e-4)


def test_vqa_verify_net_in_out_from_the_command_line(reference_sites):
    """The documented command (docs/README.md), run where the docs run it; the question comes as a list."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
            "--meta_file", "configs/metadata.json", "--config_file", "configs/train.json", "--bundle_root", ".",
            "--extra_forward_args", "{'question': [[3, 4, 5, 6, 7]]}",
            "--dataset_dir", str(reference_sites / SPECS["omnifm_vqa"]["site"]),
        ],
        cwd=BUNDLES_DIR / "omnifm_vqa", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data shape of network is verified with no error." in proc.stderr + proc.stdout


def test_segmentation_of_a_volume_does_not_depend_on_how_it_is_stored(trained, reference_sites, tmp_path):
    """The same anatomy stored axially and with its axes permuted (another orientation, same world geometry)
    is segmented alike: inference reorients to RAS first and writes on the input's own grid."""
    import nibabel as nib

    name, overrides = trained
    if name != "omnifm_segmentation":
        pytest.skip("a volume-wise property of the segmentation bundle")
    spec = SPECS[name]
    datalist = json.loads((reference_sites / spec["site"] / f"{spec['task']}.json").read_text())
    slices = [
        np.asarray(
            nib.load(reference_sites / spec["site"] / item["image"]).dataobj, dtype=np.float32
        ).squeeze()
        for item in datalist["test"][:4]
    ]
    volume = np.stack(slices, axis=-1)  # (x, y, z): axial slices along the last axis, RAS
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    permuted_affine = affine[:, [0, 2, 1, 3]]  # array axes (x, z, y): the same voxels in the same places
    stored = {"axial": (volume, affine), "permuted": (volume.transpose(0, 2, 1), permuted_affine)}
    predictions = {}
    for label, (data, aff) in stored.items():
        path = tmp_path / f"{label}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), path)
        out_dir = tmp_path / f"pred_{label}"
        _infer(name, overrides, path, out_dir)
        pred = nib.load(next(out_dir.glob("*_seg.nii.gz")))
        assert pred.shape == data.shape
        np.testing.assert_allclose(pred.affine, aff, atol=1e-4)
        predictions[label] = np.asarray(pred.dataobj)
    np.testing.assert_array_equal(predictions["permuted"].transpose(0, 2, 1), predictions["axial"])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_inference_refuses_an_unusable_input_in_one_line_and_writes_nothing(name, tmp_path):
    """From the command line a user runs: exit status 1, one line naming the file and the problem, no
    traceback, no output folder (the input is checked before the network or the checkpoint is touched)."""
    import subprocess
    import sys

    import nibabel as nib

    data = np.random.default_rng(0).random((16, 16, 2), dtype=np.float32)
    data[3, 4, 1] = np.nan
    bad = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), bad)
    cfg = BUNDLES_DIR / name / "configs"
    out = tmp_path / "predictions"
    proc = subprocess.run(
        [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", f"['{cfg / 'train.json'}','{cfg / 'inference.json'}']",
            "--bundle_root", str(BUNDLES_DIR / name), "--input_path", str(bad), "--output_dir", str(out),
            "--ckpt_dir", str(tmp_path / "no_checkpoint"),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert lines == [f"error: {bad}: the image holds NaN or Inf values."], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_setting_that_is_not_a_positive_number_fails_before_training_writes_anything(
    name, reference_sites, tmp_path
):
    from omnifm_monai.data import DataValidationError

    for setting, value in (("max_epochs", "abc"), ("batch_size", 0), ("learning_rate", -1e-3)):
        workflow = _workflow(
            name, ["train.json"], "train", _overrides(name, reference_sites, tmp_path, **{setting: value})
        )
        with pytest.raises(Exception) as err:  # MONAI wraps it in its config-evaluation error
            workflow.initialize()
        cause = err.value
        while cause.__cause__ is not None:
            cause = cause.__cause__
        assert isinstance(cause, DataValidationError) and f"setting {setting} must be a positive" in str(
            cause
        )
        assert not any(tmp_path.rglob("*")), setting  # no checkpoint, log or TensorBoard file


@pytest.mark.parametrize("name", ["omnifm_segmentation", "omnifm_super_resolution"])
def test_unet_bundles_fuse_at_16_positions_or_more_and_send_at_most_a_tenth_more_than_the_backbone(name):
    from omnifm_monai.fl.bundle import build_network
    from omnifm_monai.fl.strategies import strategy_class
    from omnifm_monai.networks import OmniFM

    bundle, no_data = BUNDLES_DIR / name, {"datalist_meta": {}}
    network = build_network(bundle, no_data)
    tokens, _ = network.adapter.encode(network.backbone, torch.rand(1, 1, 32, 32))  # the benchmark's size
    assert tokens.shape[1] >= 16
    plain = build_network(bundle, {**no_data, **{f"network_def::{p}": False for p in OmniFM.PARTS}})

    def sent(net, strategy):  # what a site uploads each round: every key but the private ones
        private = strategy_class(strategy)().private_keys(net)
        return sum(v.numel() * v.element_size() for k, v in net.state_dict().items() if k not in private)

    assert sent(network, "omnifm") <= 1.10 * sent(plain, "fedavg")


@pytest.mark.parametrize("name", [*sorted(SPECS), "omnifm_segmentation_3d"])
def test_the_optimiser_updates_all_parameters_at_once_with_the_per_parameter_loops_values(name):
    # foreach: one call per step for all parameters instead of a loop (shorter steps, benchmarks/overhead.py),
    # the same values to the last bit, so runs of earlier bundle versions reproduce
    extra = {"datalist_meta": {}, "device": "$torch.device('cpu')"}
    if name == "omnifm_vqa":
        extra.update(vocabulary=["what", "is", "this"], answers=["yes", "no"])
    models = {}
    for foreach in (True, False):
        torch.manual_seed(0)
        parser = bundle_parser(BUNDLES_DIR / name, {**extra, "optimizer#foreach": foreach})
        models[foreach] = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    assert models[True][1].defaults["foreach"] is True
    assert len(models[True][1].param_groups) == 2  # the backbone with weight decay, OmniFM's parts without
    before = [p.detach().clone() for p in models[True][0].parameters()]
    for step in range(3):
        for network, optimizer in models.values():
            torch.manual_seed(step)  # the same gradients for both
            for p in network.parameters():
                p.grad = torch.randn_like(p)
            optimizer.step()
    (fast, _), (loop, _) = models[True], models[False]
    assert all(
        not torch.equal(a, b) for a, b in zip(before, fast.parameters(), strict=True)
    )  # every parameter moved
    assert all(
        torch.equal(a, b) for a, b in zip(fast.state_dict().values(), loop.state_dict().values(), strict=True)
    )
