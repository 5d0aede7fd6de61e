"""Cross-site evaluation (``python -m omnifm_monai.fl evaluate``) of a finished simulator run."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from omnifm_monai.fl import simulate
from omnifm_monai.fl.evaluate import RunFolderError, cross_site_evaluate, load_run

BUNDLE = str(Path(__file__).resolve().parents[2] / "bundles" / "omnifm_segmentation")
SMALL = {"image_size": 32, "batch_size": 8}
SITES = ["icbm_t1", "icbm_t2w"]
KEY = "val_mean_dice"


@pytest.fixture(scope="module")
def omnifm_run(reference_sites, tmp_path_factory):
    """A finished one-round OmniFM run (private suffixes, a merged bank) and its cross-site evaluation."""
    run = tmp_path_factory.mktemp("cross_site") / "run"
    simulate(
        BUNDLE,
        "omnifm",
        rounds=1,
        output=str(run),
        sites={s: str(reference_sites / s) for s in SITES},
        overrides=SMALL,
    )
    results = cross_site_evaluate(str(run))
    return run, results


def _table(path: Path) -> dict[tuple[str, str, str], float]:
    with open(path) as f:
        return {(r["model"], r["site"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)}


@pytest.mark.slow
def test_every_model_on_every_site_and_the_diagonal_is_the_runs_own_test(omnifm_run):
    run, results = omnifm_run
    table = _table(run / "cross_site" / "cross_site.csv")
    models = {m for m, _, _ in table}
    assert models == {"global", *SITES}
    for model in models:
        for site in SITES:
            assert math.isfinite(table[model, site, KEY]), (model, site)
    # a site's own model on its own test split: the run's own test phase, every metric, exactly
    own = json.loads((run / "test_metrics.json").read_text())
    for site in SITES:
        for metric, value in own[site].items():
            assert table[site, site, metric] == value, (site, metric)
    # the models differ: each site's private part travels with its model, the global one has a fresh part
    a, b = SITES
    assert table[a, b, KEY] != table[b, b, KEY]
    assert table["global", a, KEY] != table[a, a, KEY]
    assert results[a][b][KEY] == table[a, b, KEY]
    with Image.open(run / "cross_site" / "cross_site.png") as image:
        assert image.format == "PNG" and min(image.size) > 100
        image.verify()


@pytest.mark.slow
def test_a_run_resumed_but_not_finished_is_refused(omnifm_run, tmp_path):
    run, _ = omnifm_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cross_site", "sites", "tensorboard"))
    load_run(copy)  # a finished run loads
    weights = torch.load(copy / "global_model.pt", weights_only=True)
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    torch.save(weights, copy / "global_model.pt")
    with pytest.raises(RunFolderError, match="global_model.pt is not the model of checkpoint.pt"):
        load_run(copy)


@pytest.mark.parametrize("missing", ["folder", "global_model.pt"])
def test_the_command_refuses_an_unusable_run_folder_in_one_line(tmp_path, missing):
    run = tmp_path / "run"
    if missing != "folder":  # everything else a finished run has
        run.mkdir()
        for name in ("run.json", "checkpoint.pt", "global_model.pt"):
            if name != missing:
                (run / name).write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "omnifm_monai.fl", "evaluate", "--run", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert (str(run) if missing == "folder" else missing) in lines[0]
    assert not (run / "cross_site").exists()


@pytest.mark.slow
def test_nvflare_cross_site_eval_scores_the_final_global_model_on_every_site(
    omnifm_run, reference_sites, tmp_path, monkeypatch
):
    """``federated/job.py --cross_site_eval``: NVFlare's CrossSiteModelEval sends the final global model (with the
    merged bank in its meta) to every site; each site's score is the simulator's last validation of that model
    (the job gives the simulator's model bit for bit with the simulator's thread count)."""
    pytest.importorskip("nvflare", reason="the NVFlare engine needs the `fl` extra: pip install -e '.[fl]'")
    import importlib.util

    monkeypatch.delenv("OMNIFM_THREADS", raising=False)
    path = Path(__file__).resolve().parents[2] / "federated" / "job.py"
    spec = importlib.util.spec_from_file_location("federated_job_cross_site", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    site_dirs = {s: str(reference_sites / s) for s in SITES}
    out = tmp_path / "out"
    job.main(["--bundle", BUNDLE, "--strategy", "omnifm", "--rounds", "1", "--sites", ",".join(SITES),
              "--site_dirs", json.dumps(site_dirs), "--overrides", json.dumps(SMALL), "--cross_site_eval",
              "--workspace", str(tmp_path / "ws"), "--output", str(out)])  # fmt: skip
    scores = json.loads((out / "cross_site.json").read_text())
    run, _ = omnifm_run
    with open(run / "metrics.csv") as f:
        validation = {
            r["site"]: float(r["value"])
            for r in csv.DictReader(f)
            if r["split"] == "validation" and r["metric"] == KEY
        }
    assert set(scores) == set(SITES)
    for site in SITES:
        assert scores[site]["SRV_FL_global_model.pt"][KEY] == validation[site], site
