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
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import list_data_collate
from monai.metrics import PSNRMetric, compute_dice
from monai.networks.utils import eval_mode

from omnifm_monai.fl.bundle import bundle_task
from omnifm_monai.fl.engine import evaluation_data, make_clients, make_strategy, restore_sites, site_network
from omnifm_monai.fl.simulator import CHECKPOINT, load_checkpoint
from omnifm_monai.fl.strategies import strategy_class

__all__ = ["qualitative_figure"]

# one fixed colour per class index, so label maps read the same in every figure
LABEL_COLORS = ["#000000", "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"]


@dataclass
class Prediction:
    """One site's first test item through one run (arrays are (H, W); class / answer indices are ints)."""

    image: np.ndarray  # the network's input: the degraded image for super-resolution
    target: np.ndarray | int
    output: np.ndarray | int  # argmax label map, restored image clamped to [0, 1], or class / answer index
    score: float | None = None  # per-slice Dice (segmentation) or PSNR (super-resolution)


@dataclass
class Panel:
    image: np.ndarray
    title: str
    kind: str = "image"  # "image" (grey) or "label" (LABEL_COLORS)
    caption: str = ""  # text under the panel (VQA)
    vmin: float | None = None
    vmax: float | None = None


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


def _first_test_item(evaluator) -> dict:
    # the test loader does not shuffle: item 0 of its dataset is the first entry of the datalist's test split
    return list_data_collate([evaluator.data_loader.dataset[0]])


def dice(output: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Per-slice Dice of two label maps as the bundle's ``MeanDice``: background excluded, classes absent
    from the ground truth ignored (NaN when none is present)."""
    one_hot = [
        F.one_hot(torch.as_tensor(x).long(), num_classes).movedim(-1, 0)[None] for x in (output, target)
    ]
    return float(torch.nanmean(compute_dice(*one_hot, include_background=False)))


def psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of two [0, 1] images (the bundle's ``max_val`` 1)."""
    return float(
        PSNRMetric(max_val=1.0)(torch.as_tensor(output)[None, None], torch.as_tensor(target)[None, None])
    )


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
            evaluator = client.test_evaluator()
            # SupervisedEvaluator's iteration, without its metrics and handlers
            batch = evaluator.prepare_batch(
                _first_test_item(evaluator),
                evaluator.state.device,
                evaluator.non_blocking,
                **evaluator.to_kwargs,
            )
            inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
            with eval_mode(evaluator.network):
                logits = evaluator.inferer(inputs, evaluator.network, *args, **kwargs)[0].float().cpu()
            image, target = inputs[0, 0].cpu(), targets[0].cpu()
            if task == "super_resolution":  # evaluate.json clamps the output and the input to [0, 1]
                output, image, target = logits[0].clamp(0, 1), image.clamp(0, 1), target[0]
                results[name] = Prediction(
                    image.numpy(), target.numpy(), output.numpy(), psnr(output, target)
                )
            elif task == "segmentation":  # argmax of the logits = the bundle's argmax after softmax
                output, target = logits.argmax(0), target[0]
                results[name] = Prediction(
                    image.numpy(), target.numpy(), output.numpy(), dice(output, target, len(logits))
                )
            else:  # classification, VQA: (num_classes,) logits, an integer label
                results[name] = Prediction(image.numpy(), int(target), int(logits.argmax(0)))
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
        item, first = datalist["test"][0], next(iter(preds.values()))[site]
        by_run = {label: p[site] for label, p in preds.items()}
        if task == "segmentation":
            panels = [
                Panel(first.image, f"{site}\ninput"),
                Panel(first.target, f"{site}\nground truth", "label"),
            ]
            panels += [
                Panel(p.output, f"{site} | {label}\nDice {p.score:.3f}", "label")
                for label, p in by_run.items()
            ]
        elif task == "super_resolution":  # one grey scale for every panel, so the restorations compare
            psnr_in = psnr(first.image, first.target)
            panels = [Panel(first.image, f"{site}\nlow-res input\nPSNR {psnr_in:.2f} dB", vmin=0, vmax=1)]
            panels += [
                Panel(p.output, f"{site} | {label}\nPSNR {p.score:.2f} dB", vmin=0, vmax=1)
                for label, p in by_run.items()
            ]
            panels.append(Panel(first.target, f"{site}\ntarget (high-res)", vmin=0, vmax=1))
        elif task == "classification":
            names = datalist["classes"]
            lines = [
                f"{label}: {names[p.output]} {'✓' if p.output == p.target else '✗'}"
                for label, p in by_run.items()
            ]
            panels = [Panel(first.image, "\n".join([site, f"true: {names[first.target]}", *lines]))]
        else:  # VQA
            answers = datalist["answers"]
            text = [f"Q: {item['question']}", f"true: {answers[first.target]}"]
            text += [
                f"{label}: {answers[p.output]} {'✓' if p.output == p.target else '✗'}"
                for label, p in by_run.items()
            ]
            panels = [Panel(first.image, site, caption="\n".join(textwrap.fill(t, 34) for t in text))]
        rows.append((site, panels))
    return task, rows, preds


def draw_panels(rows: Sequence[tuple[str, Sequence[Panel]]], output: str | Path):
    """Draw and save the rows (one panel per row: the sites side by side); returns the closed figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    grid = (
        [[p for _, panels in rows for p in panels]]
        if all(len(p) == 1 for _, p in rows)
        else [list(p) for _, p in rows]
    )
    nrows, ncols = len(grid), max(len(r) for r in grid)
    captions = max((p.caption.count("\n") + 1 for r in grid for p in r if p.caption), default=0)
    # constrained layout keeps multi-line titles clear of the row above
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(1.9 * ncols, (2.4 + 0.13 * captions) * nrows),
        squeeze=False,
        layout="constrained",
    )
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(grid[r]):
                continue
            panel = grid[r][c]
            # NIfTI (x, y) arrays: transposed with the origin at the bottom, as a viewer shows an axial slice
            if panel.kind == "label":
                ax.imshow(
                    panel.image.T,
                    origin="lower",
                    cmap=ListedColormap(LABEL_COLORS),
                    vmin=-0.5,
                    vmax=len(LABEL_COLORS) - 0.5,
                    interpolation="nearest",
                )
            else:
                ax.imshow(panel.image.T, origin="lower", cmap="gray", vmin=panel.vmin, vmax=panel.vmax)
            ax.set_title(panel.title, fontsize=7)
            if panel.caption:
                ax.text(
                    0.5, -0.04, panel.caption, transform=ax.transAxes, ha="center", va="top", fontsize=6.5
                )
    fig.savefig(output, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return fig


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
