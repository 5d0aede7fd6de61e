"""NVFlare 2.9 glue: the server-side aggregator and the conversions both sides of an NVFlare job share.

The NVFlare server imports this module (the job's ``config_fed_server.json`` names
:class:`StrategyAggregator` by its dotted path), so it lives in the installed package; install
``omnifm_monai[fl]`` on the server and on every site. The client side is ``federated/client.py``.

What travels, and how (FLModel fields)::

    server -> site   params  global *shared* weights (FULL)     meta[PAYLOAD]  strategy.server_payload(state)
                                                                 meta[STATE]    the rest of the server state
    site -> server   params  shared weights, FULL or DIFF       meta[NUM_SAMPLES], meta[EXTRA] (ClientUpdate.extra)
                     metrics validation metrics of the global model the site received

Strategy payloads and extras hold tensors (an OmniFM bank, SCAFFOLD controls, FedDG amplitude spectra) in
nested dicts. They travel as ``bytes`` written by :func:`torch.save` and read back with
``torch.load(weights_only=True)``: bytes are native to NVFlare's FOBS serialiser whatever the exchange
format, lossless for every dtype, and keep the checkpoint NVFlare saves (``FL_global_model.pt``,
``meta_props``) loadable with ``weights_only=True``, which NVFlare's own model locator uses. NumPy arrays
in meta would break that, and torch tensors in meta depend on which FOBS decomposers a process registered.

The server state lives in the global model's meta: the aggregator reads the state of the model it sent
this round (``AppConstants.GLOBAL_MODEL``) and returns the new state with the new weights, so the state
of every completed round is in the saved checkpoint, and a job started from such a checkpoint
(``initial_ckpt``) continues with it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.app_constant import AppConstants

from . import compression
from .bundle import bundle_parser
from .engine import aggregate_round, site_network, strategy_overrides
from .strategies import ClientUpdate, Strategy, get_strategy, strategy_class, weighted_average

__all__ = [
    "EXTRA",
    "NUM_SAMPLES",
    "PAYLOAD",
    "REJECTED",
    "SITE_METRICS",
    "STATE",
    "StrategyAggregator",
    "UpdateDecoder",
    "UpdateEncoder",
    "decode",
    "encode",
    "federated_rounds",
    "flmodel_to_update",
    "initial_checkpoint",
    "initial_global_weights",
    "network_spec",
    "payload_from_meta",
    "read_global_model",
    "server_meta",
    "state_from_meta",
    "to_numpy",
    "to_torch",
    "update_to_flmodel",
]

# meta keys (namespaced: NVFlare adds its own, e.g. current_round, nr_aggregated, client_name)
PAYLOAD = "omnifm_payload"  # bytes: strategy.server_payload(state)
STATE = "omnifm_state"  # bytes: server state entries the payload does not already carry
EXTRA = "omnifm_extra"  # bytes: ClientUpdate.extra
NUM_SAMPLES = "omnifm_num_samples"  # int: ClientUpdate.num_samples
SITE = "omnifm_site"  # str: the sender's own name (NVFlare's authenticated client_name takes precedence)
SITE_METRICS = "omnifm_site_metrics"  # {site: {metric: float}} reported with this round's updates
REJECTED = "omnifm_rejected"  # {site: reason} updates the server refused this round
STRATEGY = "omnifm_strategy"  # str: the strategy name (a checkpoint of one strategy is not another's)
CODEC = "omnifm_codec"  # bytes: codec, block size, int8 scales and original dtypes of an encoded update


def federated_rounds(strategy: str | type[Strategy], check: bool = False) -> bool:
    """Whether a strategy runs as NVFlare rounds (send global -> train -> aggregate): not Local (no global
    model) nor Centralized (one pooled site); those run in the simulator. ``check`` raises instead of ``False``."""
    cls = strategy_class(strategy) if isinstance(strategy, str) else strategy
    ok = cls.shares_weights and not cls.pooled
    if check and not ok:
        raise ValueError(
            f"strategy {cls.name!r} has no federated rounds (no global model, or one pooled site); run it with the simulator."
        )
    return ok


# ------------------------------------------------------------------------------------------ encoding
def _detach(obj: Any) -> Any:
    """Tensors as contiguous CPU copies (a view would drag its whole storage into the bytes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone().contiguous()
    if isinstance(obj, Mapping):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_detach(v) for v in obj)
    return obj


def encode(obj: Any) -> bytes:
    """Nested dicts/lists of tensors and plain values -> bytes that NVFlare carries in ``FLModel.meta``."""
    buffer = io.BytesIO()
    torch.save(_detach(obj), buffer)
    return buffer.getvalue()


def decode(data: bytes | None) -> Any:
    """Inverse of :func:`encode` (``weights_only``: tensors and plain containers only; ``None`` -> ``{}``)."""
    if data is None:
        return {}
    return torch.load(io.BytesIO(bytes(data)), weights_only=True)


def to_torch(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """NVFlare params (NumPy arrays or tensors) -> CPU tensors of the same dtype and values."""
    return {
        k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).cpu()
        for k, v in params.items()
    }


def to_numpy(weights: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in weights.items()}


# ------------------------------------------------------------------------------------------ strategy and initial state
def initial_global_weights(
    bundle: str | Path, strategy: Strategy, overrides: Mapping[str, Any] | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The initial global (shared) weights exactly as the simulator computes them (:func:`site_network`),
    minus the strategy's private keys."""
    network = site_network(bundle, strategy, overrides, seed)
    private = strategy.private_keys(network)
    return {k: v.detach().cpu().clone() for k, v in network.state_dict().items() if k not in private}


def network_spec(
    bundle: str | Path, strategy: Strategy, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"class_path", "args"}`` of the bundle's ``network_def`` resolved with the overrides (for the recipe's
    ``model``: NVFlare's PyTorch persistor builds it on the server; the weights come from the initial checkpoint)."""
    parser = bundle_parser(bundle, strategy_overrides(bundle, strategy, overrides))
    config = parser.get("network_def")
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise ValueError(f"{bundle}: `network_def` must be a component with a `_target_`.")
    args = {}
    for key in config:
        if key.startswith("_"):
            continue
        value = parser.get_parsed_content(f"network_def::{key}", instantiate=True)
        value = list(value) if isinstance(value, tuple) else value
        if not isinstance(value, str | int | float | bool | list | dict | type(None)):
            raise ValueError(
                f"{bundle}: network_def::{key} resolves to {type(value).__name__}; the NVFlare job needs plain values."
            )
        args[key] = value
    return {"class_path": config["_target_"], "args": args}


def server_meta(strategy: Strategy, state: Mapping[str, Any]) -> dict[str, Any]:
    """The meta entries the server sends: the payload, and the state entries the payload does not carry."""
    payload = strategy.server_payload(state)
    rest = {k: v for k, v in state.items() if not (k in payload and payload[k] is v)}
    return {PAYLOAD: encode(payload), STATE: encode(rest), STRATEGY: strategy.name}


def state_from_meta(
    meta: Mapping[str, Any] | None, strategy: Strategy, global_weights: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """The server state in ``meta`` (see :func:`server_meta`), or the strategy's initial state if it has none."""
    meta = meta or {}
    if PAYLOAD not in meta:
        return strategy.init_state(dict(global_weights))
    if meta.get(STRATEGY, strategy.name) != strategy.name:
        raise ValueError(f"the global model carries {meta[STRATEGY]!r} server state, not {strategy.name!r}.")
    state = dict(decode(meta.get(STATE)))
    state.update(decode(meta[PAYLOAD]))
    return state


def payload_from_meta(
    meta: Mapping[str, Any] | None, strategy: Strategy, global_weights: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """Client side: the strategy payload the server sent (or the initial one when the model carries none)."""
    meta = meta or {}
    if PAYLOAD in meta:
        return dict(decode(meta[PAYLOAD]))
    return strategy.server_payload(strategy.init_state(dict(global_weights)))


def initial_checkpoint(
    path: str | Path,
    bundle: str | Path,
    strategy: Strategy,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write the recipe's ``initial_ckpt``: ``{"model": shared weights, "meta_props": server meta}``, the
    same start as the simulator's (weights and the round-0 payload, e.g. the empty OmniFM bank)."""
    weights = initial_global_weights(bundle, strategy, overrides, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "meta_props": server_meta(strategy, strategy.init_state(weights))}, path)
    return path


def read_global_model(
    path: str | Path, strategy: Strategy | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(weights, server state, meta)`` from a checkpoint NVFlare's persistor saved (``FL_global_model.pt``)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    weights, meta = dict(data["model"]), dict(data.get("meta_props") or {})
    if strategy is None:
        strategy = get_strategy(meta.get(STRATEGY, "fedavg"))
    return weights, state_from_meta(meta, strategy, weights), meta


# ------------------------------------------------------------------------------------------ FLModel <-> ClientUpdate
def update_to_flmodel(
    update: ClientUpdate, metrics: Mapping[str, float] | None = None, iterations: int | None = None
) -> FLModel:
    """A site's :class:`ClientUpdate` as the FLModel it sends (weights as tensors: the Client API converts them)."""
    meta = {
        NUM_SAMPLES: int(update.num_samples),
        EXTRA: encode(update.extra),
        SITE: update.site,
        FLMetaKey.NUM_STEPS_CURRENT_ROUND: int(iterations if iterations is not None else update.num_samples),
    }
    return FLModel(
        params=dict(update.weights),
        params_type=ParamsType.DIFF if update.weight_type == "diff" else ParamsType.FULL,
        meta=meta,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
    )


def flmodel_to_update(model: FLModel) -> ClientUpdate:
    """The server's view of a received FLModel (site from NVFlare's ``client_name``, which the site cannot forge)."""
    meta = model.meta or {}
    params_type = (
        model.params_type.value
        if isinstance(model.params_type, ParamsType)
        else str(model.params_type or "FULL")
    )
    return ClientUpdate(
        site=str(meta.get("client_name") or meta.get(SITE) or "unknown"),
        weights=to_torch(model.params or {}),
        num_samples=int(meta.get(NUM_SAMPLES, 0)),
        weight_type={"FULL": "full", "DIFF": "diff"}.get(params_type.upper(), params_type),
        extra=decode(meta.get(EXTRA)),
    )


# ------------------------------------------------------------------------------------------ server
class StrategyAggregator(ModelAggregator):
    """Any strategy of :mod:`omnifm_monai.fl.strategies` as NVFlare's FedAvg aggregator.

    Plug into ``FedAvgRecipe(aggregator=StrategyAggregator(...))``. Each round it collects the sites' FLModels
    as :class:`ClientUpdate` s, and at the end of the round calls :func:`aggregate_round` (the function the
    in-process simulator calls) with the global weights and server state of the model sent this round.
    Invalid updates (NaN/Inf, wrong keys or shapes, no samples) are rejected and logged and the round goes
    on; fewer than ``min_updates`` valid ones fail the round, and NVFlare keeps the last saved model.
    Updates are aggregated in the order of ``sites`` (then by name), not in arrival order, so the result
    does not depend on which site finished first.

    Args:
        strategy_name: a key of ``STRATEGIES`` (not ``local``/``centralized``: they are not federated rounds).
        strategy_options: the strategy's keyword options (see :func:`make_strategy`).
        min_updates: valid updates a round needs.
        sites: the aggregation order (the simulator's site order).
    """

    def __init__(
        self,
        strategy_name: str = "fedavg",
        strategy_options: dict | None = None,
        min_updates: int = 1,
        sites: list | None = None,
    ) -> None:
        super().__init__()
        # attribute names equal the argument names: NVFlare's job exporter reads them back
        self.strategy_name, self.strategy_options = strategy_name, dict(strategy_options or {})
        self.min_updates, self.sites = int(min_updates), list(sites or self.strategy_options.get("sites", []))
        federated_rounds(strategy_name, check=True)
        self.strategy = get_strategy(strategy_name, **self.strategy_options)
        self._lock = threading.Lock()
        self._updates: list[ClientUpdate] = []
        self._metrics: dict[str, dict[str, float]] = {}
        self._numpy = True

    def reset_stats(self) -> None:
        with self._lock:
            self._updates, self._metrics = [], {}

    def accept_model(self, model: FLModel) -> None:
        try:
            update = flmodel_to_update(model)
        except Exception as err:  # a malformed result must not stop the round
            self.warning(f"rejected a malformed result: {err!r}")
            return
        with self._lock:
            self._numpy = not any(isinstance(v, torch.Tensor) for v in (model.params or {}).values())
            self._updates.append(update)
            self._metrics[update.site] = {
                k: float(v) for k, v in (model.metrics or {}).items() if isinstance(v, int | float)
            }
        self.info(
            f"received the update of {update.site} ({update.num_samples} samples, {update.weight_type})"
        )

    def _global_model(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights and meta of the model the controller sent this round (sticky ``GLOBAL_MODEL`` prop)."""
        learnable = self.fl_ctx.get_prop(AppConstants.GLOBAL_MODEL) if self.fl_ctx is not None else None
        if learnable is None:
            raise RuntimeError(
                "StrategyAggregator found no global model in the FL context; run it under a ModelController."
            )
        return to_torch(learnable[ModelLearnableKey.WEIGHTS]), dict(
            learnable.get(ModelLearnableKey.META) or {}
        )

    def _order(self, update: ClientUpdate) -> tuple:
        return (
            (self.sites.index(update.site), "")
            if update.site in self.sites
            else (len(self.sites), update.site)
        )

    def aggregate_model(self) -> FLModel:
        with self._lock:
            updates, metrics = sorted(self._updates, key=self._order), dict(self._metrics)
            self._updates, self._metrics = [], {}
        global_weights, meta = self._global_model()
        state = state_from_meta(meta, self.strategy, global_weights)
        new, state, rejected = aggregate_round(
            self.strategy, global_weights, updates, state, self.min_updates
        )
        for site, reason in rejected.items():
            self.warning(f"rejected the update of {site}: {reason}")
        accepted = [u for u in updates if u.site not in rejected]
        self.info(f"aggregated {len(accepted)} of {len(updates)} updates with {self.strategy.name}")
        round_metrics = None
        keys = set.intersection(*(set(metrics.get(u.site, {})) for u in accepted)) if accepted else set()
        if keys:
            counts = [u.num_samples for u in accepted]
            mean = weighted_average(
                [{k: torch.tensor(metrics[u.site][k], dtype=torch.float64) for k in keys} for u in accepted],
                counts,
            )
            round_metrics = {k: float(v) for k, v in mean.items()}
        return FLModel(
            params=to_numpy(new) if self._numpy else new,
            params_type=ParamsType.FULL,
            metrics=round_metrics,
            meta={**server_meta(self.strategy, state), SITE_METRICS: metrics, REJECTED: dict(rejected)},
        )


# ------------------------------------------------------------------------------------------ update compression
def _like(weights: Mapping[str, torch.Tensor], numpy: bool) -> dict[str, Any]:
    return to_numpy(weights) if numpy else dict(weights)


class UpdateEncoder(DXOFilter):
    """A site's task-result filter: its update, a difference to the global weights (``WEIGHT_DIFF``; ``client.py``
    sends one when the job compresses), encoded with :mod:`~omnifm_monai.fl.compression` (the simulator's codec;
    integer tensors unchanged, NumPy or torch params alike). The server's :class:`UpdateDecoder` restores it.

    Args:
        codec: ``fp16`` or ``int8`` (see :data:`~omnifm_monai.fl.compression.CODECS`).
        block_size: values per int8 block.
    """

    def __init__(self, codec: str = "int8", block_size: int = compression.BLOCK_SIZE) -> None:
        super().__init__(
            supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=[DataKind.WEIGHT_DIFF]
        )
        if compression.check_codec(codec) == "none":
            raise ValueError("UpdateEncoder needs a lossy codec (fp16 or int8); for none add no filter.")
        self.codec, self.block_size = codec, block_size  # named as the arguments: the job exporter reads them

    def process_dxo(self, dxo: DXO, shareable, fl_ctx) -> DXO | None:
        if dxo.get_meta_prop(CODEC) is not None:
            return None  # already encoded
        numpy = not any(isinstance(v, torch.Tensor) for v in dxo.data.values())
        values, scales, dtypes = compression.encode(to_torch(dxo.data), self.codec, self.block_size)
        info = {"codec": self.codec, "block_size": self.block_size, "scales": scales, "dtypes": dtypes}
        return DXO(dxo.data_kind, _like(values, numpy), {**dxo.meta, CODEC: encode(info)})


class UpdateDecoder(DXOFilter):
    """The server's task-result filter: an update :class:`UpdateEncoder` encoded, back in its original dtypes
    (the format it arrived in), before the aggregator sees it; an update without the codec's meta passes."""

    def __init__(self) -> None:
        super().__init__(
            supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=[DataKind.WEIGHT_DIFF]
        )

    def process_dxo(self, dxo: DXO, shareable, fl_ctx) -> DXO | None:
        if dxo.get_meta_prop(CODEC) is None:
            return None
        info = decode(dxo.get_meta_prop(CODEC))
        numpy = not any(isinstance(v, torch.Tensor) for v in dxo.data.values())
        weights = compression.decode(to_torch(dxo.data), info["scales"], info["dtypes"], info["block_size"])
        meta = {k: v for k, v in dxo.meta.items() if k != CODEC}
        return DXO(dxo.data_kind, _like(weights, numpy), meta)
