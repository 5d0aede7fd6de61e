"""What ``python -m omnifm_monai.fl simulate`` (``bash run.sh main``) prints and writes: a line per round, a test
table, the full log in the run folder, and the curves and qualitative figures."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnifm_monai.fl import figures
from omnifm_monai.fl.simulator import (
    LOG_FILE,
    QUIET,
    _write_figures,
    configure_logging,
    results_table,
)

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = str(ROOT / "bundles" / "omnifm_segmentation")
SITES = ["icbm_t1", "icbm_t2w"]
ROUNDS = 2


def _pixels(inches: float) -> int:
    return round(inches * figures.DPI)


@pytest.fixture(scope="module")
def main_job(reference_sites, tmp_path_factory):
    """The main job's command line, small: 2 sites, 2 rounds, 32 x 32 slices; (its run folder, stdout, stderr)."""
    out = tmp_path_factory.mktemp("main_job") / "run"
    proc = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "omnifm_monai.fl",
                "simulate",
                "--bundle",
                BUNDLE,
                "--strategy",
                "omnifm",
            ),
            *("--rounds", str(ROUNDS), "--reference_dir", str(reference_sites), "--sites", ",".join(SITES)),
            *("--output", str(out), "--overrides", '{"image_size": 32, "batch_size": 8}'),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, proc.stderr


@pytest.mark.slow
def test_the_main_job_prints_a_line_per_round_and_a_test_table(main_job):
    out, stdout, stderr = main_job
    printed = (stderr + stdout).splitlines()
    rounds = [line for line in printed if line.startswith("round ")]
    assert [line.split()[1] for line in rounds] == [f"{r}/{ROUNDS}" for r in range(1, ROUNDS + 1)]
    for line in rounds:  # time, mean validation Dice over the sites, how many sites
        assert re.match(
            rf"round \d/{ROUNDS}  \d+\.\d s  val mean_dice \d\.\d{{3}} \({len(SITES)} sites\)", line
        )
    # MONAI's and ignite's per-site, per-iteration and per-epoch logs stay off the console: in the log file
    log = (out / LOG_FILE).read_text()
    for chatter in (*QUIET[:2], "Epoch: 1/1, Iter", "Engine run finished", "Initializing icbm_t1"):
        assert chatter not in stderr + stdout
    for kept in ("Logging file is set to False", "Epoch: 1/1, Iter", "Engine run finished", "round 1/2  "):
        assert kept in log
    assert len(printed) <= ROUNDS + 12, printed
    # the final table: test metrics per site and their mean, labelled as test, from test_metrics.json
    results = json.loads((out / "test_metrics.json").read_text())
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("site"))
    cells = [[c.strip() for c in line.split("|")] for line in lines[header:] if "|" in line]
    assert cells[0] == ["site", "test mean_dice", "test hd95"] and "val_" not in stdout
    assert [row[0] for row in cells[1:]] == [*SITES, f"mean ({len(SITES)} sites)"]
    for site, row in zip(SITES, cells[1:], strict=False):
        assert float(row[1]) == pytest.approx(results[site]["val_mean_dice"], abs=1e-4)
    mean = np.mean([results[s]["val_mean_dice"] for s in SITES])
    assert float(cells[-1][1]) == pytest.approx(mean, abs=1e-4)
    assert f"full log: {out / LOG_FILE}" in stdout


@pytest.mark.slow
def test_the_main_job_writes_the_curves_and_the_qualitative_figure(main_job):
    out, _, stderr = main_job
    assert f"figures: {out / 'curves.png'}, {out / 'qualitative.png'}" in stderr
    with open(out / "metrics.csv") as f:
        metrics = {r["metric"] for r in csv.DictReader(f) if r["split"] == "validation"}
    curves = Image.open(out / "curves.png")  # one panel per validation metric
    assert curves.format == "PNG" and curves.size == (
        _pixels(figures.CURVE_INCHES[0]) * len(metrics),
        _pixels(figures.CURVE_INCHES[1]),
    )
    qualitative = Image.open(out / "qualitative.png")  # a row per site: input, ground truth, prediction
    assert qualitative.format == "PNG" and qualitative.size == (
        _pixels(3 * figures.PANEL_INCHES[0]),
        _pixels(len(SITES) * figures.PANEL_INCHES[1]),
    )
    colours = {tuple(c) for c in np.asarray(qualitative.convert("RGB")).reshape(-1, 3)}
    label = figures.LABEL_COLORS[1]  # label maps drawn: class 1 in every site's ground truth
    assert tuple(int(label[i : i + 2], 16) for i in (1, 3, 5)) in colours


def test_curves_figure_draws_every_validation_metric_per_site_and_round(tmp_path):
    rows = [("round", "site", "split", "metric", "value", "strategy")]
    for rnd in range(3):
        for site in ("a", "b", "c"):
            rows += [(rnd, site, "validation", "val_mean_dice", 0.1 * rnd, "x")]
            rows += [
                (rnd, site, "validation", "val_hd95", 10 - rnd, "x"),
                (rnd, site, "round", "upload_bytes", 1, "x"),
            ]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    fig = figures.curves_figure(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert [ax.get_ylabel() for ax in fig.axes] == ["validation mean_dice", "validation hd95"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b", "c"]
        assert all(list(line.get_xdata()) == [1, 2, 3] for line in ax.get_lines())
    assert Image.open(tmp_path / "curves.png").size == (2 * _pixels(4.5), _pixels(3.2))
    with open(tmp_path / "empty.csv", "w") as f:
        f.write(",".join(rows[0]) + "\n")
    with pytest.raises(ValueError, match="no validation rows"):
        figures.curves_figure(tmp_path / "empty.csv", tmp_path / "none.png")


def test_results_table_labels_test_metrics_and_means_the_finite_values():
    results = {
        "a": {"val_mean_dice": 0.5, "val_hd95": 4.0},
        "b": {"val_mean_dice": 0.7, "val_hd95": math.nan},
        "new": {"val_mean_dice": 0.1, "val_hd95": 9.0},
    }
    lines = results_table(results, unseen=["new"]).splitlines()
    cells = [[c.strip() for c in line.split("|")] for line in lines if "|" in line]
    assert cells == [
        ["site", "test mean_dice", "test hd95"],
        ["a", "0.5000", "4.0000"],
        ["b", "0.7000", "nan"],
        ["mean (2 sites)", "0.6000", "4.0000"],  # the unseen site is not in the mean, NaN left out
        ["new (unseen)", "0.1000", "9.0000"],
    ]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_the_console_is_quiet_by_default_and_verbose_brings_everything_back(tmp_path, capsys):
    monai_stats = logging.getLogger("monai.handlers.StatsHandler")  # MONAI's own handler, adopted
    for verbose in (False, True):
        out = tmp_path / f"verbose_{verbose}"
        out.mkdir()
        handlers = configure_logging(out, verbose)
        try:
            logging.getLogger("omnifm_monai.fl.progress").info("round 1/1  1.0 s")
            monai_stats.info("Epoch: 1/1, Iter: 1/2 -- train_loss: 2.0")
            logging.getLogger("monai.bundle.workflows").warning(
                "Logging file is set to False, skipping logging."
            )
            logging.getLogger("ignite.engine.engine.SupervisedTrainer").info("Engine run finished.")
            logging.getLogger("omnifm_monai.fl").error("site x failed in round 1")
            logging.getLogger("monai.transforms").warning("a warning a user may act on")
        finally:
            from omnifm_monai.fl.simulator import _release

            _release(handlers)
        console, log = capsys.readouterr(), (out / LOG_FILE).read_text()
        assert console.out == ""
        shown = console.err.splitlines()
        assert ("round 1/1  1.0 s" in shown) != verbose  # as it is; verbose: with time, level and logger
        assert any(line.endswith("omnifm_monai.fl.progress: round 1/1  1.0 s") for line in shown) == verbose
        assert any("site x failed" in line for line in shown) and any("may act on" in line for line in shown)
        for chatter in ("Epoch: 1/1, Iter", "Logging file is set to False", "Engine run finished"):
            assert (chatter in console.err) == verbose and chatter in log  # always in the log file
        assert not [h for h in monai_stats.handlers if type(h) is logging.StreamHandler]


def test_the_log_file_waits_for_the_run_folder(tmp_path, capsys):
    handlers = configure_logging(tmp_path / "not_yet", False)
    try:
        logging.getLogger("omnifm_monai.fl").info("before")
        assert not (tmp_path / "not_yet").exists()  # a refused run leaves nothing behind
        (tmp_path / "not_yet").mkdir()
        logging.getLogger("omnifm_monai.fl").info("after")
    finally:
        from omnifm_monai.fl.simulator import _release

        _release(handlers)
    assert [line.split(": ")[-1] for line in (tmp_path / "not_yet" / LOG_FILE).read_text().splitlines()] == [
        "before",
        "after",
    ]


def test_without_matplotlib_the_figures_are_skipped_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    (tmp_path / "metrics.csv").write_text("round,site,split,metric,value,strategy\n0,a,validation,m,1,x\n")
    with caplog.at_level(logging.INFO, logger="omnifm_monai.fl"):
        _write_figures(tmp_path, "x", "x", "segmentation", {}, None)
    assert [r.getMessage() for r in caplog.records] == [
        "matplotlib is not installed (pip install matplotlib): no figures written"
    ]
    assert not list(tmp_path.glob("*.png"))


def test_the_command_takes_verbose_and_every_simulate_flag(tmp_path, monkeypatch, capsys):
    import functools

    import fire

    from omnifm_monai.cli import unknown_flags
    from omnifm_monai.fl import simulator
    from omnifm_monai.fl.__main__ import COMMANDS

    assert unknown_flags(COMMANDS, ["simulate", BUNDLE, "--verbose", "--nofigures", "--rounds", "2"]) == []
    assert unknown_flags(COMMANDS, ["simulate", BUNDLE, "--verbosee"]) == ["verbosee"]
    calls, verbosity = [], []

    @functools.wraps(simulator.simulate)  # its signature: what the command binds the flags to
    def fake_simulate(*args, **kwargs):
        calls.append(kwargs or args)
        return {"a": {"val_mean_dice": 0.5}}

    monkeypatch.setattr(simulator, "simulate", fake_simulate)
    monkeypatch.setattr(
        simulator, "configure_logging", lambda output, verbose: verbosity.append(verbose) or []
    )
    for flags in ([], ["--verbose"]):
        fire.Fire(COMMANDS, ["simulate", BUNDLE, "--rounds", "2", "--output", str(tmp_path), *flags])
    assert verbosity == [False, True] and len(calls) == 2
    assert capsys.readouterr().out.count("| test mean_dice") == 2
    assert all(args[:3] == (BUNDLE, "omnifm", 2) for args in calls)
