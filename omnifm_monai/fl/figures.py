"""Figures of a federated run: validation curves per site and round, and one test slice per site through the model.

* :func:`curves_figure` reads a run's ``metrics.csv`` and draws every validation metric per site and round
  (one panel per metric, one line per site).
* :func:`predict_first_test_item` runs a client's first test item through the bundle's own test
  preprocessing, ``prepare_batch`` and inferer, as the simulator's test evaluation scores it;
  :func:`site_panels` turns one site's predictions (one per model) into panels and :func:`draw_panels` draws
  them: segmentation shows the input, the ground truth and each model's label map (titled with its per-slice
  Dice), super-resolution the degraded input, each output and the target (PSNR), classification and VQA the
  image titled or captioned with the true and predicted class / answer.

``simulate`` writes ``curves.png`` and ``qualitative.png`` with them at the end of a run;
``benchmarks/qualitative.py`` compares several finished runs with the same panels. matplotlib (the ``bench``
extra) is imported only when a figure is drawn.
"""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import list_data_collate
from monai.metrics import PSNRMetric, compute_dice
from monai.networks.utils import eval_mode

__all__ = [
    "LABEL_COLORS",
    "Panel",
    "Prediction",
    "curves_figure",
    "dice",
    "draw_panels",
    "predict_first_test_item",
    "psnr",
    "site_panels",
]

# one fixed colour per class index, so label maps read the same in every figure
LABEL_COLORS = ["#000000", "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"]
PANEL_INCHES = (1.9, 2.4)  # width, height of one panel of draw_panels (before a VQA caption)
CURVE_INCHES = (4.5, 3.2)  # one metric's panel of curves_figure
DPI = 110


@dataclass
class Prediction:
    """One site's first test item through one model (arrays are (H, W); class / answer indices are ints)."""

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


def predict_first_test_item(evaluator, task: str) -> Prediction:
    """The first item of ``evaluator``'s data (a test evaluator: its loader does not shuffle, so item 0 is the
    first entry of the datalist's ``test`` split) through its network as it is loaded now, the way
    ``SupervisedEvaluator`` runs an iteration, without its metrics and handlers."""
    batch = evaluator.prepare_batch(
        list_data_collate([evaluator.data_loader.dataset[0]]),
        evaluator.state.device,
        evaluator.non_blocking,
        **evaluator.to_kwargs,
    )
    inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
    with eval_mode(evaluator.network), torch.no_grad():
        logits = evaluator.inferer(inputs, evaluator.network, *args, **kwargs)[0].float().cpu()
    image, target = inputs[0, 0].cpu(), targets[0].cpu()
    if task == "super_resolution":  # evaluate.json clamps the output and the input to [0, 1]
        output, image, target = logits[0].clamp(0, 1), image.clamp(0, 1), target[0]
        return Prediction(image.numpy(), target.numpy(), output.numpy(), psnr(output, target))
    if task == "segmentation":  # argmax of the logits = the bundle's argmax after softmax
        output, target = logits.argmax(0), target[0]
        return Prediction(image.numpy(), target.numpy(), output.numpy(), dice(output, target, len(logits)))
    if task == "segmentation_3d":  # Dice of the whole volume; the panels show its middle axial slice
        output, target = logits.argmax(0), target[0]
        score, z = dice(output, target, len(logits)), output.shape[-1] // 2
        return Prediction(image[..., z].numpy(), target[..., z].numpy(), output[..., z].numpy(), score)
    # classification, VQA: (num_classes,) logits, an integer label
    return Prediction(image.numpy(), int(target), int(logits.argmax(0)))


def site_panels(task: str, site: str, datalist: Mapping, by_model: Mapping[str, Prediction]) -> list[Panel]:
    """One site's panels: its first test item (``datalist``: the site's parsed datalist) through every model of
    ``by_model`` (label -> prediction of that item)."""
    first = next(iter(by_model.values()))
    if task in ("segmentation", "segmentation_3d"):
        panels = [Panel(first.image, f"{site}\ninput"), Panel(first.target, f"{site}\nground truth", "label")]
        return panels + [
            Panel(p.output, f"{site} | {label}\nDice {p.score:.3f}", "label") for label, p in by_model.items()
        ]
    if task == "super_resolution":  # one grey scale for every panel, so the restorations compare
        psnr_in = psnr(first.image, first.target)
        panels = [Panel(first.image, f"{site}\nlow-res input\nPSNR {psnr_in:.2f} dB", vmin=0, vmax=1)]
        panels += [
            Panel(p.output, f"{site} | {label}\nPSNR {p.score:.2f} dB", vmin=0, vmax=1)
            for label, p in by_model.items()
        ]
        return panels + [Panel(first.target, f"{site}\ntarget (high-res)", vmin=0, vmax=1)]
    if task == "classification":
        names = datalist["classes"]
        lines = [
            f"{label}: {names[p.output]} {'✓' if p.output == p.target else '✗'}"
            for label, p in by_model.items()
        ]
        return [Panel(first.image, "\n".join([site, f"true: {names[first.target]}", *lines]))]
    # VQA
    answers = datalist["answers"]
    text = [f"Q: {datalist['test'][0]['question']}", f"true: {answers[first.target]}"]
    text += [
        f"{label}: {answers[p.output]} {'✓' if p.output == p.target else '✗'}"
        for label, p in by_model.items()
    ]
    return [Panel(first.image, site, caption="\n".join(textwrap.fill(t, 34) for t in text))]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_panels(rows: Sequence[tuple[str, Sequence[Panel]]], output: str | Path, tight: bool = True):
    """Draw and save the rows (one row of panels per site; one panel per row: the sites side by side);
    returns the closed figure. ``tight=False`` keeps the figure's size: ``PANEL_INCHES`` per panel at ``DPI``."""
    plt = _pyplot()
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
        figsize=(PANEL_INCHES[0] * ncols, (PANEL_INCHES[1] + 0.13 * captions) * nrows),
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
    fig.savefig(output, dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return fig


def _validation_curves(metrics_csv: str | Path) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> site -> round (1-based) -> value, for the ``validation`` rows of ``metrics.csv`` (in file
    order; a round written twice keeps its last value)."""
    curves: dict[str, dict[str, dict[int, float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "validation":
                curves.setdefault(row["metric"], {}).setdefault(row["site"], {})[int(row["round"]) + 1] = (
                    float(row["value"])
                )
    return curves


def curves_figure(metrics_csv: str | Path, output: str | Path, title: str = ""):
    """Every validation metric of ``metrics.csv`` per site and round: one panel per metric (``CURVE_INCHES``
    each, at ``DPI``), one line per site; saved to ``output``; returns the closed figure."""
    curves = _validation_curves(metrics_csv)
    if not curves:
        raise ValueError(f"{metrics_csv} has no validation rows to draw.")
    plt = _pyplot()
    fig, axes = plt.subplots(
        1,
        len(curves),
        figsize=(CURVE_INCHES[0] * len(curves), CURVE_INCHES[1]),
        squeeze=False,
        layout="constrained",
    )
    for ax, (metric, by_site) in zip(axes[0], curves.items(), strict=True):
        for site, values in by_site.items():
            rounds = sorted(values)
            ax.plot(rounds, [values[r] for r in rounds], marker="o", markersize=3, label=site)
        ax.set_xlabel("round")
        ax.set_ylabel(f"validation {metric.removeprefix('val_')}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(output, dpi=DPI)
    plt.close(fig)
    return fig
