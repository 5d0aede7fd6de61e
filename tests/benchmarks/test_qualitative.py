"""benchmarks/qualitative.py: the figure's predictions are those the simulator's test evaluation scores."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifm_monai.fl import simulate
from omnifm_monai.fl.simulator import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SITES = ["icbm_t1", "icbm_t2w"]
SMALL = {"image_size": 32, "batch_size": 4}


def _load_module():
    # benchmarks/ is a folder of scripts, not a package: load the module by path (registered for dataclasses)
    spec = importlib.util.spec_from_file_location(
        "benchmarks_qualitative", ROOT / "benchmarks" / "qualitative.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


q = _load_module()


@pytest.fixture(scope="module")
def run_dir(reference_sites, tmp_path_factory):
    """``run_dir(task, strategy)``: a one-round run on SITES, made once per module."""
    root, made = tmp_path_factory.mktemp("qualitative_runs"), {}

    def make(task: str, strategy: str) -> Path:
        out = root / f"{task}_{strategy}"
        if out not in made:
            simulate(
                str(ROOT / "bundles" / f"omnifm_{task}"),
                strategy,
                rounds=1,
                output=str(out),
                sites={s: str(reference_sites / s) for s in SITES},
                overrides=SMALL,
            )
            made[out] = True
        return out

    return make


def _first_row(run: Path, site: str, metric: str) -> float:
    """The simulator's own per-item test metric (MetricsSaver) for the site's first test item."""
    with open(run / "sites" / site / "eval" / f"{metric}_raw.csv") as f:
        return float(next(csv.DictReader(f))["mean"])


def test_draw_panels_one_row_per_site_or_sites_side_by_side(tmp_path):
    image = np.random.default_rng(0).random((16, 16))
    rows = [
        (
            f"s{i}",
            [q.Panel(image, "in"), q.Panel((image > 0.5).astype(int), "gt", "label"), q.Panel(image, "p")],
        )
        for i in range(3)
    ]
    fig = q.draw_panels(rows, tmp_path / "grid.png")
    assert fig.axes[0].get_gridspec().get_geometry() == (3, 3)
    assert (tmp_path / "grid.png").stat().st_size > 0
    single = [(f"s{i}", [q.Panel(image, f"s{i}", caption="Q: a question\ntrue: yes")]) for i in range(3)]
    fig = q.draw_panels(single, tmp_path / "row.png")
    assert fig.axes[0].get_gridspec().get_geometry() == (1, 3)  # one panel per site: the sites side by side
    import matplotlib.image

    height, width = matplotlib.image.imread(tmp_path / "row.png").shape[:2]
    assert width > height


def test_dice_and_psnr_follow_the_bundle_metrics():
    target = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 0, 0]])
    assert q.dice(target, target, 3) == 1.0  # class 2 absent from the ground truth: ignored, not 0 or 1
    assert q.dice(torch.zeros_like(target), target, 3) == 0.0
    half = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    assert q.dice(half, target, 3) == pytest.approx(2 * 2 / (2 + 4))
    image = torch.full((8, 8), 0.5)
    assert q.psnr(image + 0.1, image) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, strategy",
    [
        ("segmentation", "omnifm"),
        ("super_resolution", "fedavg"),
        ("classification", "local"),
        ("vqa", "fedavg"),
    ],
)
def test_predictions_match_the_simulator_test_metrics(run_dir, task, strategy):
    run = run_dir(task, strategy)
    found, rows, preds = q.figure_panels({"A": run, "B": run})
    assert found == task and [site for site, _ in rows] == SITES
    for site, panels in rows:
        pred = preds["A"][site]
        np.testing.assert_array_equal(
            preds["B"][site].output, pred.output
        )  # the same run twice: deterministic
        folder = json.loads((run / "run.json").read_text())["sites"][site]
        first = json.loads((Path(folder) / f"{task}.json").read_text())["test"][0]
        if task == "segmentation":
            assert len(panels) == 2 + 2 and set(np.unique(pred.output)) <= {0, 1, 2}
            assert pred.score == pytest.approx(_first_row(run, site, "val_mean_dice"), abs=1e-5, nan_ok=True)
        elif task == "super_resolution":
            assert [p.title.split("\n")[1] for p in (panels[0], panels[-1])] == [
                "low-res input",
                "target (high-res)",
            ]
            assert pred.score == pytest.approx(_first_row(run, site, "val_psnr"), abs=1e-3)
            assert q.psnr(pred.image, pred.target) == pytest.approx(
                _first_row(run, site, "val_psnr_input"), abs=1e-3
            )
        else:
            assert pred.target == first["label"]
            assert float(pred.output == pred.target) == _first_row(run, site, "val_accuracy")
        if task == "classification":
            assert f"true: {first['class_name']}" in panels[0].title
        if task == "vqa":
            assert (
                first["question"].split()[0] in panels[0].caption
                and f"true: {first['answer']}" in panels[0].caption
            )


@pytest.mark.slow
def test_segmentation_figure_and_the_sites_of_a_centralized_run(run_dir, reference_sites, tmp_path):
    runs = {
        "FedAvg": run_dir("segmentation", "fedavg"),
        "Centralized": run_dir("segmentation", "centralized"),
    }
    _, rows, preds = q.figure_panels(runs)
    assert [site for site, _ in rows] == SITES and all(len(panels) == 2 + len(runs) for _, panels in rows)
    for site in SITES:  # the pooled model, tested on every site's own test split by the simulator too
        assert preds["Centralized"][site].score == pytest.approx(
            _first_row(runs["Centralized"], site, "val_mean_dice"), abs=1e-5, nan_ok=True
        )
    # a centralized run alone: its sites come from the pooled datalist's paths
    alone = {"Centralized": runs["Centralized"]}
    assert q.site_folders(alone, "segmentation") == {s: str(reference_sites / s) for s in SITES}
    assert list(q.site_folders(runs, "segmentation", ["icbm_t2w"])) == ["icbm_t2w"]
    assert list(q.site_folders(runs, "segmentation", max_sites=1)) == ["icbm_t1"]
    with pytest.raises(KeyError):
        q.site_folders(runs, "segmentation", ["colin_t1"])
    out = q.qualitative_figure(runs, tmp_path / "figures" / "seg.png", sites=["icbm_t2w"])
    assert out == tmp_path / "figures" / "seg.png" and out.stat().st_size > 0


@pytest.mark.slow
def test_untrained_residual_super_resolution_network_returns_its_input(run_dir, tmp_path):
    # the residual network zero-initialises its last convolution: zeroed again, it is the identity
    run = tmp_path / "identity"
    shutil.copytree(run_dir("super_resolution", "fedavg"), run)
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    zeroed = [k for k in checkpoint["global_weights"] if "final_conv" in k]
    assert zeroed
    for k in zeroed:
        checkpoint["global_weights"][k].zero_()
    save_checkpoint(run / "checkpoint.pt", checkpoint)
    preds = q.predict_run(run, q.site_folders({"identity": run}, "super_resolution"))
    assert list(preds) == SITES
    for pred in preds.values():
        np.testing.assert_array_equal(pred.output, pred.image)
        assert pred.score == pytest.approx(q.psnr(pred.image, pred.target))
