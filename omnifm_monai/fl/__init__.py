"""Federated OmniFM.

- :mod:`.strategies`: every strategy, server rule and client hooks in one class (imports no engine);
- :mod:`.bundle`: what the FL layer reads from a bundle (MONAI workflow properties);
- :mod:`.engine`: the engine-neutral core (build a site, run its round, aggregate, restore state);
- :mod:`.client`: the MONAI FL ``ClientAlgo`` of a site;
- :mod:`.simulator` and :mod:`.nvflare`: the two engines, siblings on the core.

Names are loaded on first use, so ``import omnifm_monai.fl.strategies`` does not load the engines.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "STRATEGIES": "strategies", "ClientUpdate": "strategies", "SiteContext": "strategies", "Strategy": "strategies",
    "get_strategy": "strategies", "aggregate_round": "engine", "client_round": "engine", "make_strategy": "engine",
    "round_seed": "engine", "EXTRA_KEY": "client", "OmniFMClientAlgo": "client", "simulate": "simulator",
    "bundle_task": "bundle", "build_network": "bundle", "find_sites": "bundle",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
