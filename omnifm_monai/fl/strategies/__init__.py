"""Federated strategies: each one a class holding its server rule and its client hooks (see :mod:`.base`).

Importing this package loads no engine (no simulator, no MONAI FL client, no NVFlare): the NVFlare server
imports it to aggregate, and a user's strategy in another package only needs :class:`Strategy`.
"""

from __future__ import annotations

import importlib
from typing import Any

from omnifm_monai.errors import SettingsError

from .base import (
    ClientUpdate,
    SiteContext,
    Strategy,
    Weights,
    head_keys,
    network_private_keys,
    norm_keys,
    validate_update,
    weighted_average,
)
from .ditto import Ditto
from .fedavg import Centralized, FedAvg, LocalOnly
from .fedbn import FedBN
from .feddg import FedDG
from .feddyn import FedDyn
from .fedper import FedPer, FedRep
from .fedprox import FedProx
from .harmofl import HarmoFL
from .moon import MOON
from .omnifm import OmniFMStrategy
from .scaffold import SCAFFOLD
from .server_optimizers import FedAdam, FedAvgM, FedYogi

__all__ = [
    "MOON",
    "SCAFFOLD",
    "STRATEGIES",
    "Centralized",
    "ClientUpdate",
    "Ditto",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBN",
    "FedDG",
    "FedDyn",
    "FedPer",
    "FedProx",
    "FedRep",
    "FedYogi",
    "HarmoFL",
    "LocalOnly",
    "OmniFMStrategy",
    "SiteContext",
    "Strategy",
    "Weights",
    "get_strategy",
    "head_keys",
    "network_private_keys",
    "norm_keys",
    "strategy_class",
    "validate_update",
    "weighted_average",
]

#: short names of the built-in strategies (any other strategy is named by its dotted path)
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (LocalOnly, Centralized, FedAvg, FedProx, FedBN, FedPer, FedRep, Ditto, SCAFFOLD, FedDyn, MOON,
                FedAvgM, FedAdam, FedYogi, FedDG, HarmoFL, OmniFMStrategy)
}  # fmt: skip


def strategy_class(name: str) -> type[Strategy]:
    """A built-in strategy by its short name, or any :class:`Strategy` subclass by dotted path (``pkg.mod.Class``)."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    if "." in name:
        module, attr = name.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise SettingsError(f"cannot import the strategy {name!r}: {err}") from err
        if isinstance(cls, type) and issubclass(cls, Strategy):
            return cls
        raise SettingsError(f"{name!r} is not a Strategy subclass.")
    raise SettingsError(
        f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)} or give a dotted path to a Strategy subclass."
    )


def get_strategy(name: str, **options: Any) -> Strategy:
    """A strategy by name (``fedavg``, ``omnifm``, ... see :data:`STRATEGIES`, or a dotted path) with its options."""
    return strategy_class(name)(**options)
