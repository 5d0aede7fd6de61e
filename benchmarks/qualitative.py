"""Qualitative figure: the first test slice of every site through each finished run, side by side.

    python benchmarks/qualitative.py --run FedAvg=runs/seg_fedavg --run OmniFM=runs/seg_omnifm --output seg.png

``runs`` are folders written by :func:`omnifm_monai.fl.simulator.simulate` for one bundle and the same sites.
Predictions are those the simulator's test evaluation scores: every site's client is rebuilt as ``simulate``
builds it, given the checkpoint's private and strategy state, loaded with ``load_for_evaluation`` (global
weights, private state, Ditto's personal model, the server's merged bank) and run on the first item of the
site's ``test`` split through the bundle's own test preprocessing, ``prepare_batch`` and inferer. The strategy
is rebuilt with its default options (``run.json`` does not record ``strategy_options``; no option changes
which keys are private or what the payload holds).

* segmentation: input, ground truth, one argmax label map per run (title: per-slice Dice, background
  excluded, classes absent from the ground truth ignored, as the bundle's ``MeanDice``);
* super-resolution: degraded input (what the network gets), each run's output clamped to [0, 1], the
  high-resolution target (titles: per-slice PSNR, ``max_val`` 1);
* classification: the image titled with the true class and each run's predicted class;
* VQA: the image with the question, the true answer and each run's answer written under it.

Sites come from the runs' ``run.json``. A ``centralized`` run only records its pooled folder: its sites are
taken from another run of the call, or else from the pooled test items' paths (the folder holding the task's
datalist, named as on disk); pass ``sites`` as a mapping name -> folder when the names differ.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omnifm_monai.fl.bundle import bundle_task
from omnifm_monai.fl.engine import evaluation_data, make_clients, make_strategy, restore_sites, site_network
from omnifm_monai.fl.figures import (  # the panels and their drawing, shared with simulate's qualitative.png
    LABEL_COLORS,
    Panel,
    Prediction,
    dice,
    draw_panels,
    predict_first_test_item,
    psnr,
    site_panels,
)
from omnifm_monai.fl.simulator import CHECKPOINT, load_checkpoint
from omnifm_monai.fl.strategies import strategy_class

__all__ = ["LABEL_COLORS", "Panel", "Prediction", "dice", "draw_panels", "psnr", "qualitative_figure"]


def _read_run(run: str | Path) -> dict[str, Any]:
    config = json.loads((Path(run) / "run.json").read_text())
    config["pooled"] = strategy_class(config["strategy"]).pooled
    return config


def _pooled_sites(run: str | Path, task: str) -> dict[str, str]:
    """A pooled run's sites: the folders (holding the task's datalist) of its pooled test items' images."""
    pooled = json.loads((Path(_read_run(run)["sites"]["pooled"]) / f"{task}.json").read_text())
    sites: dict[str, str] = {}
    for item in pooled["test"]:
        folder = next(p for p in Path(item["image"]).parents if (p / f"{task}.json").is_file())
        sites.setdefault(folder.name, str(folder))
    return sites


def site_folders(
    runs: Mapping[str, str | Path],
    task: str,
    sites: Sequence[str] | Mapping[str, str | Path] | None = None,
    max_sites: int = 6,
) -> dict[str, str]:
    """The sites to show, name -> dataset folder, at most ``max_sites`` (see the module docstring)."""
    if isinstance(sites, Mapping):
        return {k: str(v) for k, v in list(sites.items())[:max_sites]}
    configs = {label: _read_run(run) for label, run in runs.items()}
    federated = [c for c in configs.values() if not c["pooled"]]
    found = dict(federated[0]["sites"]) if federated else _pooled_sites(next(iter(runs.values())), task)
    if sites is not None:
        unknown = [s for s in sites if s not in found]
        if unknown:
            raise KeyError(f"sites {unknown} are not in the runs (they have {list(found)}).")
        found = {s: found[s] for s in sites}
    return dict(list(found.items())[:max_sites])


def predict_run(run: str | Path, sites: Mapping[str, str]) -> dict[str, Prediction]:
    """Every site's first test item through ``run``'s model for that site, as the simulator evaluates it."""
    run = Path(run)
    config = _read_run(run)
    checkpoint = load_checkpoint(run / CHECKPOINT, require_hash=False)  # read only
    bundle, task = config["bundle"], bundle_task(config["bundle"])
    first_site = next(iter(config["sites"].values()))
    strategy = make_strategy(bundle, config["strategy"], list(config["sites"]), dataset_dir=first_site)[0]
    # the network simulate() built: sized by the run's first data folder (VQA's vocabulary), shared by the sites
    network = site_network(bundle, strategy, config["overrides"], dataset_dir=first_site)
    evaluation = evaluation_data(
        checkpoint["global_weights"], strategy.server_payload(checkpoint["server_state"])
    )
    results = {}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as workdir:  # the clients' log folders
        clients = make_clients(bundle, strategy, sites, network, config["overrides"], workdir=workdir)
        restore_sites(
            clients, {name: checkpoint["sites"]["pooled" if config["pooled"] else name] for name in sites}
        )
        for name, client in clients.items():
            client.load_for_evaluation(evaluation)
            results[name] = predict_first_test_item(client.test_evaluator(), task)
    return results


def figure_panels(
    runs: Mapping[str, str | Path],
    sites: Sequence[str] | Mapping[str, str | Path] | None = None,
    max_sites: int = 6,
) -> tuple[str, list[tuple[str, list[Panel]]], dict[str, dict[str, Prediction]]]:
    """(task, one (site, panels) row per site, label -> site -> prediction): everything the figure draws."""
    if not runs:
        raise ValueError("no runs given.")
    tasks = {bundle_task(_read_run(run)["bundle"]) for run in runs.values()}
    if len(tasks) != 1:
        raise ValueError(f"the runs are of different tasks: {sorted(tasks)}.")
    task = tasks.pop()
    folders = site_folders(runs, task, sites, max_sites)
    preds = {label: predict_run(run, folders) for label, run in runs.items()}
    rows = []
    for site, folder in folders.items():
        datalist = json.loads((Path(folder) / f"{task}.json").read_text())
        panels = site_panels(task, site, datalist, {label: p[site] for label, p in preds.items()})
        rows.append((site, panels))
    return task, rows, preds


def qualitative_figure(
    runs: Mapping[str, str | Path], output: str | Path, sites: Sequence[str] | None = None, max_sites: int = 6
) -> Path:
    """Write the qualitative PNG of ``runs`` (label -> run folder) to ``output`` and return its path.

    ``sites``: the site names to show (default: the runs' sites), or a mapping name -> dataset folder (needed
    when every run is centralized and its site folders are not named as the sites); at most ``max_sites``.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _, rows, _ = figure_panels(runs, sites, max_sites)
    draw_panels(rows, output)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", action="append", required=True, metavar="LABEL=FOLDER", help="a run folder, repeated"
    )
    parser.add_argument("--output", required=True)
    parser.add_argument("--sites", nargs="*", default=None)
    parser.add_argument("--max_sites", type=int, default=6)
    args = parser.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.run)
    print(qualitative_figure(runs, args.output, args.sites, args.max_sites))


if __name__ == "__main__":
    main()
