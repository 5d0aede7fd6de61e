"""The engine-neutral core of a federation: every engine (the in-process simulator, the NVFlare client and
aggregator) builds its sites, runs their rounds and aggregates with these functions, so the engines differ
only in how weights travel.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data.utils import set_rnd
from monai.fl.utils.constants import WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from monai.utils import set_determinism

from omnifm_monai.data.validation import root_cause
from omnifm_monai.errors import SettingsError

from .bundle import argument_names, build_network, network_class
from .client import EXTRA_KEY, OmniFMClientAlgo
from .compression import EncodedUpdate, encode_update
from .strategies import ClientUpdate, Strategy, Weights, strategy_class, validate_update

__all__ = [
    "LR_SCHEDULES",
    "aggregate_round",
    "client_round",
    "evaluation_data",
    "load_matching",
    "make_clients",
    "make_strategy",
    "restore_sites",
    "round_lr_scale",
    "round_seed",
    "site_network",
    "site_states",
    "strategy_overrides",
    "update_bytes",
]

logger = logging.getLogger("omnifm_monai.fl")


# ------------------------------------------------------------------------------------------ set-up
def strategy_overrides(
    bundle: str | Path, strategy: Strategy, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The bundle overrides every site of a run uses: the run's own, then the strategy's network switches."""
    return {**dict(overrides or {}), **strategy.network_overrides(network_class(bundle))}


def site_network(
    bundle: str | Path,
    strategy: Strategy,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    dataset_dir: str | None = None,
) -> torch.nn.Module:
    """The network every engine starts from: ``set_determinism(seed)``, then the bundle's ``network_def`` with
    the run's and the strategy's overrides and, if given, a site's data folder (networks sized by the data,
    e.g. VQA's vocabulary, read it)."""
    set_determinism(seed)
    site = {"dataset_dir": dataset_dir} if dataset_dir else {}
    return build_network(bundle, {**site, **strategy_overrides(bundle, strategy, overrides)})


def make_strategy(
    bundle: str | Path,
    name: str,
    sites: Sequence[str],
    options: Mapping[str, Any] | None = None,
    network: torch.nn.Module | None = None,
    dataset_dir: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Strategy, dict[str, Any]]:
    """The strategy and its full, JSON-serialisable options, as every engine resolves them: the options the
    strategy takes from the network and the site list (:meth:`Strategy.resolve_options`), then the given ones.
    Without ``network`` the bundle's is built with the run's ``overrides`` (e.g. another spectral token size
    sizes the bank) and a site's ``dataset_dir`` (for networks sized by the data)."""
    cls, options = strategy_class(name), dict(options or {})
    unknown = sorted(set(options) - argument_names(cls))
    if unknown:
        raise SettingsError(
            f"unknown option(s) {unknown} for strategy {cls.name!r}; it takes {sorted(argument_names(cls))}."
        )
    if network is None:
        site = {"dataset_dir": dataset_dir} if dataset_dir else {}
        network = build_network(bundle, {**site, **strategy_overrides(bundle, cls(**options), overrides)})
    resolved = {**cls.resolve_options(network, list(sites)), **options}
    return cls(**resolved), json.loads(json.dumps(resolved))


def make_clients(
    bundle: str | Path,
    strategy: Strategy,
    site_dirs: Mapping[str, str],
    network: torch.nn.Module,
    overrides: Mapping[str, Any] | None = None,
    workdir: str | Path = "fl_sites",
    local_epochs: int = 1,
    send_weight_diff: bool = False,
    leave_out_failed: bool = False,
) -> dict[str, OmniFMClientAlgo]:
    """One initialised client per site, all training ``network`` in place (private state kept per client).
    ``leave_out_failed``: a site whose bundle or data fails to initialise (e.g. its datalist does not validate)
    is logged with the reason and left out instead of stopping every other site."""
    overrides = strategy_overrides(bundle, strategy, overrides)
    clients = {}
    for name, folder in site_dirs.items():
        client = OmniFMClientAlgo(
            str(bundle),
            strategy,
            site=name,
            dataset_dir=str(folder),
            local_epochs=local_epochs,
            send_weight_diff=send_weight_diff,
            workdir=str(workdir),
            train_kwargs=overrides,
            network=network,
        )
        try:
            client.initialize()
        except Exception as err:
            if not leave_out_failed:
                raise
            logger.error("site %s (%s) left out: %s", name, folder, root_cause(err))
            continue
        clients[name] = client
    return clients


def site_states(clients: Mapping[str, OmniFMClientAlgo]) -> dict[str, dict[str, Any]]:
    """What a checkpoint keeps of every site: its private state and its strategy state."""
    return {n: {"private_state": c.private_state, "client_state": c.client_state} for n, c in clients.items()}


def restore_sites(clients: Mapping[str, OmniFMClientAlgo], states: Mapping[str, Mapping[str, Any]]) -> None:
    """Inverse of :func:`site_states`."""
    for name, client in clients.items():
        if name in states:  # a site left out of the checkpointed rounds starts afresh
            client.private_state = states[name]["private_state"]
            client.client_state = states[name]["client_state"]


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


# ------------------------------------------------------------------------------------------ rounds
def round_seed(seed: int, *keys: Any) -> int:
    """A seed for one (round, site, ...) derived from the run's seed: rounds replay identically on resume."""
    return zlib.crc32(json.dumps([seed, *keys]).encode()) % (2**31)


LR_SCHEDULES = ("constant", "cosine")


def round_lr_scale(schedule: str, rnd: int, rounds: int) -> float:
    """The factor on the bundle's learning rate in round ``rnd`` (0-based) of ``rounds``, the same for every
    site and strategy: ``constant`` 1; ``cosine`` from 1 in the first round down towards 0 (the last round
    still trains, at a small rate), so that a fixed budget of rounds ends on a flat validation curve."""
    if schedule not in LR_SCHEDULES:
        raise SettingsError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}.")
    if not 0 <= rnd < rounds:
        raise ValueError(f"round {rnd} is outside 0..{rounds - 1}.")
    return 1.0 if schedule == "constant" else 0.5 * (1.0 + math.cos(math.pi * rnd / rounds))


def client_round(
    client: OmniFMClientAlgo,
    global_weights: Mapping[str, torch.Tensor],
    payload: Mapping[str, Any],
    seed: int,
    rnd: int,
    index: int,
    lr_scale: float = 1.0,
    compression: str = "none",
) -> ClientUpdate | EncodedUpdate:
    """One site's round, as every engine runs it: reseed, load the global state and payload, train (at
    ``lr_scale`` times the bundle's learning rate, see :func:`round_lr_scale`), package the update: with a
    ``compression`` codec, its difference to ``global_weights`` encoded (:func:`~.compression.encode_update`;
    the server aggregates :func:`~.compression.decode_update` of it)."""
    client.lr_scale = lr_scale
    torch.manual_seed(round_seed(seed, rnd, index))
    set_rnd(client.trainer.data_loader.dataset, round_seed(seed, rnd, index, "data"))
    data = ExchangeObject(weights=dict(global_weights), weight_type=WeightType.WEIGHTS)
    data[EXTRA_KEY] = dict(payload)
    client.train(data)
    result = client.get_weights()
    update = ClientUpdate(
        site=client.site,
        weights=result.weights,
        num_samples=result.statistics["num_samples"],
        weight_type="diff" if result.weight_type == WeightType.WEIGHT_DIFF else "full",
        extra=result[EXTRA_KEY],
    )
    return encode_update(update, global_weights, compression)


def evaluation_data(global_weights: Mapping[str, torch.Tensor], payload: Mapping[str, Any]) -> ExchangeObject:
    """What a site evaluates: the global weights and the server's payload (e.g. the merged bank)."""
    data = ExchangeObject(weights=dict(global_weights))
    data[EXTRA_KEY] = dict(payload)
    return data


def update_bytes(update: ClientUpdate | EncodedUpdate) -> int:
    """Bytes a site uploads in a round: its weights (or encoded update) and strategy extras, serialised as torch
    would send them."""
    buffer = io.BytesIO()
    if isinstance(update, EncodedUpdate):
        torch.save(update.payload(), buffer)
    else:
        torch.save(
            {"weights": update.weights, "extra": update.extra, "num_samples": update.num_samples}, buffer
        )
    return buffer.tell()


def aggregate_round(
    strategy: Strategy,
    global_weights: Weights,
    updates: Sequence[ClientUpdate],
    state: dict[str, Any],
    min_updates: int = 1,
) -> tuple[Weights, dict[str, Any], dict[str, str]]:
    """Reject invalid updates (weights: :func:`validate_update`; extras: the strategy's ``validate_extra``),
    logged and returned by site, then aggregate the rest with the strategy's rule.

    Raises ``RuntimeError`` when fewer than ``min_updates`` valid updates remain; the caller keeps the
    previous global state, so a failed round loses nothing.
    """
    rejected = {}
    valid = []
    for update in updates:
        try:
            reason = (
                validate_update(update, global_weights)
                if update.weight_type in ("full", "diff")
                else f"unknown weight_type {update.weight_type!r}"
            ) or strategy.validate_extra(update, state)
        except Exception as err:  # a malformed update must not stop the round
            reason = f"malformed update ({err})"
        if reason:
            logger.warning("rejected the update of site %s: %s", update.site, reason)
            rejected[update.site] = reason
        else:
            valid.append(update)
    if len(valid) < max(1, min_updates):
        raise RuntimeError(f"only {len(valid)} valid updates (need {min_updates}); rejected: {rejected}")
    new, state = strategy.aggregate(global_weights, valid, state)
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in new.values()):
        raise RuntimeError("aggregation produced NaN/Inf weights; the previous global model is kept.")
    return new, state, rejected
