"""Cross-site evaluation of a finished simulator run: every final model on every site's test split, no training.

    python -m omnifm_monai.fl evaluate --run runs/seg_omnifm

The models, rebuilt from the run folder (``run.json``, ``checkpoint.pt``, ``global_model.pt``) with the engine
the simulator runs on:

* ``global``: the global weights with a *fresh* private part, scored on each site as the simulator scores an
  unseen site (a personalised strategy has nothing personal for it; OmniFM's onboarding applies); absent for
  a strategy without a global model (``local``);
* ``<site>``: the model that site scored in the run's own test phase, i.e. the global weights, its private
  state, its strategy's evaluation weights (Ditto's personal model) and the server's payload
  (:meth:`~omnifm_monai.fl.client.OmniFMClientAlgo.load_for_evaluation`). Whatever the strategy puts in the
  network for that site goes with it to the other sites (HarmoFL's amplitude normalisation, OmniFM's site
  id in the bank).

Each model is scored on every site's test split (default: the run's sites and unseen sites; ``--sites``
names others, under ``--reference_dir``). A site's own model on its own split gives its value in
``test_metrics.json``. Written to ``output`` (default ``<run>/cross_site``): ``cross_site.csv`` (``model,
site, metric, value``) and ``cross_site.png`` (models x sites, the bundle's key metric); the bundle's own
evaluation files go to ``sites/<site>/`` there (those of the last model scored on that site).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import key_metric
from .engine import (
    evaluation_data,
    load_matching,
    make_clients,
    make_strategy,
    restore_sites,
    root_cause,
    site_network,
)
from .simulator import CHECKPOINT, _site_list, load_checkpoint

__all__ = ["RunFolderError", "cross_site_evaluate", "load_run"]

logger = logging.getLogger("omnifm_monai.fl")
GLOBAL = "global"


class RunFolderError(ValueError):
    """A run folder that cannot be evaluated; the message names what is missing, in one line."""


def load_run(run: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """``(run.json, checkpoint, global weights)`` of a finished simulator run, or :class:`RunFolderError`."""
    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"{run} is not a run folder: it does not exist.")
    for name in ("run.json", CHECKPOINT, "global_model.pt"):
        if not (run / name).is_file():
            raise RunFolderError(f"{run} is not a finished simulator run: {name} is missing.")

    def read(name, load):
        try:
            return load(run / name)
        except Exception as err:
            raise RunFolderError(f"{run / name} cannot be read: {' '.join(str(err).split())}") from err

    config = read("run.json", lambda path: json.loads(path.read_text()))
    checkpoint = read(CHECKPOINT, load_checkpoint)
    final = read("global_model.pt", lambda path: torch.load(path, weights_only=True))
    if checkpoint.get("run_config") != config:
        raise RunFolderError(f"{run}: run.json does not match {CHECKPOINT}.")
    last = checkpoint["global_weights"]
    if set(final) != set(last) or any(not torch.equal(final[k], last[k]) for k in final):
        raise RunFolderError(
            f"{run}: global_model.pt is not the model of {CHECKPOINT} (the run was resumed and has not finished)."
        )
    if not Path(config["bundle"]).is_dir():
        raise RunFolderError(f"{run}: the run's bundle {config['bundle']} does not exist.")
    return config, checkpoint, final


def cross_site_evaluate(
    run: str,
    sites: Sequence[str] | Mapping[str, str] | None = None,
    output: str | None = None,
    reference_dir: str = "outputs/reference_sites",
    strategy: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Score every final model of a finished simulator run on every site's test split (no training).

    Args:
        run: the simulator's run folder.
        sites: the sites to test on, names (a list or one comma-separated string) or name -> dataset folder;
            a name of the run's own or unseen sites uses its folder in ``run.json``, any other is looked up
            under ``reference_dir``. Default: the run's sites and unseen sites (a pooled run needs them named).
        output: where the CSV and PNG go (default ``<run>/cross_site``).
        reference_dir: where sites named in ``sites`` that the run does not know are.
        strategy: the strategy's dotted path, for a run of a strategy of your own (default: ``run.json``'s).

    Returns ``{model: {site: {metric: value}}}``.
    """
    config, checkpoint, global_weights = load_run(run)
    bundle, run_sites, unseen = config["bundle"], config["sites"], config["unseen_sites"]
    first = next(iter(run_sites.values()))
    strategy = make_strategy(
        bundle,
        strategy or config["strategy"],
        list(run_sites),
        config["strategy_options"],
        dataset_dir=first,
        overrides=config.get("overrides"),
    )[0]
    known, sites = {**run_sites, **unseen}, _site_list(sites)
    if sites is None:
        if strategy.pooled:
            raise RunFolderError(
                f"{run} is a pooled run, which records no site folders: name them with --sites."
            )
        test_dirs = known
    elif isinstance(sites, Mapping):
        test_dirs = dict(sites)
    else:
        test_dirs = {s: known.get(s, str(Path(reference_dir) / s)) for s in sites}
    out = Path(output) if output else Path(run) / "cross_site"
    out.mkdir(parents=True, exist_ok=True)

    # the simulator's set-up: one network, every run site's client, then the sites that never trained
    network = site_network(bundle, strategy, config["overrides"], config["seed"], dataset_dir=first)
    if config["init_weights"]:
        load_matching(network, torch.load(config["init_weights"], weights_only=True))
    args = dict(network=network, overrides=config["overrides"], workdir=out / "sites", leave_out_failed=True)
    trained = {s: d for s, d in run_sites.items() if s in checkpoint["sites"]}  # a site left out has no model
    models = make_clients(bundle, strategy, trained, **args)
    others = make_clients(bundle, strategy, {s: d for s, d in test_dirs.items() if s not in models}, **args)
    testers = {s: models.get(s) or others[s] for s in test_dirs if s in models or s in others}
    evaluation = evaluation_data(global_weights, strategy.server_payload(checkpoint["server_state"]))

    results: dict[str, dict[str, dict[str, float]]] = {}
    if strategy.shares_weights:  # every client still holds its fresh private part
        for tester in testers.values():
            _score(results, GLOBAL, tester, tester, evaluation)
    restore_sites(models, checkpoint["sites"])
    for model, holder in models.items():
        for tester in testers.values():
            _score(results, model, holder, tester, evaluation)

    rows = [
        (m, s, k, v)
        for m, by_site in results.items()
        for s, scores in by_site.items()
        for k, v in scores.items()
    ]
    with open(out / "cross_site.csv", "w", newline="") as f:
        csv.writer(f).writerows([("model", "site", "metric", "value"), *rows])
    title = f"{strategy.name}, {Path(run).name}"
    _heatmap(results, list(testers), key_metric(bundle), title, out / "cross_site.png")
    logger.info(
        "cross-site evaluation of %s: %d models x %d sites in %s", run, len(results), len(testers), out
    )
    return results


def _score(results: dict, model: str, holder, tester, evaluation) -> None:
    """``holder``'s model (what it evaluates with) on ``tester``'s test split, as a site scores its own in the
    run's test phase (:meth:`~omnifm_monai.fl.client.OmniFMClientAlgo.evaluate`); both share one network. A
    failing pair is logged and left out, the others go on."""
    try:
        holder.load_for_evaluation(evaluation)
        evaluator = tester.test_evaluator()
        evaluator.run()
        results.setdefault(model, {})[tester.site] = {k: float(v) for k, v in evaluator.state.metrics.items()}
    except Exception as err:
        logger.error("model %s on site %s: test evaluation failed: %s", model, tester.site, root_cause(err))


def _heatmap(results: Mapping, sites: list[str], metric: str, title: str, path: Path) -> None:
    """Models x sites of ``metric`` (blank where a pair failed), each cell labelled with its value."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("no heatmap: it needs matplotlib (pip install omnifm_monai[bench]).")
        return
    models = list(results)
    values = [[results[m].get(s, {}).get(metric, math.nan) for s in sites] for m in models]
    fig = Figure(figsize=(1.2 + 1.1 * len(sites), 1.0 + 0.5 * len(models)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if math.isfinite(value):
                color = "w" if image.norm(value) < 0.5 else "k"  # viridis is dark at its low end
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("test split of site")
    ax.set_ylabel("model")
    ax.set_title(f"{title}: {metric}", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=100)
