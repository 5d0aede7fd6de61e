"""In-process federated simulator: every site of a bundle in one process, one network, resumable rounds.

    python -m omnifm_monai.fl simulate --bundle bundles/omnifm_segmentation --strategy omnifm --rounds 5 --output runs/seg

Each site is an :class:`~omnifm_monai.fl.client.OmniFMClientAlgo` over the same bundle with its own
``dataset_dir``; all sites train one shared network in turn (loading the global weights and their private
state first), so memory grows with the number of sites only by their data and private state. The server
side is :func:`~omnifm_monai.fl.strategies.aggregate_round`, the same code the NVFlare job runs.

Written to ``output``: ``metrics.csv`` (``round, site, split, metric, value, strategy``), ``metrics.jsonl``,
TensorBoard events, and ``checkpoint.pt`` (global weights, server state, every site's private and strategy
state) replaced atomically after every round; a killed run resumes from the last completed round and ends
with the same result as an uninterrupted one (every round reseeds from ``seed``, round and site).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data.utils import set_rnd
from monai.fl.utils.constants import WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from monai.utils import set_determinism

from .client import EXTRA_KEY, OmniFMClientAlgo
from .strategies import ClientUpdate, Strategy, aggregate_round, get_strategy

__all__ = ["build_network", "bundle_task", "client_round", "default_sites", "load_matching", "make_strategy", "round_seed", "simulate", "update_bytes"]

logger = logging.getLogger("omnifm_monai.fl")
CHECKPOINT = "checkpoint.pt"


def bundle_task(bundle: str | Path) -> str:
    """The datalist task a bundle reads (its ``task`` id: ``segmentation``, ``classification``, ...)."""
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "train.json"))
    if "task" not in parser:
        raise ValueError(f"{bundle}/configs/train.json defines no `task` id; the simulator needs it to find site data.")
    return parser["task"]


def default_sites(bundle: str | Path, reference_dir: str | Path) -> dict[str, str]:
    """Every reference site that has a datalist for the bundle's task, name -> folder."""
    task = bundle_task(bundle)
    sites = {p.name: str(p) for p in sorted(Path(reference_dir).iterdir()) if (p / f"{task}.json").is_file()}
    if not sites:
        raise FileNotFoundError(f"no site under {reference_dir} has a {task}.json datalist; build them with "
                                "`python -m omnifm_monai.data build_reference_sites`.")
    return sites


def _pooled_site(sites: Mapping[str, str], task: str, folder: Path) -> dict[str, str]:
    """Centralized: one datalist whose training items are every site's (paths made absolute)."""
    folder.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    for site_dir in sites.values():
        datalist = json.loads((Path(site_dir) / f"{task}.json").read_text())
        for key, value in datalist.items():
            if isinstance(value, list) and key in ("training", "validation", "test"):
                items = [{**item, **{k: str(Path(site_dir) / v) for k, v in item.items() if k in ("image", "label") and isinstance(v, str)}}
                         for item in value]
                merged.setdefault(key, []).extend(items)
            else:
                merged.setdefault(key, value)
    merged["site"], merged["modality"] = "pooled", merged.get("modality", "pooled")
    tmp = folder / f"{task}.json.tmp"
    tmp.write_text(json.dumps(merged))
    os.replace(tmp, folder / f"{task}.json")
    return {"pooled": str(folder)}


def round_seed(seed: int, *keys: Any) -> int:
    """A seed for one (round, site, ...) derived from the run's seed: rounds replay identically on resume."""
    return zlib.crc32(json.dumps([seed, *keys]).encode()) % (2**31)


def client_round(
    client: OmniFMClientAlgo, global_weights: Mapping[str, torch.Tensor], payload: Mapping[str, Any], seed: int, rnd: int, index: int
) -> ClientUpdate:
    """One site's round, as every engine runs it: reseed, load the global state and payload, train, package the update."""
    torch.manual_seed(round_seed(seed, rnd, index))
    set_rnd(client.trainer.data_loader.dataset, round_seed(seed, rnd, index, "data"))
    data = ExchangeObject(weights=dict(global_weights), weight_type=WeightType.WEIGHTS)
    data[EXTRA_KEY] = dict(payload)
    client.train(data)
    result = client.get_weights()
    return ClientUpdate(
        site=client.site, weights=result.weights, num_samples=result.statistics["num_samples"],
        weight_type="diff" if result.weight_type == WeightType.WEIGHT_DIFF else "full", extra=result[EXTRA_KEY],
    )


def load_matching(network: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Load every tensor of ``weights`` whose name and shape match ``network``; returns the names loaded."""
    state = network.state_dict()
    loaded = [k for k, v in weights.items() if k in state and state[k].shape == v.shape]
    if not loaded:
        raise ValueError("no tensor of the initial weights matches the network (another bundle or task?).")
    with torch.no_grad():
        for k in loaded:
            state[k].copy_(weights[k])
    logger.info("initial weights: %d of %d network tensors loaded", len(loaded), len(state))
    return loaded


def update_bytes(update: ClientUpdate) -> int:
    """Bytes a site uploads in a round: its weights and strategy extras, serialised as torch would send them."""
    buffer = io.BytesIO()
    torch.save({"weights": update.weights, "extra": update.extra, "num_samples": update.num_samples}, buffer)
    return buffer.tell()


def build_network(bundle: str | Path, overrides: Mapping[str, Any]) -> torch.nn.Module:
    """The bundle's ``network`` with ``overrides`` (e.g. a strategy's ``network_overrides``)."""
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "train.json"))
    parser.update(dict(overrides))
    return parser.get_parsed_content("network")


def make_strategy(bundle: str | Path, name: str, sites: Sequence[str], options: Mapping[str, Any] | None = None) -> tuple[Strategy, dict[str, Any]]:
    """The strategy and its full, JSON-serialisable options, as every engine resolves them: ``omnifm`` gets the
    site list and the bundle's ``modalities`` (the server's bank must match the network's); ``scaffold`` /
    ``feddyn`` get the number of sites."""
    opts = dict(options or {})
    if name == "omnifm":
        opts.setdefault("sites", list(sites))
        parser = ConfigParser()
        parser.read_config(str(Path(bundle) / "configs" / "train.json"))
        opts.setdefault("modalities", list(parser.get_parsed_content("modalities")))
    if name in ("scaffold", "feddyn"):
        opts.setdefault("num_sites", len(sites))
    return get_strategy(name, **opts), opts


class _Writer:
    """Per-round metrics as CSV, JSON lines and TensorBoard scalars (appended, so a resumed run continues)."""

    FIELDS = ("round", "site", "split", "metric", "value", "strategy")

    def __init__(self, output: Path, strategy: str) -> None:
        self.output, self.strategy = output, strategy
        self.csv = output / "metrics.csv"
        if not self.csv.exists():
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(output / "tensorboard"))

    def write(self, rows: Sequence[tuple]) -> None:
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerows([(*r, self.strategy) for r in rows])
        with open(self.output / "metrics.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps(dict(zip(self.FIELDS, (*r, self.strategy), strict=True))) + "\n")
        for rnd, site, split, metric, value in rows:
            self.tb.add_scalar(f"{split}/{metric}/{site}", value, rnd)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()  # its writer thread and file handle; many runs may share one process

    def truncate_after(self, last_round: int) -> None:
        """Drop rows of rounds after ``last_round`` (written by a run killed before its checkpoint)."""
        with open(self.csv) as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= last_round]
        with open(self.csv, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        jsonl = self.output / "metrics.jsonl"
        if jsonl.exists():
            lines = [line for line in jsonl.read_text().splitlines() if json.loads(line)["round"] <= last_round]
            jsonl.write_text("".join(line + "\n" for line in lines))


def _save_checkpoint(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a completed round is never half-written


def _load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)  # tensors and plain containers only
    except Exception as err:
        raise RuntimeError(f"refusing the checkpoint {path}: it is corrupt or holds more than tensors ({err}).") from err


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
) -> dict[str, Any]:
    """Run (or resume) a federated job in this process; returns the final metrics per site.

    Args:
        bundle: bundle folder.
        strategy: a strategy name (see ``omnifm_monai.fl.strategies.STRATEGIES``) or instance.
        rounds: total rounds (a resumed run continues up to this number).
        output: run folder (metrics, TensorBoard, checkpoint).
        sites: site names under ``reference_dir``, or name -> dataset folder; default: every reference site
            with a datalist for the bundle's task.
        reference_dir: where the reference sites are.
        local_epochs: local epochs per round (the same budget for every strategy).
        seed: every (round, site) is seeded from it.
        min_sites: a round needs this many valid updates; fewer keeps the previous global model and stops.
        send_weight_diff: clients send ``local - global`` (labelled as differences).
        test: evaluate every site on its test split after the last round.
        overrides: bundle overrides for every site (e.g. ``{"batch_size": 4, "image_size": 64}``).
        strategy_options: keyword options of the strategy (e.g. ``{"mu": 0.01}``).
        init_weights: a state dict (e.g. another run's ``global_model.pt``) to start from: every tensor whose
            name and shape match the network is loaded, the rest keeps its initialisation (fine-tuning).
    """
    bundle_dir, out = Path(bundle), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    task = bundle_task(bundle_dir)
    site_dirs = dict(sites) if isinstance(sites, Mapping) else (
        {s: str(Path(reference_dir) / s) for s in sites} if sites else default_sites(bundle_dir, reference_dir)
    )
    if isinstance(strategy, str):
        strategy = make_strategy(bundle_dir, strategy, list(site_dirs), strategy_options)[0]
    test_sites = site_dirs  # a pooled (Centralized) model is still tested on every site's own test split
    if strategy.pooled:
        site_dirs = _pooled_site(site_dirs, task, out / "pooled_data")
    overrides = {**dict(overrides or {}), **strategy.network_overrides}

    run_config = {"bundle": str(bundle_dir.resolve()), "strategy": strategy.name, "sites": site_dirs, "seed": seed,
                  "local_epochs": local_epochs, "init_weights": init_weights, "overrides": {k: v for k, v in overrides.items() if isinstance(v, int | float | str | bool)}}
    config_file = out / "run.json"
    checkpoint = _load_checkpoint(out / CHECKPOINT)
    if checkpoint is not None:
        previous = json.loads(config_file.read_text()) if config_file.exists() else None
        if previous != json.loads(json.dumps(run_config)):
            raise ValueError(f"{out} holds a run with another configuration ({config_file}); choose another --output.")
        if checkpoint["round"] + 1 >= rounds and (not test or (out / "test_metrics.json").exists()):
            logger.info("%s already completed %d rounds", out, checkpoint["round"] + 1)
            return json.loads((out / "test_metrics.json").read_text()) if test else {}
    else:
        config_file.write_text(json.dumps(run_config, indent=2))

    set_determinism(seed)
    # a site's data folder, for networks sized by the data (VQA's vocabulary, shared by every site)
    network = build_network(bundle_dir, {"dataset_dir": next(iter(site_dirs.values())), **overrides})
    if init_weights:
        load_matching(network, torch.load(init_weights, weights_only=True))

    def make_client(name: str, folder: str) -> OmniFMClientAlgo:
        client = OmniFMClientAlgo(str(bundle_dir), strategy, site=name, dataset_dir=folder, local_epochs=local_epochs,
                                  send_weight_diff=send_weight_diff, workdir=str(out / "sites"), train_kwargs=overrides, network=network)
        client.initialize()
        return client

    clients = {name: make_client(name, folder) for name, folder in site_dirs.items()}
    first = next(iter(clients.values()))
    global_weights = first._shared_state() if strategy.name != "local" else {}
    server_state = strategy.init_state(global_weights)
    start = 0
    writer = _Writer(out, strategy.name)
    if checkpoint is not None:
        start = checkpoint["round"] + 1
        global_weights, server_state = checkpoint["global_weights"], checkpoint["server_state"]
        for name, client in clients.items():
            client.private_state = checkpoint["sites"][name]["private_state"]
            client.client_state = checkpoint["sites"][name]["client_state"]
        writer.truncate_after(checkpoint["round"])
        logger.info("resuming %s from round %d of %d", out, start, rounds)

    for rnd in range(start, rounds):
        started = time.perf_counter()
        payload = strategy.server_payload(server_state)
        updates, failed, cost = [], {}, []
        train_seconds = 0.0
        for i, (name, client) in enumerate(clients.items()):
            tick = time.perf_counter()
            try:
                updates.append(client_round(client, global_weights, payload, seed, rnd, i))
                cost.append((rnd, name, "round", "upload_bytes", float(update_bytes(updates[-1]))))
                train_seconds += client.trainer.state.times.get("COMPLETED") or 0.0  # the trainer's own run time
            except Exception as err:  # a site failing mid-round drops out of this round only
                logger.exception("site %s failed in round %d", name, rnd)
                failed[name] = repr(err)
            logger.info("round %d/%d | site %s trained in %.1fs", rnd + 1, rounds, name, time.perf_counter() - tick)
        if not updates:
            raise RuntimeError(f"every site failed in round {rnd + 1}: {failed}")
        if strategy.name == "local":
            new_global, server_state, rejected = global_weights, server_state, {}
        else:
            new_global, server_state, rejected = aggregate_round(strategy, global_weights, updates, server_state, min_sites)
        global_weights = new_global
        rows, eval_seconds = [], 0.0
        evaluation = ExchangeObject(weights=global_weights)
        evaluation[EXTRA_KEY] = strategy.server_payload(server_state)  # e.g. the merged bank
        for name, client in clients.items():
            metrics = client.evaluate(evaluation).metrics
            eval_seconds += client.evaluator.state.times.get("COMPLETED") or 0.0
            rows += [(rnd, name, "validation", k, v) for k, v in metrics.items()]
        rows += cost + [
            (rnd, "server", "round", "train_seconds", train_seconds),
            (rnd, "server", "round", "eval_seconds", eval_seconds),
            (rnd, "server", "round", "sites_aggregated", float(len(updates) - len(rejected))),
        ]
        writer.write(rows)
        tick = time.perf_counter()
        _save_checkpoint(out / CHECKPOINT, {
            "round": rnd, "global_weights": global_weights, "server_state": server_state,
            "sites": {n: {"private_state": c.private_state, "client_state": c.client_state} for n, c in clients.items()},
            "failed": failed, "rejected": rejected,
        })
        writer.write([(rnd, "server", "round", "checkpoint_seconds", time.perf_counter() - tick),
                      (rnd, "server", "round", "seconds", time.perf_counter() - started)])
        key = [r for r in rows if r[2] == "validation"]
        summary = ", ".join(f"{r[1]} {r[3]}={r[4]:.4f}" for r in key[:: max(1, len(key) // len(clients))])
        logger.info("round %d/%d done in %.1fs | %s", rnd + 1, rounds, time.perf_counter() - started, summary)

    results: dict[str, Any] = {}
    if test:
        rows = []
        evaluation = ExchangeObject(weights=global_weights)
        evaluation[EXTRA_KEY] = strategy.server_payload(server_state)
        testers = clients if not strategy.pooled else {name: make_client(name, f) for name, f in test_sites.items()}
        for name, client in testers.items():
            metrics = client.evaluate(evaluation, extra={"split": "test"}).metrics
            results[name] = metrics
            rows += [(rounds - 1, name, "test", k, v) for k, v in metrics.items()]
        writer.write(rows)
        (out / "test_metrics.json").write_text(json.dumps(results, indent=2))
    writer.close()
    torch.save(global_weights, out / "global_model.pt")
    if strategy.name == "omnifm":
        torch.save(server_state["bank"], out / "bank.pt")
    return results
