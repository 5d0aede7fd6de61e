"""Federated strategies: which state is shared, and how the server combines the sites' updates.

One implementation serves the in-process simulator and the NVFlare jobs. A strategy is a small class whose
server side is pure: ``aggregate(global_weights, updates, state) -> (new_global_weights, new_state)`` on
state dicts of CPU tensors. What a strategy asks of the clients (a proximal term, control variates, a
personal model, ...) is described by ``client_options`` and carried out by
:class:`omnifm_monai.fl.client.OmniFMClientAlgo`.

Conventions: ``global_weights`` and every update hold the *shared* keys only (private keys never leave a
site); an update's weights are full weights (``weight_type="full"``) or differences to the global weights
it started from (``"diff"``), see :meth:`ClientUpdate.full_weights`. Floating tensors are averaged;
integer buffers (e.g. BatchNorm's ``num_batches_tracked``) take the rounded weighted mean.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from omnifm_monai.networks.blocks import SpectralKnowledgeBank, is_private

__all__ = [
    "STRATEGIES",
    "ClientUpdate",
    "Strategy",
    "aggregate_round",
    "get_strategy",
    "head_keys",
    "norm_keys",
    "validate_update",
    "weighted_average",
]

logger = logging.getLogger(__name__)

Weights = dict[str, torch.Tensor]
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
OMNIFM_PARTS = ("use_gskr", "use_ecaf", "use_prefix", "use_suffix", "use_spa")


@dataclass
class ClientUpdate:
    """What a site sends after local training."""

    site: str
    weights: Weights
    num_samples: int
    weight_type: str = "full"  # "full" | "diff" (local - global)
    extra: dict[str, Any] = field(default_factory=dict)

    def full_weights(self, global_weights: Mapping[str, torch.Tensor]) -> Weights:
        if self.weight_type == "full":
            return dict(self.weights)
        if self.weight_type == "diff":
            # in double: global + (local - global) gives back local exactly whenever the client's subtraction was exact
            return {k: (global_weights[k].double() + v.double()).to(global_weights[k].dtype) for k, v in self.weights.items()}
        raise ValueError(f"site {self.site}: unknown weight_type {self.weight_type!r} (expected 'full' or 'diff').")


# ------------------------------------------------------------------------------------------ key sets
def norm_keys(network: nn.Module) -> set[str]:
    """State-dict keys of every normalisation layer (FedBN keeps them local)."""
    keys = set()
    for name, module in network.named_modules():
        if isinstance(module, NORM_TYPES):
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


def head_keys(network: nn.Module) -> set[str]:
    """State-dict keys of the task head, as named by the OmniFM adapter's ``head`` (FedPer / FedRep)."""
    adapter = getattr(network, "adapter", None)
    if adapter is None or not hasattr(adapter, "head"):
        raise TypeError(f"cannot tell the task head of {type(network).__name__}: expected an OmniFM network.")
    prefixes = tuple(f"backbone.{h}." for h in adapter.head)
    return {k for k in network.state_dict() if k.startswith(prefixes)}


# ------------------------------------------------------------------------------------------ server maths
def weighted_average(weights: Sequence[Mapping[str, torch.Tensor]], counts: Sequence[float]) -> Weights:
    """``sum_i n_i w_i / sum_i n_i`` per key; integer tensors are rounded back to their dtype."""
    total = float(sum(counts))
    if not weights or total <= 0:
        raise ValueError("weighted_average needs at least one update with a positive sample count.")
    out = {}
    for key, ref in weights[0].items():
        acc = sum(w[key].double() * (n / total) for w, n in zip(weights, counts, strict=True))
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.round().to(ref.dtype)
    return out


def validate_update(update: ClientUpdate, reference: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``update`` must be rejected (unknown or missing keys, wrong shapes, NaN/Inf, no samples), or ``None``."""
    unknown = sorted(set(update.weights) - set(reference))
    if unknown:
        return f"unknown keys {unknown[:3]}{'...' if len(unknown) > 3 else ''}"
    missing = sorted(set(reference) - set(update.weights))
    if missing:
        return f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}"
    for key, value in update.weights.items():
        if tuple(value.shape) != tuple(reference[key].shape):
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(reference[key].shape)}"
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{key} holds NaN or Inf"
    if not update.num_samples or update.num_samples <= 0:
        return f"non-positive sample count {update.num_samples}"
    return None


# ------------------------------------------------------------------------------------------ strategies
class Strategy:
    """FedAvg (McMahan et al., AISTATS 2017): ``w <- sum_i n_i w_i / sum_i n_i`` over the shared keys.

    Subclasses change what is private (``private_keys``), what clients do (``client_options``), and the
    server rule (``aggregate``). ``network_overrides`` are bundle overrides that select the network
    (baselines run the plain backbone: every OmniFM part off).
    """

    name: ClassVar[str] = "fedavg"
    pooled: ClassVar[bool] = False  # Centralized: one client holding every site's data

    def __init__(self, **options: Any) -> None:
        self.options = options

    @property
    def network_overrides(self) -> dict[str, Any]:
        return dict.fromkeys(OMNIFM_PARTS, False)

    @property
    def client_options(self) -> dict[str, Any]:
        return dict(self.options)

    def private_keys(self, network: nn.Module) -> set[str]:
        """Keys that never leave a site: the name rule (OmniFM's suffix) and the bank (exchanged, not averaged)."""
        return {k for k in network.state_dict() if is_private(k) or k.startswith("bank.")}

    def init_state(self, global_weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    def server_payload(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """What the server sends besides the weights (a bank, control variates, amplitude spectra)."""
        return {}

    def aggregate(self, global_weights: Weights, updates: Sequence[ClientUpdate], state: dict[str, Any]) -> tuple[Weights, dict[str, Any]]:
        full = [u.full_weights(global_weights) for u in updates]
        return weighted_average(full, [u.num_samples for u in updates]), state


class LocalOnly(Strategy):
    """Local training only: every key is private, nothing is aggregated (the no-federation reference)."""

    name = "local"

    def private_keys(self, network: nn.Module) -> set[str]:
        return set(network.state_dict())

    def aggregate(self, global_weights, updates, state):
        return dict(global_weights), state


class Centralized(Strategy):
    """Centralized (pooled) training: one client trains on the union of every site's training data."""

    name = "centralized"
    pooled = True


class FedProx(Strategy):
    """FedProx (Li et al., MLSys 2020): FedAvg on the server; clients add ``mu/2 ||w - w_global||^2``."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, **options: Any) -> None:
        super().__init__(mu=mu, **options)


class FedBN(Strategy):
    """FedBN (Li et al., ICLR 2021): FedAvg except normalisation layers (weights and statistics), kept local."""

    name = "fedbn"

    def private_keys(self, network):
        return super().private_keys(network) | norm_keys(network)


class FedPer(Strategy):
    """FedPer (Arivazhagan et al., 2019): FedAvg of the body; the task head stays local."""

    name = "fedper"

    def private_keys(self, network):
        return super().private_keys(network) | head_keys(network)


class FedRep(FedPer):
    """FedRep (Collins et al., ICML 2021): head local; each round clients first fit the head with the body
    frozen (``head_epochs``), then the body with the head frozen; the server averages the body."""

    name = "fedrep"

    def __init__(self, head_epochs: int = 1, **options: Any) -> None:
        Strategy.__init__(self, head_epochs=head_epochs, **options)


class Ditto(Strategy):
    """Ditto (Li et al., ICML 2021): FedAvg of the global model; each client also trains a personal model
    with ``lam/2 ||v - w_global||^2`` and is evaluated with it."""

    name = "ditto"

    def __init__(self, lam: float = 0.1, **options: Any) -> None:
        super().__init__(lam=lam, **options)


class MOON(Strategy):
    """MOON (Li et al., CVPR 2021): FedAvg on the server; clients add a model-contrastive term
    ``-mu * log(exp(sim(z, z_glob)/T) / (exp(sim(z, z_glob)/T) + exp(sim(z, z_prev)/T)))`` on pooled features."""

    name = "moon"

    def __init__(self, mu: float = 1.0, temperature: float = 0.5, **options: Any) -> None:
        super().__init__(mu=mu, temperature=temperature, **options)


class SCAFFOLD(Strategy):
    """SCAFFOLD (Karimireddy et al., ICML 2020): clients correct gradients with ``c - c_i`` and send
    ``dc_i = c_i+ - c_i`` with ``c_i+ = c_i - c + (w_global - w_i) / (K * lr)``; the server averages the
    weights and sets ``c <- c + (|S| / N) mean_i dc_i``."""

    name = "scaffold"

    def __init__(self, num_sites: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.num_sites = num_sites

    def init_state(self, global_weights):
        return {"control": {k: torch.zeros_like(v) for k, v in global_weights.items() if v.is_floating_point()}}

    def server_payload(self, state):
        return {"control": state["control"]}

    def aggregate(self, global_weights, updates, state):
        new, _ = super().aggregate(global_weights, updates, state)
        share = len(updates) / (self.num_sites or len(updates))
        control = {
            k: c + share * torch.stack([u.extra["control_delta"][k] for u in updates]).mean(0)
            for k, c in state["control"].items()
        }
        return new, {**state, "control": control}


class FedDyn(Strategy):
    """FedDyn (Acar et al., ICLR 2021): clients minimise ``L_i(w) - <g_i, w> + alpha/2 ||w - w_global||^2``;
    the server keeps ``h <- h - alpha * (1/N) sum_i (w_i - w_global)`` and sets ``w <- mean_i w_i - h / alpha``."""

    name = "feddyn"

    def __init__(self, alpha: float = 0.01, num_sites: int | None = None, **options: Any) -> None:
        super().__init__(alpha=alpha, **options)
        self.alpha, self.num_sites = alpha, num_sites

    def init_state(self, global_weights):
        return {"h": {k: torch.zeros_like(v) for k, v in global_weights.items() if v.is_floating_point()}}

    def aggregate(self, global_weights, updates, state):
        full = [u.full_weights(global_weights) for u in updates]
        n = self.num_sites or len(updates)
        mean = weighted_average(full, [1.0] * len(full))
        h = {k: h_k - self.alpha * sum(w[k] - global_weights[k] for w in full) / n for k, h_k in state["h"].items()}
        new = {k: (mean[k] - h[k] / self.alpha) if k in h else mean[k] for k in mean}
        return new, {**state, "h": h}


class _ServerOptimizer(Strategy):
    """Shared logic of server-optimiser strategies: the averaged update is a pseudo-gradient."""

    def init_state(self, global_weights):
        zeros = {k: torch.zeros_like(v) for k, v in global_weights.items() if v.is_floating_point()}
        return {"m": zeros, "v": {k: z.clone() for k, z in zeros.items()}}

    def aggregate(self, global_weights, updates, state):
        mean, _ = super().aggregate(global_weights, updates, state)
        new, m, v = dict(mean), {}, {}  # non-float buffers: plain average
        for k in state["m"]:
            new[k], m[k], v[k] = self.step(global_weights[k], mean[k] - global_weights[k], state["m"][k], state["v"][k])
        return new, {**state, "m": m, "v": v}

    def step(self, w, delta, m, v):
        raise NotImplementedError


class FedAvgM(_ServerOptimizer):
    """FedAvgM (Hsu et al., 2019): server momentum ``v <- beta v + delta``, ``w <- w + lr v`` with
    ``delta = mean_i w_i - w``."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, **options: Any) -> None:
        super().__init__(**options)
        self.server_lr, self.momentum = server_lr, momentum

    def step(self, w, delta, m, v):
        m = self.momentum * m + delta
        return w + self.server_lr * m, m, v


class FedAdam(_ServerOptimizer):
    """FedAdam (Reddi et al., ICLR 2021): ``m <- b1 m + (1-b1) d``, ``v <- b2 v + (1-b2) d^2``,
    ``w <- w + lr m / (sqrt(v) + tau)`` with ``d = mean_i w_i - w``."""

    name = "fedadam"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, **options: Any) -> None:
        super().__init__(**options)
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau

    def second_moment(self, v, delta):
        return self.beta2 * v + (1 - self.beta2) * delta**2

    def step(self, w, delta, m, v):
        m = self.beta1 * m + (1 - self.beta1) * delta
        v = self.second_moment(v, delta)
        return w + self.server_lr * m / (v.sqrt() + self.tau), m, v


class FedYogi(FedAdam):
    """FedYogi (Reddi et al., ICLR 2021): as FedAdam with ``v <- v - (1-b2) d^2 sign(v - d^2)``."""

    name = "fedyogi"

    def second_moment(self, v, delta):
        d2 = delta**2
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)


class FedDG(Strategy):
    """FedDG-style amplitude exchange (Liu et al., CVPR 2021, ELCFS without the episodic boundary loss):
    FedAvg of the weights; each site uploads the amplitude spectra of ``num_amplitudes`` training images,
    the server pools them, and clients mix the low-frequency amplitude of their images with other sites'
    (``RandAmplitudeMixd``, window ``beta``)."""

    name = "feddg"

    def __init__(self, num_amplitudes: int = 8, beta: float = 0.01, **options: Any) -> None:
        super().__init__(num_amplitudes=num_amplitudes, beta=beta, **options)

    def init_state(self, global_weights):
        return {"amplitudes": {}}

    def server_payload(self, state):
        return {"amplitudes": state["amplitudes"]}

    def aggregate(self, global_weights, updates, state):
        new, _ = super().aggregate(global_weights, updates, state)
        amplitudes = dict(state["amplitudes"])
        amplitudes.update({u.site: u.extra["amplitudes"] for u in updates if "amplitudes" in u.extra})
        return new, {**state, "amplitudes": amplitudes}


class OmniFMStrategy(Strategy):
    """OmniFM: weighted average of the shared weights (the private suffix and the bank excluded) and the
    spectral knowledge bank merged and pruned on the server (never averaged).

    Each update's ``extra`` carries ``bank_keys (Q, d)`` (k-means centroids of the site's spectral tokens),
    ``modality`` and ``bank_hits`` (retrievals per bank slot this round). ``sites`` fixes the site ids.
    """

    name = "omnifm"

    def __init__(
        self,
        sites: Sequence[str] = (),
        embed_dim: int = 128,
        capacity: int = 256,
        modalities: Sequence[str] = (),
        num_centroids: int = 16,
        hit_decay: float = 0.9,
        **options: Any,
    ) -> None:
        super().__init__(num_centroids=num_centroids, **options)
        self.sites, self.bank_config = list(sites), dict(embed_dim=embed_dim, capacity=capacity, modalities=list(modalities), hit_decay=hit_decay)

    @property
    def network_overrides(self) -> dict[str, Any]:
        return {}

    def _bank(self, entries: Mapping[str, torch.Tensor] | None) -> SpectralKnowledgeBank:
        bank = SpectralKnowledgeBank(**self.bank_config)
        if entries:
            bank.load_tensors(entries)
        return bank

    def site_id(self, site: str) -> int:
        if site not in self.sites:
            self.sites.append(site)
        return self.sites.index(site)

    def init_state(self, global_weights):
        return {"bank": self._bank(None).to_tensors()}

    def server_payload(self, state):
        return {"bank": state["bank"]}

    def aggregate(self, global_weights, updates, state):
        new, _ = super().aggregate(global_weights, updates, state)
        bank = self._bank(state["bank"])
        hits = [u.extra["bank_hits"] for u in updates if u.extra.get("bank_hits") is not None]
        # the clients' hit counts index the bank they received: the server's bank before this merge
        hit_counts = torch.zeros(bank.capacity)
        for h in hits:
            hit_counts[: min(len(h), bank.capacity)] += h[: bank.capacity].float()
        uploads = [
            {"keys": u.extra["bank_keys"], "site": self.site_id(u.site), "modality": u.extra["modality"]}
            for u in updates
            if u.extra.get("bank_keys") is not None
        ]
        bank.merge(uploads, hit_counts=hit_counts)
        return new, {**state, "bank": bank.to_tensors()}


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (LocalOnly, Centralized, Strategy, FedProx, FedBN, FedPer, FedRep, Ditto, SCAFFOLD, FedDyn, MOON,
                FedAvgM, FedAdam, FedYogi, FedDG, OmniFMStrategy)
}


def get_strategy(name: str, **options: Any) -> Strategy:
    """A strategy by name (``fedavg``, ``omnifm``, ... see :data:`STRATEGIES`) with its options."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}.")
    return STRATEGIES[name](**options)


def aggregate_round(
    strategy: Strategy,
    global_weights: Weights,
    updates: Sequence[ClientUpdate],
    state: dict[str, Any],
    min_updates: int = 1,
) -> tuple[Weights, dict[str, Any], dict[str, str]]:
    """Reject invalid updates (logged, returned by site), then aggregate the rest.

    Raises ``RuntimeError`` when fewer than ``min_updates`` valid updates remain; the caller keeps the
    previous global state, so a failed round loses nothing.
    """
    rejected = {}
    valid = []
    for update in updates:
        try:
            reason = validate_update(update, global_weights) if update.weight_type in ("full", "diff") else f"unknown weight_type {update.weight_type!r}"
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




