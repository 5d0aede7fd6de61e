"""The 3D segmentation bundle end to end, model-zoo style: metadata and network checks, a short patch training
run from the command line, evaluation and sliding-window inference on whole volumes, TorchScript export, and a
1-round federation of two sites, all on small 3D federation sites (4 mm volumes, 32^3 patches)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata

from omnifm_monai.data import build_federation_sites

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
BUNDLE = BUNDLES_DIR / "omnifm_segmentation_3d"
CFG = BUNDLE / "configs"
SCHEMA = BUNDLES_DIR / "metadata_schema.json"
SITES = ("t1", "t2w")
SMALL = {"num_samples": 2, "batch_size": 2}  # 4 patches of 32^3 per step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sites_3d(tmp_path_factory):
    """Two 3D sites (real-intensity T1 and simulated T2w subjects), 2 / 1 / 1 subjects, volumes at 4 mm."""
    root = tmp_path_factory.mktemp("sites_3d") / "sites"
    build_federation_sites(
        root, sites=list(SITES), tasks="segmentation_3d", spacing=4.0, train_subjects=2, val_subjects=1,
        test_subjects=1,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def trained(sites_3d, tmp_path_factory):
    """Two epochs of patch training through ``python -m monai.bundle run``; yields the run's overrides."""
    tmp = tmp_path_factory.mktemp("trained_3d")
    overrides = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(sites_3d / "t1"),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "max_epochs": 2,
        "val_interval": 1,
        **SMALL,
    }
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CFG / "train.json"),
        "--meta_file", str(CFG / "metadata.json"), "--logging_file", str(CFG / "logging.conf"),
    ]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return overrides


def _workflow(configs: list[str], workflow_type: str | None, overrides: dict) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=[str(CFG / c) for c in configs],
        meta_file=str(CFG / "metadata.json"),
        logging_file=str(CFG / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def _run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    assert not workflow.check_properties()  # every property MONAI's FL client relies on is defined
    workflow.run()
    workflow.finalize()


def _network(overrides: dict) -> torch.nn.Module:
    """The bundle's network with the trained checkpoint loaded (strictly: every key matches)."""
    workflow = _workflow(["train.json"], "train", overrides)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(Path(overrides["ckpt_dir"]) / "model.pt", weights_only=True))
    return network.eval()


def _first_test_volume(sites_3d: Path, site: str = "t1") -> Path:
    datalist = json.loads((sites_3d / site / "segmentation_3d.json").read_text())
    return sites_3d / site / datalist["test"][0]["image"]


def test_verify_metadata_and_net_in_out(sites_3d):
    verify_metadata(meta_file=str(CFG / "metadata.json"), filepath=str(SCHEMA))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CFG / "metadata.json"),
        config_file=str(CFG / "train.json"),
        bundle_root=str(BUNDLE),
        dataset_dir=str(sites_3d / "t1"),
    )
    meta = json.loads((CFG / "metadata.json").read_text())["network_data_format"]
    assert meta["inputs"]["image"]["is_patch_data"] and len(meta["inputs"]["image"]["spatial_shape"]) == 3


def test_training_writes_a_checkpoint_that_the_network_loads(trained):
    state = torch.load(Path(trained["ckpt_dir"]) / "model.pt", weights_only=True)
    assert state["bank.valid"].any()  # SpectralBankRefresh filled the bank from the site's 3D patches
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    network = _network(trained)
    assert network.tokenizer.spatial_dims == 3
    with torch.no_grad():
        assert network(torch.rand(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_evaluate_scores_whole_test_volumes(trained):
    _run(_workflow(["train.json", "evaluate.json"], "eval", trained))
    with open(Path(trained["output_dir"]) / "metrics.csv") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if row}
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0 and math.isfinite(metrics["val_hd95"])


def test_inference_on_a_whole_volume_keeps_the_inputs_grid(trained, sites_3d, tmp_path):
    """A test volume stored as built and with its axes permuted (the same voxels at the same world points):
    each label map is written on its input's grid (shape and affine), and they agree voxel for voxel, since
    inference reorients to RAS and resamples before the sliding window and inverts both afterwards."""
    source = nib.load(_first_test_volume(sites_3d))
    data, affine = np.asarray(source.dataobj, dtype=np.float32), source.affine
    stored = {"as_built": (data, affine), "permuted": (data.transpose(2, 0, 1), affine[:, [2, 0, 1, 3]])}
    predictions = {}
    for label, (array, aff) in stored.items():
        path = tmp_path / f"{label}.nii.gz"
        nib.save(nib.Nifti1Image(array, aff), path)
        out_dir = tmp_path / f"pred_{label}"
        _run(
            _workflow(
                ["train.json", "inference.json"],
                "infer",
                {**trained, "input_path": str(path), "output_dir": str(out_dir)},
            )
        )
        (written,) = list(out_dir.glob("*_seg.nii.gz"))
        pred = nib.load(written)
        assert pred.shape == array.shape
        np.testing.assert_allclose(pred.affine, aff, atol=1e-4)
        predictions[label] = np.asarray(pred.dataobj)
    assert set(np.unique(predictions["as_built"])) <= {0, 1, 2}
    assert len(np.unique(predictions["as_built"])) > 1  # something was segmented
    np.testing.assert_array_equal(predictions["permuted"].transpose(1, 2, 0), predictions["as_built"])


def test_export_torchscript_reproduces_the_network_on_a_patch(trained, sites_3d, tmp_path):
    target = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(target),
        ckpt_file=str(Path(trained["ckpt_dir"]) / "model.pt"),
        meta_file=str(CFG / "metadata.json"),
        config_file=str(CFG / "train.json"),
        bundle_root=str(BUNDLE),
        dataset_dir=trained["dataset_dir"],
        use_trace=True,
        input_shape=[1, 1, 32, 32, 32],
    )
    exported, meta, extra = load_net_with_metadata(str(target), more_extra_files=("train.json",))
    assert meta["version"] == json.loads((CFG / "metadata.json").read_text())["version"]
    assert json.loads(extra["train.json"]) == json.loads((CFG / "train.json").read_text())
    network = _network(trained)
    volume = torch.as_tensor(np.asarray(nib.load(_first_test_volume(sites_3d)).dataobj, dtype=np.float32))
    patches = torch.stack([volume[:32, :32, :32], volume[-32:, -32:, -32:]])[:, None]  # two real patches
    with torch.no_grad():
        expected = network(patches)
        assert torch.allclose(exported(patches), expected, atol=1e-4)
        assert not torch.allclose(expected[0], expected[1], atol=1e-4)  # the patches differ, so do outputs


def test_label_values_map_stored_labels_to_classes_and_back(sites_3d):
    """BraTS / FeTS label maps keep {0, 1, 2, 4} on disk: ``label_values`` makes them classes 0-3 for training
    (four output channels) and inference writes the stored values back, a round trip."""
    overrides = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(sites_3d / "t1"),
        "label_values": [0, 1, 2, 4],
    }
    workflow = _workflow(["train.json", "inference.json"], None, overrides)
    parser = workflow.parser
    assert parser.get_parsed_content("num_classes") == 4
    stored = torch.tensor([0, 4, 2, 1, 4, 0]).reshape(1, 1, 1, 6).float()
    to_classes = next(t for t in parser.get_parsed_content("train#deterministic_transforms")
                      if type(t).__name__ == "MapLabelValued")  # fmt: skip
    classes = to_classes({"label": stored})["label"]
    assert classes.flatten().tolist() == [0, 3, 2, 1, 3, 0]
    back = next(t for t in parser.get_parsed_content("postprocessing").transforms
                if type(t).__name__ == "MapLabelValued")  # fmt: skip
    assert torch.equal(torch.as_tensor(back({"pred": classes})["pred"]).float(), stored)
    with torch.no_grad():
        assert parser.get_parsed_content("network_def")(torch.rand(1, 1, 32, 32, 32)).shape[1] == 4


def test_one_round_of_two_sites_in_the_simulator_and_in_nvflare(sites_3d, tmp_path, monkeypatch, nvflare_job):
    """The simulator's round, then the same round as an NVFlare SimEnv job: the same global weights and bank, bit
    for bit (the sites use the simulator's thread count)."""
    from omnifm_monai.fl import simulate
    from omnifm_monai.fl.simulator import load_checkpoint

    out = tmp_path / "run"
    results = simulate(
        str(BUNDLE), "omnifm", rounds=1, output=str(out), sites=list(SITES), reference_dir=str(sites_3d),
        overrides=SMALL,
    )  # fmt: skip
    assert set(results) == set(SITES)
    for metrics in results.values():
        assert 0.0 <= metrics["val_mean_dice"] <= 1.0 and math.isfinite(metrics["val_hd95"])
    weights = torch.load(out / "global_model.pt", weights_only=True)
    assert any(k.startswith("backbone.") and v.dim() == 5 for k, v in weights.items())  # 3D convolutions
    bank = torch.load(out / "bank.pt", weights_only=True)
    assert set(bank["site"].tolist()) == {0, 1}  # the server's bank holds both sites' summaries
    # each site's middle test slice through its model (a panel that fails is only logged, and left out)
    assert (out / "qualitative.png").is_file()
    # the same round as an NVFlare job
    monkeypatch.delenv("OMNIFM_THREADS", raising=False)
    job = nvflare_job
    site_dirs = {s: str(sites_3d / s) for s in SITES}
    recipe = job.build_recipe(str(BUNDLE), "omnifm", list(SITES), rounds=1, site_dirs=site_dirs, overrides=SMALL,
                              staging=str(tmp_path / "src"))  # fmt: skip
    result_dir = job.run(recipe, list(SITES), "sim", workspace=str(tmp_path / "ws"))
    result = job.check_result(result_dir, "omnifm", rounds=1, bundle=str(BUNDLE), sites=list(SITES))
    expected = load_checkpoint(out / "checkpoint.pt")
    assert set(result["weights"]) == set(expected["global_weights"])
    assert all(torch.equal(result["weights"][k], v) for k, v in expected["global_weights"].items())
    sim_bank = expected["server_state"]["bank"]
    assert all(torch.equal(result["state"]["bank"][k], sim_bank[k]) for k in sim_bank)
