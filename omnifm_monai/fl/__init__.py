"""Federated OmniFM: strategies (server side, shared by every engine), the MONAI FL client, the simulator."""

from .client import EXTRA_KEY, OmniFMClientAlgo
from .simulator import bundle_task, client_round, default_sites, round_seed, simulate
from .strategies import STRATEGIES, ClientUpdate, Strategy, aggregate_round, get_strategy

__all__ = [
    "EXTRA_KEY",
    "STRATEGIES",
    "ClientUpdate",
    "OmniFMClientAlgo",
    "Strategy",
    "aggregate_round",
    "bundle_task",
    "client_round",
    "default_sites",
    "get_strategy",
    "round_seed",
    "simulate",
]
