"""The paper suite (``benchmarks/suites/paper.yaml``): its data are the user's downloads, prepared into sites."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402
import run  # noqa: E402


def test_paper_suite_reads_each_task_from_its_prepared_dataset(tmp_path):
    suite = run.load_suite("paper")
    assert suite["data"]["builder"] == "prepare"
    tasks = suite["tasks"]
    assert {t: spec["data"] for t, spec in tasks.items()} == {
        "classification": "medmnist",
        "super_resolution_x2": "breakhis",
        "vqa": "vqa",
        "segmentation_3d": "fets",
    }
    assert tasks["classification"]["overrides"]["image_size"] == 28  # the paper's MedMNIST resolution
    assert set(suite["published"]) == set(tasks)  # every task has the paper's numbers beside it
    cell = run.Cell("classification", "cross_modality", "omnifm", "scratch", 0)
    (tmp_path / "sites" / "medmnist" / "organamnist").mkdir(parents=True)
    (tmp_path / "sites" / "medmnist" / "organamnist" / "classification.json").write_text("{}")
    kwargs = run.simulate_kwargs(suite, cell, tmp_path)
    assert kwargs["sites"] == {"organamnist": str(tmp_path / "sites" / "medmnist" / "organamnist")}
    assert kwargs["strategy_options"]["modalities"] == kwargs["overrides"]["modalities"]
    # FeTS's institutions: as many sites as the download's partitioning CSV has, whatever their number
    for site in ("partition_10", "partition_2", "partition_x"):
        (tmp_path / "sites" / "fets" / site).mkdir(parents=True)
    for site in ("partition_10", "partition_2"):
        (tmp_path / "sites" / "fets" / site / "segmentation_3d.json").write_text("{}")
    cell = run.Cell("segmentation_3d", "cross_modality", "fedavg", "scratch", 0)
    assert run.simulate_kwargs(suite, cell, tmp_path)["sites"] == {
        s: str(tmp_path / "sites" / "fets" / s) for s in ("partition_10", "partition_2")
    }  # partition_x has no 3D segmentation datalist
    with pytest.raises(ValueError, match="--data_root"):
        run.prepare_data(suite, tmp_path / "sites", None)


def _downloads(root: Path, dataset_files) -> Path:
    """Miniature MedMNIST (two subsets, 28 px), BreaKHis, VQA-RAD and SLAKE in their release layouts."""
    subsets = (("organamnist", 28, (8, 4, 4)), ("pathmnist", 28, (8, 4, 4)))
    dataset_files.medmnist(root / "MedMNIST", subsets=subsets)
    dataset_files.breakhis(root)
    dataset_files.vqa_rad(root / "VQA_RAD")
    dataset_files.slake_release(root / "Slake1.0")
    dataset_files.brats(root / "MICCAI_FeTS2022_TrainingData", n_cases=6, per_partition=3)
    return root


@pytest.mark.slow
def test_paper_suite_runs_on_miniature_downloads(dataset_files, tmp_path):
    """One round of OmniFM on every task of the paper suite, on miniature files in each dataset's format."""
    suite = yaml.safe_load((ROOT / "benchmarks" / "suites" / "paper.yaml").read_text())
    suite.update(rounds=1, seeds=[0], experiments=[{"strategies": ["omnifm"]}])
    suite["overrides"]["batch_size"] = 4
    for task in ("super_resolution_x2", "vqa"):
        suite["tasks"][task]["overrides"]["image_size"] = 32
    suite["tasks"]["segmentation_3d"]["overrides"].update(  # CPU-sized
        {"pixdim": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "network_def#features": [4, 4, 8, 8, 16, 4]}
    )
    (tmp_path / "paper_tiny.yaml").write_text(yaml.safe_dump(suite))
    data, results = _downloads(tmp_path / "downloads", dataset_files), tmp_path / "results.csv"
    argv = ["--suite", str(tmp_path / "paper_tiny.yaml"), "--workdir", str(tmp_path / "work")]
    assert run.main([*argv, "--results", str(results), "--data_root", str(data)]) == 0
    with open(results) as f:
        rows = list(csv.DictReader(f))
    tested, trained = {}, {}
    for r in rows:
        if r["split"] == "test":
            tested.setdefault(r["task"], set()).add(r["site"])
            assert math.isfinite(float(r["value"])), r
        if r["metric"] == "upload_bytes":
            trained.setdefault(r["task"], set()).add(r["site"])
    assert trained == {  # the sites each download gives, one root per dataset
        "classification": {"organamnist", "pathmnist"},
        "super_resolution_x2": {"breakhis_40x", "breakhis_100x"},
        "vqa": {"vqa_rad", "slake_ct", "slake_mri"},
        "segmentation_3d": {"partition_1", "partition_2"},  # FeTS's institutions
    }
    assert tested == {
        **trained,
        "vqa": {"vqa_rad", "slake_ct"},
    }  # the miniature SLAKE has no MRI test question
    assert run.data_version(tmp_path / "work") == "prepare"
    # the report sets the paper's numbers beside this run's, in the paper's units
    report_file = tmp_path / "paper.md"
    assert report.main(["--suite", str(tmp_path / "paper_tiny.yaml"), "--results", str(results),
                        "--output", str(report_file), "--plots", str(tmp_path / "plots")]) == 0  # fmt: skip
    table = report_file.read_text().split("## Beside the paper", 1)[1].split("\n\n")[2].splitlines()
    ours = [float(r["value"]) for r in rows
            if r["task"] == "segmentation_3d" and r["split"] == "test" and r["metric"] == "mean_dice"]  # fmt: skip
    assert ours and f"| {100 * sum(ours) / len(ours):.2f} / 77.41 |" in next(
        r for r in table if "segmentation_3d" in r
    )
    assert "| not run / 35.95 |" in next(
        r for r in table if "super_resolution_x2" in r
    )  # OmniFM only: no FedAvg
