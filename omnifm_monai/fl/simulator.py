"""In-process federated simulator: every site of a bundle in one process, one network, resumable rounds.

    python -m omnifm_monai.fl simulate --bundle bundles/omnifm_segmentation --strategy omnifm --rounds 5 --output runs/seg

Each site is an :class:`~omnifm_monai.fl.client.OmniFMClientAlgo` over the same bundle with its own
``dataset_dir``; all sites train one shared network in turn (loading the global weights and their private
state first), so memory grows with the number of sites only by their data, their private state and their
bundle workflows (about 16 MiB a site at 32 x 32, ``benchmarks/simulator_speed.py``). The server
side is :func:`~omnifm_monai.fl.engine.aggregate_round`; sites are built and run by :mod:`~omnifm_monai.fl.engine`, the
core the NVFlare client and aggregator share.

Written to ``output``: ``metrics.csv`` (``round, site, split, metric, value, strategy``; ``split`` is
``validation``, ``test``, ``round`` (cost) or ``diagnostics`` (the strategy's own numbers, e.g. OmniFM's
gate and spectral-token spread)), ``metrics.jsonl``,
TensorBoard events, and ``checkpoint.pt`` (global weights, server state, every site's private and strategy
state, the metrics files' sizes) replaced atomically after every round; a killed run resumes from the last
completed round and ends with the same result and the same metric rows, each once, as an uninterrupted one
(every round reseeds from ``seed``, round and site; the metrics files are cut back to the checkpoint's rows).
At the end, ``curves.png`` (validation metrics per site and round) and ``qualitative.png`` (each site's first
test slice: input, ground truth, prediction; :mod:`~omnifm_monai.fl.figures`).

The command line (:func:`simulate_command`) prints one line per round and the test metrics as a table; MONAI's
and ignite's logs go to ``simulate.log`` in ``output`` (and to the console with ``--verbose``).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from omnifm_monai.errors import SettingsError

from .bundle import bundle_task, check_overrides, find_sites, key_metric
from .compression import check_codec, decode_update
from .engine import (
    aggregate_round,
    client_round,
    evaluation_data,
    load_matching,
    make_clients,
    make_strategy,
    restore_sites,
    root_cause,
    round_lr_scale,
    site_network,
    site_states,
    strategy_overrides,
    update_bytes,
)
from .strategies import Strategy

__all__ = [
    "CHECKPOINT",
    "LOG_FILE",
    "configure_logging",
    "default_sites",
    "load_checkpoint",
    "results_table",
    "save_checkpoint",
    "simulate",
    "simulate_command",
]

logger = logging.getLogger("omnifm_monai.fl")
# what a run prints at the default verbosity: a line per round, the start, the test phase and the figures
progress = logging.getLogger("omnifm_monai.fl.progress")
CHECKPOINT = "checkpoint.pt"


def default_sites(bundle: str | Path, reference_dir: str | Path) -> dict[str, str]:
    """Every site under ``reference_dir`` that has a datalist for the bundle's task, name -> folder."""
    try:
        return find_sites(reference_dir, bundle_task(bundle))
    except FileNotFoundError as err:  # no sites: a setting to fix, said in one line
        raise SettingsError(str(err)) from err


def _pooled_site(sites: Mapping[str, str], task: str, folder: Path) -> dict[str, str]:
    """Centralized: one datalist whose training items are every site's (paths made absolute)."""
    from omnifm_monai.data.layout import datalist_path, write_datalist

    merged: dict[str, Any] = {}
    for site_dir in sites.values():
        datalist = json.loads(datalist_path(site_dir, task).read_text())
        for key, value in datalist.items():
            if isinstance(value, list) and key in ("training", "validation", "test"):
                root = Path(site_dir).resolve()  # a relative site folder would resolve against pooled_data
                items = [
                    {
                        **item,
                        **{
                            k: [str(root / p) for p in v] if isinstance(v, list) else str(root / v)
                            for k, v in item.items()
                            if k in ("image", "label")
                            and isinstance(v, (str, list))  # a class label is an int
                        },
                    }
                    for item in value
                ]
                merged.setdefault(key, []).extend(items)
            else:
                merged.setdefault(key, value)
    merged["site"], merged["modality"] = "pooled", merged.get("modality", "pooled")
    write_datalist(folder, task, merged)
    return {"pooled": str(folder)}


class _Writer:
    """Per-round metrics as CSV, JSON lines and TensorBoard scalars, appended. Every checkpoint records the sizes
    of the two files when it is saved (:meth:`sizes`); a resumed run first cuts them back to it (:meth:`rewind`),
    and a run without a checkpoint starts them afresh, so a row is never written twice, wherever a run was killed."""

    FIELDS = ("round", "site", "split", "metric", "value", "strategy")
    # the server's rows of a round that are written after its checkpoint (its cost)
    AFTER_CHECKPOINT = ("checkpoint_seconds", "seconds")

    def __init__(self, output: Path, strategy: str, start: int | None = None) -> None:
        """``start``: the round a resumed run starts at (``None``: a new run, the files start afresh)."""
        self.output, self.strategy = output, strategy
        self.csv, self.jsonl = output / "metrics.csv", output / "metrics.jsonl"
        if start is None or not self.csv.exists():
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        if start is None or not self.jsonl.exists():
            self.jsonl.write_text("")
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard drops the scalars of earlier event files from the step a resumed run starts at
        self.tb = SummaryWriter(str(output / "tensorboard"), purge_step=start)

    def write(self, rows: Sequence[tuple]) -> None:
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerows([(*r, self.strategy) for r in rows])
        with open(self.jsonl, "a") as f:
            for r in rows:
                f.write(json.dumps(dict(zip(self.FIELDS, (*r, self.strategy), strict=True))) + "\n")
        for rnd, site, split, metric, value in rows:
            self.tb.add_scalar(f"{split}/{metric}/{site}", value, rnd)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()  # its writer thread and file handle; many runs may share one process

    def sizes(self) -> dict[str, int]:
        return {path.name: path.stat().st_size for path in (self.csv, self.jsonl)}

    def rewind(self, sizes: Mapping[str, int], rnd: int) -> None:
        """Cut the files back to what the checkpoint of round ``rnd`` covers: their ``sizes`` when it was saved,
        then that round's :attr:`AFTER_CHECKPOINT` rows where they were written whole. Whatever a killed run
        wrote after them (rows of the next round or of the test phase, a half-written line) goes: the resumed
        run writes it again."""
        expected = [(str(rnd), "server", "round", metric) for metric in self.AFTER_CHECKPOINT]
        for path in (self.csv, self.jsonl):
            size = min(sizes[path.name], path.stat().st_size)
            with open(path, "r+b") as f:
                f.seek(size)
                for line, key in zip(f.read().splitlines(keepends=True), expected, strict=False):
                    if not line.endswith(b"\n") or self._key(path, line) != key:
                        break
                    size += len(line)
                f.truncate(size)

    def _key(self, path: Path, line: bytes) -> tuple | None:
        """``(round, site, split, metric)`` of one written row, ``None`` if it is not one."""
        try:
            if path == self.csv:
                return tuple(next(csv.reader([line.decode()]))[:4])
            row = json.loads(line)
            return str(row["round"]), row["site"], row["split"], row["metric"]
        except (ValueError, KeyError, TypeError, StopIteration):
            return None


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """The round's state, serialised, stored with its SHA-256 in one file written atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    content = buffer.getvalue()
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "content": torch.frombuffer(bytearray(content), dtype=torch.uint8),
            "sha256": hashlib.sha256(content).hexdigest(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a completed round is never half-written


def load_checkpoint(path: str | Path, require_hash: bool = True) -> dict | None:
    """The checkpoint's state (``None`` when there is none), refused when it is corrupt, holds more than tensors
    and plain containers, or its content no longer matches the hash it was written with (an altered file must
    not resume a run). ``require_hash=False`` also reads, for inspection only, a checkpoint written before
    checkpoints carried a hash."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        if not require_hash and "sha256" not in stored:
            return stored
        content = stored["content"].numpy().tobytes()
        if hashlib.sha256(content).hexdigest() != stored["sha256"]:
            raise ValueError("its content does not match its SHA-256")
        return torch.load(io.BytesIO(content), weights_only=True)  # tensors and plain containers only
    except Exception as err:
        raise RuntimeError(
            f"refusing the checkpoint {path}: it is corrupt, altered or holds more than tensors ({err}); "
            "move it away to start the run afresh."
        ) from err


def _train_round(
    clients,
    strategy: Strategy,
    global_weights,
    server_state,
    seed: int,
    rnd: int,
    min_sites: int,
    lr_scale: float = 1.0,
    compression: str = "none",
):
    """Every site's round, then the server's; a failing site drops out of this round only. Returns the new
    global weights and server state, the cost rows, and the sites that failed or were rejected."""
    payload = strategy.server_payload(server_state)
    updates, failed, rows, train_seconds = [], {}, [], 0.0
    for i, (name, client) in enumerate(clients.items()):
        tick = time.perf_counter()
        try:
            upload = client_round(client, global_weights, payload, seed, rnd, i, lr_scale, compression)
            rows.append((rnd, name, "round", "upload_bytes", float(update_bytes(upload))))
            updates.append(decode_update(upload))
            train_seconds += client.trainer.state.times.get("COMPLETED") or 0.0  # the trainer's own run time
        except Exception as err:
            logger.exception("site %s failed in round %d", name, rnd)
            failed[name] = repr(err)
        logger.info("round %d | site %s trained in %.1fs", rnd + 1, name, time.perf_counter() - tick)
    if not updates:
        raise RuntimeError(f"every site failed in round {rnd + 1}: {failed}")
    rejected: dict[str, str] = {}
    if strategy.shares_weights:
        global_weights, server_state, rejected = aggregate_round(
            strategy, global_weights, updates, server_state, min_sites
        )
    rows += [
        (rnd, "server", "round", "train_seconds", train_seconds),
        (rnd, "server", "round", "sites_aggregated", float(len(updates) - len(rejected))),
    ]
    return global_weights, server_state, rows, failed, rejected


def _evaluate(
    clients, strategy: Strategy, global_weights, server_state, rnd: int, split: str = "validation"
) -> list[tuple]:
    """Every site scores the global model (with its private state, and the server's payload, e.g. the merged bank).
    A site whose evaluation fails (e.g. an unreadable image) is logged and has no rows; the others go on."""
    evaluation = evaluation_data(global_weights, strategy.server_payload(server_state))
    rows, seconds = [], 0.0
    for name, client in clients.items():
        try:
            metrics = client.evaluate(evaluation, extra={"split": split}).metrics
        except Exception as err:
            logger.error(
                "site %s: %s evaluation failed, no metrics this round: %s", name, split, root_cause(err)
            )
            continue
        evaluator = client.test_evaluator() if split == "test" else client.evaluator
        seconds += evaluator.state.times.get("COMPLETED") or 0.0
        rows += [(rnd, name, split, k, v) for k, v in metrics.items()]
        if split == "validation":
            rows += [(rnd, name, "diagnostics", k, v) for k, v in strategy.diagnostics(client.ctx).items()]
    return rows + [(rnd, "server", "round", "eval_seconds", seconds)] if split == "validation" else rows


def _log_round(rnd: int, rounds: int, seconds: Sequence[float], key: str, rows, failed, rejected) -> None:
    """The round's progress line (its time, the sites' mean validation key metric, what is left); every site's
    value goes to the log only."""
    values = [r[4] for r in rows if r[2] == "validation" and r[3] == key]
    finite = [v for v in values if math.isfinite(v)]
    score = f"{sum(finite) / len(finite):.3f}" if finite else "n/a"
    left = (rounds - rnd - 1) * sum(seconds) / len(seconds)
    line = f"round {rnd + 1}/{rounds}  {seconds[-1]:.1f} s  val {key.removeprefix('val_')} {score} ({len(finite)} sites)"
    if failed or rejected:
        line += f"  failed: {', '.join(sorted({*failed, *rejected}))}"
    if left > 0:
        line += f"  ~{left / 60:.1f} min left" if left >= 60 else f"  ~{left:.0f} s left"
    progress.info(line)
    logger.info(
        "round %d/%d | %s",
        rnd + 1,
        rounds,
        ", ".join(f"{r[1]} {r[3]}={r[4]:.4f}" for r in rows if r[2] == "validation"),
    )


def _write_figures(out: Path, label: str, title: str, task: str, testers, evaluation) -> None:
    """``curves.png`` from ``metrics.csv`` and, when ``testers`` (clients with their test split) are given,
    ``qualitative.png``. A figure that cannot be drawn is logged and skipped: the run's results are written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        progress.info("matplotlib is not installed (pip install matplotlib): no figures written")
        return
    from .figures import curves_figure, draw_panels, predict_first_test_item, site_panels

    written = []
    try:
        curves_figure(out / "metrics.csv", out / "curves.png", title=title)
        written.append("curves.png")
    except Exception as err:
        logger.warning("curves.png not written: %s", root_cause(err))
    rows = []
    for name, client in testers.items():  # the network is shared: every site loads its own model first
        try:
            client.load_for_evaluation(evaluation)
            prediction = predict_first_test_item(client.test_evaluator(), task)
            rows.append(
                (name, site_panels(task, name, client.train_workflow.datalist_meta, {label: prediction}))
            )
        except Exception as err:
            logger.warning("site %s left out of qualitative.png: %s", name, root_cause(err))
    if rows:
        try:
            draw_panels(rows, out / "qualitative.png", tight=False)
            written.append("qualitative.png")
        except Exception as err:
            logger.warning("qualitative.png not written: %s", root_cause(err))
    if written:
        progress.info("figures: %s", ", ".join(str(out / name) for name in written))


def _site_list(sites: str | Sequence[str] | Mapping[str, str] | None):
    """``"a,b"`` (a command line's one string) -> ``["a", "b"]``; lists and mappings as they are."""
    if isinstance(sites, str):
        return [s.strip() for s in sites.split(",") if s.strip()]
    return sites


def simulate(
    bundle: str,
    strategy: str | Strategy = "omnifm",
    rounds: int = 5,
    output: str = "outputs/fl_run",
    sites: Sequence[str] | Mapping[str, str] | None = None,
    reference_dir: str = "outputs/reference_sites",
    local_epochs: int = 1,
    seed: int = 0,
    min_sites: int = 1,
    send_weight_diff: bool = False,
    test: bool = True,
    overrides: Mapping[str, Any] | None = None,
    strategy_options: Mapping[str, Any] | None = None,
    init_weights: str | None = None,
    unseen_sites: Sequence[str] | Mapping[str, str] | None = None,
    lr_schedule: str = "constant",
    figures: bool = True,
    compression: str = "none",
) -> dict[str, Any]:
    """Run (or resume) a federated job in this process; returns the final metrics per site.

    Args:
        bundle: bundle folder.
        strategy: a strategy name (see ``omnifm_monai.fl.strategies.STRATEGIES``), a dotted path to a
            :class:`~omnifm_monai.fl.strategies.Strategy` subclass, or an instance.
        rounds: total rounds (a resumed run continues up to this number).
        output: run folder (metrics, TensorBoard, checkpoint).
        sites: site names under ``reference_dir`` (a list, or one comma-separated string), or name -> dataset
            folder; default: every reference site with a datalist for the bundle's task.
        reference_dir: where the reference sites are.
        local_epochs: local epochs per round (the same budget for every strategy).
        seed: every (round, site) is seeded from it.
        min_sites: a round needs this many valid updates; fewer keeps the previous global model and stops.
        send_weight_diff: clients send ``local - global`` (labelled as differences).
        test: evaluate every site on its test split after the last round.
        overrides: bundle overrides for every site (e.g. ``{"batch_size": 4, "image_size": 64}``); an id the
            bundle does not have is refused (:func:`~omnifm_monai.fl.bundle.check_overrides`).
        strategy_options: keyword options of the strategy (e.g. ``{"mu": 0.01}``); unknown names are refused.
        init_weights: a state dict (e.g. another run's ``global_model.pt``) to start from: every tensor whose
            name and shape match the network is loaded, the rest keeps its initialisation (fine-tuning).
        unseen_sites: sites (names under ``reference_dir``, or name -> folder) that never train: after the last
            round they are tested with the global model and a *fresh* private part (the network's initial
            private state: a personalised strategy has nothing personal for a site it has never seen).
        lr_schedule: the learning rate over rounds, ``constant`` or ``cosine`` (from the bundle's rate down
            towards 0 at ``rounds``; :func:`~omnifm_monai.fl.engine.round_lr_scale`), for every site alike.
        figures: write ``curves.png`` (every validation metric per site and round) and, with ``test``,
            ``qualitative.png`` (each site's first test slice: input, ground truth, prediction) at the end
            (:mod:`~omnifm_monai.fl.figures`; skipped, with one log line, without matplotlib).
        compression: what every site uploads, ``none``, ``fp16`` or ``int8`` (its update as the difference to
            the global weights, encoded; :mod:`~omnifm_monai.fl.compression`); ``upload_bytes`` counts it.
    """
    # every argument is checked before anything is built or written
    for name, value, least in (
        ("rounds", rounds, 1),
        ("local_epochs", local_epochs, 1),
        ("min_sites", min_sites, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SettingsError(f"{name} must be an integer >= {least}, got {value!r}.")
    round_lr_scale(lr_schedule, 0, rounds)
    check_codec(compression)
    sites, unseen_sites = _site_list(sites), _site_list(unseen_sites)
    check_overrides(bundle, overrides)
    bundle_dir, out = Path(bundle), Path(output)
    task = bundle_task(bundle_dir)
    site_dirs = (
        dict(sites)
        if isinstance(sites, Mapping)
        else (
            {s: str(Path(reference_dir) / s) for s in sites}
            if sites
            else default_sites(bundle_dir, reference_dir)
        )
    )
    if isinstance(strategy, str):
        strategy = make_strategy(
            bundle_dir,
            strategy,
            list(site_dirs),
            strategy_options,
            dataset_dir=next(iter(site_dirs.values())),
            overrides=overrides,
        )[0]
    unseen = (
        dict(unseen_sites)
        if isinstance(unseen_sites, Mapping)
        else {s: str(Path(reference_dir) / s) for s in unseen_sites or ()}
    )
    if unseen and not strategy.shares_weights:
        raise SettingsError(f"{strategy.name} has no global model to test on an unseen site.")
    if set(unseen) & set(site_dirs):
        raise SettingsError(f"sites {sorted(set(unseen) & set(site_dirs))} cannot both train and be unseen.")
    out.mkdir(parents=True, exist_ok=True)
    test_sites = site_dirs  # a pooled (Centralized) model is still tested on every site's own test split
    if strategy.pooled:
        site_dirs = _pooled_site(site_dirs, task, out / "pooled_data")
    overrides = strategy_overrides(bundle_dir, strategy, overrides)

    run_config = {
        "bundle": str(bundle_dir.resolve()),
        "strategy": strategy.name,
        "sites": site_dirs,
        "seed": seed,
        "local_epochs": local_epochs,
        "init_weights": init_weights,
        "unseen_sites": unseen,
        "strategy_options": json.loads(json.dumps(dict(strategy_options or {}))),
        "overrides": {k: v for k, v in overrides.items() if isinstance(v, int | float | str | bool)},
    }
    if lr_schedule != "constant":  # the schedule spans `rounds`: resuming with another number changes it
        run_config["lr_schedule"] = {"name": lr_schedule, "rounds": rounds}
    if compression != "none":  # a resume with another codec would change the rounds still to come
        run_config["compression"] = compression
    config_file = out / "run.json"
    checkpoint = load_checkpoint(out / CHECKPOINT)
    if checkpoint is not None:
        previous = json.loads(config_file.read_text()) if config_file.exists() else None
        expected = json.loads(json.dumps(run_config))
        if previous != expected or checkpoint.get("run_config") != expected:
            raise ValueError(
                f"{out} holds a run with another configuration ({config_file}); choose another --output."
            )
        if checkpoint["round"] + 1 >= rounds and (not test or (out / "test_metrics.json").exists()):
            progress.info("%s already completed %d rounds", out, checkpoint["round"] + 1)
            return json.loads((out / "test_metrics.json").read_text()) if test else {}
        if "metrics_bytes" not in checkpoint:
            raise RuntimeError(
                f"refusing the checkpoint {out / CHECKPOINT}: it predates the metrics sizes a resume needs to "
                "write every row once; move it away to start the run afresh."
            )
    else:
        config_file.write_text(json.dumps(run_config, indent=2))

    # one network for every site, sized by a site's data folder (VQA's vocabulary, shared by every site)
    network = site_network(bundle_dir, strategy, overrides, seed, dataset_dir=next(iter(site_dirs.values())))
    if init_weights:
        load_matching(network, torch.load(init_weights, weights_only=True))
    client_args = dict(
        network=network,
        overrides=overrides,
        workdir=out / "sites",
        local_epochs=local_epochs,
        send_weight_diff=send_weight_diff,
    )
    # a site whose data fails validation is left out (logged), the others go on if enough remain
    clients = make_clients(bundle_dir, strategy, site_dirs, leave_out_failed=True, **client_args)
    if len(clients) < min_sites:
        raise RuntimeError(
            f"only {len(clients)} of {len(site_dirs)} sites could start (min_sites={min_sites}); see the log."
        )
    unseen_clients = make_clients(  # made now: the initial private state
        bundle_dir, strategy, unseen, leave_out_failed=True, **client_args
    )
    global_weights = next(iter(clients.values()))._shared_state() if strategy.shares_weights else {}
    server_state = strategy.init_state(global_weights)
    start = 0 if checkpoint is None else checkpoint["round"] + 1
    writer = _Writer(out, strategy.name, None if checkpoint is None else start)
    if checkpoint is not None:
        global_weights, server_state = checkpoint["global_weights"], checkpoint["server_state"]
        restore_sites(clients, checkpoint["sites"])
        writer.rewind(checkpoint["metrics_bytes"], checkpoint["round"])
        progress.info("resuming %s from round %d of %d", out, start + 1, rounds)
    progress.info(
        "%s, %d site(s) (%s), rounds %d-%d -> %s",
        strategy.name,
        len(clients),
        ", ".join(clients),
        start + 1,
        rounds,
        out,
    )
    key, round_seconds = key_metric(bundle_dir), []

    for rnd in range(start, rounds):
        started = time.perf_counter()
        global_weights, server_state, rows, failed, rejected = _train_round(
            clients,
            strategy,
            global_weights,
            server_state,
            seed,
            rnd,
            min_sites,
            round_lr_scale(lr_schedule, rnd, rounds),
            compression,
        )
        rows += _evaluate(clients, strategy, global_weights, server_state, rnd)
        writer.write(rows)
        tick = time.perf_counter()
        save_checkpoint(
            out / CHECKPOINT,
            {
                "round": rnd,
                "run_config": json.loads(json.dumps(run_config)),
                "global_weights": global_weights,
                "server_state": server_state,
                "sites": site_states(clients),
                "failed": failed,
                "rejected": rejected,
                "metrics_bytes": writer.sizes(),  # the rows above; a resumed run cuts the files back to them
            },
        )
        writer.write(
            [
                (rnd, "server", "round", "checkpoint_seconds", time.perf_counter() - tick),
                (rnd, "server", "round", "seconds", time.perf_counter() - started),
            ]
        )
        round_seconds.append(time.perf_counter() - started)
        _log_round(rnd, rounds, round_seconds, key, rows, failed, rejected)

    # the trained model is written before the test phase, which a broken site must not cost
    torch.save(global_weights, out / "global_model.pt")
    for filename, artifact in strategy.artifacts(server_state).items():
        torch.save(artifact, out / filename)
    results: dict[str, Any] = {}
    if test:
        testers = (
            clients
            if not strategy.pooled
            else make_clients(bundle_dir, strategy, test_sites, leave_out_failed=True, **client_args)
        )
        testers = {**testers, **unseen_clients}
        progress.info("testing %d site(s) on their test split", len(testers))
        rows = _evaluate(testers, strategy, global_weights, server_state, rounds - 1, split="test")
        results = {name: {r[3]: r[4] for r in rows if r[1] == name} for name in testers}
        results = {name: metrics for name, metrics in results.items() if metrics}  # failed sites have none
        writer.write(rows)
        (out / "test_metrics.json").write_text(json.dumps(results, indent=2))
    writer.close()
    if figures:
        evaluation = evaluation_data(global_weights, strategy.server_payload(server_state))
        _write_figures(
            out,
            strategy.name,
            f"{strategy.name}, {bundle_dir.name}",
            task,
            testers if test else {},
            evaluation,
        )
    return results


# ------------------------------------------------------------------------------ the command line's console
LOG_FILE = "simulate.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# what the console leaves out at the default verbosity (the log file keeps it): messages a user cannot act on,
# repeated for every site and round or emitted by MONAI about its own code
QUIET = (
    "Logging file is set to False",  # the FL layer never applies a bundle's logging.conf (MONAI's FL default)
    "No workflow type and property file specified",
    "nvImageCodec",  # no GPU DICOM decoder: pydicom's own decoders are used
    "which is provisioned by the FL system",  # MONAI FL's warning for a server-sent bundle; here it is the user's
    "has been deprecated since version",  # MONAI passing its own deprecated arguments
    "this may result in nan/inf distance",  # HD95 of a class absent from a slice: MONAI's metric skips it
)


class ConsoleFilter(logging.Filter):
    """The console at the default verbosity: the progress lines, and warnings and errors except :data:`QUIET`.
    ``verbose`` lets everything through (MONAI's and ignite's per-iteration and per-epoch logs among it)."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name == progress.name:
            return True
        return record.levelno >= logging.WARNING and not any(q in record.getMessage() for q in QUIET)


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, verbose: bool) -> None:
        super().__init__(LOG_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        return (
            record.getMessage()
            if record.name == progress.name and not self.verbose
            else super().format(record)
        )


class RunLogHandler(logging.Handler):
    """Every record into ``path`` (appended: a resumed run continues its log). Records arrive before the run has
    checked its arguments and made its folder: they are held until the folder exists, so a refused run leaves
    nothing behind."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path, self.pending, self.stream = Path(path), [], None
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record))
            if self.stream is None and self.path.parent.is_dir():
                self.stream = open(self.path, "a")  # kept open for the run, closed by close()
            if self.stream is not None:
                self.stream.write("".join(line + "\n" for line in self.pending))
                self.stream.flush()
                self.pending = []
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        super().close()


def configure_logging(output: str | Path, verbose: bool = False) -> list[logging.Handler]:
    """The command line's logging: everything (Python warnings included) to ``<output>/simulate.log``; the
    console (stderr) filtered by :class:`ConsoleFilter`. MONAI's loggers print to stdout through their own
    handlers and do not propagate: theirs are replaced by these two. Returns the two handlers."""
    from monai.apps.utils import get_logger

    console = logging.StreamHandler(sys.stderr)
    console.addFilter(ConsoleFilter(verbose))
    console.setFormatter(_ConsoleFormatter(verbose))
    handlers = [console, RunLogHandler(Path(output) / LOG_FILE)]
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:  # basicConfig's console
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    logging.captureWarnings(True)
    # MONAI makes this one when a bundle's StatsHandler is built (once per site): made now, it is adopted below
    get_logger("monai.handlers.StatsHandler")
    for name, monai_logger in list(logging.root.manager.loggerDict.items()):
        if name.split(".")[0] == "monai" and isinstance(monai_logger, logging.Logger):
            for handler in [h for h in monai_logger.handlers if type(h) is logging.StreamHandler]:
                monai_logger.removeHandler(handler)
            # a logger from MONAI's get_logger does not propagate: its records reach the two handlers only here
            if not monai_logger.propagate:
                for handler in handlers:
                    monai_logger.addHandler(handler)
    return handlers


def results_table(results: Mapping[str, Mapping[str, float]], unseen: Sequence[str] = ()) -> str:
    """The test metrics per site and their mean over the training sites (unseen sites are listed after it):
    ``site | test mean_dice | test hd95``; a non-finite value is left out of the mean."""
    metrics = list(dict.fromkeys(m for values in results.values() for m in values))
    trained = [s for s in results if s not in unseen]

    def row(label: str, values: Mapping[str, float]) -> list[str]:
        return [label, *(f"{values[m]:.4f}" if m in values else "-" for m in metrics)]

    means = {}
    for m in metrics:
        values = [results[s][m] for s in trained if m in results[s] and math.isfinite(results[s][m])]
        if values:
            means[m] = sum(values) / len(values)
    header = ["site", *(f"test {m.removeprefix('val_')}" for m in metrics)]
    body = [row(s, results[s]) for s in trained]
    tail = [row(f"mean ({len(trained)} site{'s' if len(trained) != 1 else ''})", means)] + [
        row(f"{s} (unseen)", results[s]) for s in results if s in unseen
    ]
    widths = [max(len(r[i]) for r in [header, *body, *tail]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, body), rule, *map(line, tail)])


def _release(handlers: Sequence[logging.Handler]) -> None:
    """Undo :func:`configure_logging`'s handlers (the log file closed)."""
    for log in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        if isinstance(log, logging.Logger):
            for handler in handlers:
                log.removeHandler(handler)
    for handler in handlers:
        handler.close()


def simulate_command(*args: Any, verbose: bool = False, **kwargs: Any) -> None:
    """``python -m omnifm_monai.fl simulate``: :func:`simulate`, then its test metrics as a table.

    At the default verbosity the console shows one line per round (its time and the sites' mean validation
    key metric), the test table and the figures' paths; ``--verbose`` shows every log record (MONAI's and
    ignite's per-iteration and per-epoch logs). Everything is also written to ``<output>/simulate.log``.
    """
    bound = inspect.signature(simulate).bind(*args, **kwargs)
    bound.apply_defaults()
    handlers = configure_logging(bound.arguments["output"], verbose)
    try:
        results = simulate(*bound.args, **bound.kwargs)
        if results:
            unseen = _site_list(bound.arguments["unseen_sites"]) or ()
            print(results_table(results, list(unseen)))
        if (Path(bound.arguments["output"]) / LOG_FILE).is_file():
            print(f"full log: {Path(bound.arguments['output']) / LOG_FILE}")
    finally:
        _release(handlers)


# --help lists simulate's arguments, and --verbose
simulate_command.__doc__ = (
    f"{simulate_command.__doc__.rstrip()}\n\n{simulate.__doc__.split(chr(10) * 2, 1)[1].rstrip()}\n"
    "        verbose: show every log record on the console (the log file has them either way).\n"
)
simulate_command.__signature__ = inspect.signature(simulate).replace(  # what Fire and unknown flags read
    parameters=[
        *inspect.signature(simulate).parameters.values(),
        inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
    ],
    return_annotation=None,
)
