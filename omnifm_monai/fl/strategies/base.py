"""The strategy interface: what a site shares, what it does in a round, and how the server combines updates.

A strategy is one class. Its **server side** is pure: ``aggregate(global_weights, updates, state) ->
(new_global_weights, new_state)`` on state dicts of CPU tensors, plus ``init_state`` and ``server_payload``
(what is sent besides the weights). Its **client side** is a set of hooks, each a no-op here, that the
engines call on every site with a :class:`SiteContext` (the shape of Flower's strategies and
FL4Health's client hooks):

======================  ===========================================================================
``setup_site``          once, after the site's bundle workflow is built (add loss terms, handlers, transforms)
``before_training``     every round, after the global weights and the payload are loaded
``after_training``      every round, after the local epochs (a second model, state for the next round)
``upload``              every round: the extras sent with the weights (``ClientUpdate.extra``)
``evaluation_weights``  the site's own weights to evaluate with instead of the global ones (a personal model)
``prepare_evaluation``  before the site evaluates (what the server sent with the model, e.g. a merged bank)
``diagnostics``         after the site evaluated a round's model: numbers logged per round and site
======================  ===========================================================================

No engine names a strategy: a new method, server rule and client work, is one subclass in one file, and
``get_strategy("package.module.Class")`` finds it by its dotted path (the name of the built-in ones is a
short alias, see :data:`omnifm_monai.fl.strategies.STRATEGIES`).

Conventions: ``global_weights`` and every update hold the *shared* keys only (private keys never leave a
site); an update's weights are full weights (``weight_type="full"``) or differences to the global weights
it started from (``"diff"``), see :meth:`ClientUpdate.full_weights`. Floating tensors are averaged;
integer buffers (e.g. BatchNorm's ``num_batches_tracked``) take the rounded weighted mean.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from omnifm_monai.networks.nets.omnifm import NORM_TYPES

__all__ = [
    "ClientUpdate",
    "SiteContext",
    "Strategy",
    "Weights",
    "head_keys",
    "network_private_keys",
    "norm_keys",
    "tensor_problem",
    "validate_update",
    "weighted_average",
]

Weights = dict[str, torch.Tensor]


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
            return {
                k: (global_weights[k].double() + v.double()).to(global_weights[k].dtype)
                for k, v in self.weights.items()
            }
        raise ValueError(
            f"site {self.site}: unknown weight_type {self.weight_type!r} (expected 'full' or 'diff')."
        )


@dataclass
class SiteContext:
    """What a strategy's client hooks see of one site. Engines fill it; strategies never see the client object.

    Attributes:
        site: the site's name.
        network: the network being trained (in the simulator shared by every site, loaded per round).
        trainer: the bundle's ``SupervisedTrainer``.
        workflow: the bundle's train ``ConfigWorkflow`` (properties: :mod:`omnifm_monai.fl.bundle`).
        private_keys: state-dict keys that never leave the site.
        local_epochs: epochs per round.
        loss_terms: name -> ``() -> scalar`` added to the bundle's loss at every step.
        state: this site's strategy state kept across rounds (tensors and plain values: it is checkpointed).
        runtime: objects a strategy keeps for this site while the process lives (hooked transforms, models).
        global_weights: the shared weights this round started from (set by the engine every round).
        payload: the server payload of this round.
        keep_optimizer_state: the optimiser state of the site's private parameters (a personal model's too)
            is kept across rounds (the strategy option ``keep_private_optimizer_state``); otherwise every
            round starts from a fresh optimiser.
    """

    site: str
    network: nn.Module
    trainer: Any
    workflow: Any
    private_keys: set[str]
    local_epochs: int = 1
    loss_terms: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    global_weights: Weights = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    keep_optimizer_state: bool = False

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """Shared trainable parameters (what proximal and correction terms act on)."""
        return [
            (n, p)
            for n, p in self.network.named_parameters()
            if p.requires_grad and n not in self.private_keys
        ]

    def shared_state(self) -> Weights:
        """A CPU copy of the shared part of the network's state."""
        return {
            k: v.detach().cpu().clone()
            for k, v in self.network.state_dict().items()
            if k not in self.private_keys
        }

    def load(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy ``weights`` into the network (keys it lacks are ignored)."""
        state = self.network.state_dict()
        for k, v in weights.items():
            if k in state:
                state[k].copy_(torch.as_tensor(v).reshape(state[k].shape))

    def reset_optimizer(self, key: str | None = None) -> None:
        """Clear the optimiser's state; with ``keep_optimizer_state``, restore what :meth:`save_optimizer` kept
        under ``key`` (moments of the parameters that stay on the site, from its previous round)."""
        optimizer = self.trainer.optimizer
        optimizer.state.clear()
        if not (self.keep_optimizer_state and key):
            return
        params = dict(self.network.named_parameters())
        for name, entry in self.state.get(key, {}).items():
            if name in params:
                optimizer.state[params[name]] = {k: _copy(v) for k, v in entry.items()}

    def save_optimizer(self, key: str, names: Collection[str]) -> None:
        """With ``keep_optimizer_state``: keep in ``state[key]`` (checkpointed) the optimiser state of the named
        parameters, for :meth:`reset_optimizer` next round."""
        if not self.keep_optimizer_state:
            return
        optimizer, names = self.trainer.optimizer, set(names)
        self.state[key] = {
            n: {k: _copy(v) for k, v in optimizer.state[p].items()}
            for n, p in self.network.named_parameters()
            if n in names and p in optimizer.state
        }

    def train_local_epochs(self, optimizer_key: str | None = None) -> None:
        """Run the trainer for ``local_epochs`` more epochs (e.g. a second, personal model) from a fresh
        optimiser state, or, with ``optimizer_key`` and ``keep_optimizer_state``, from the one it left there
        last round."""
        self.reset_optimizer(optimizer_key)
        self.trainer.state.max_epochs = self.trainer.state.epoch + self.local_epochs
        self.trainer.run()
        if optimizer_key:
            self.save_optimizer(optimizer_key, [n for n, _ in self.network.named_parameters()])

    @property
    def device(self) -> torch.device:
        return self.trainer.state.device


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


# ------------------------------------------------------------------------------------------ key sets
def norm_keys(network: nn.Module) -> set[str]:
    """State-dict keys of every normalisation layer (FedBN keeps them local)."""
    keys = set()
    for name, module in network.named_modules():
        if isinstance(module, NORM_TYPES):
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


def head_keys(network: nn.Module) -> set[str]:
    """State-dict keys of the task head, as the network declares it (FedPer / FedRep)."""
    if not hasattr(network, "head_state_keys"):
        raise TypeError(
            f"cannot tell the task head of {type(network).__name__}: it has no `head_state_keys()` (an OmniFM network has)."
        )
    return set(network.head_state_keys())


def network_private_keys(network: nn.Module) -> set[str]:
    """Keys the network itself declares private (OmniFM: its suffix and bank); none for a plain network."""
    return set(network.private_state_keys()) if hasattr(network, "private_state_keys") else set()


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
        if value.dtype != reference[key].dtype:  # an int or bool update would turn the global weight's type
            return f"{key} has dtype {value.dtype}, expected {reference[key].dtype}"
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"{key} holds NaN or Inf"
    if not update.num_samples or update.num_samples <= 0:
        return f"non-positive sample count {update.num_samples}"
    return None


def tensor_problem(name: str, value: Any, shape: Sequence[int | None] | None = None) -> str | None:
    """Why ``value`` is not a finite floating tensor of ``shape`` (``None`` entries: any size), or ``None``."""
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, not a tensor"
    if not value.is_floating_point():
        return f"{name} has dtype {value.dtype}, expected a floating type"
    if shape is not None and (
        value.dim() != len(shape)
        or any(s is not None and s != n for s, n in zip(shape, value.shape, strict=True))
    ):
        expected = tuple("any" if s is None else s for s in shape)
        return f"{name} has shape {tuple(value.shape)}, expected {expected}"
    if not torch.isfinite(value).all():
        return f"{name} holds NaN or Inf"
    return None


# ------------------------------------------------------------------------------------------ the interface
class Strategy:
    """FedAvg (McMahan et al., AISTATS 2017): ``w <- sum_i n_i w_i / sum_i n_i`` over the shared keys.

    Subclasses change what is private (``private_keys``), the client hooks, the server rule
    (``aggregate``) and which network they train (``plain_backbone``: baselines train the backbone
    alone, every OmniFM part off).
    """

    name: ClassVar[str] = "fedavg"
    pooled: ClassVar[bool] = False  # Centralized: one client holding every site's data
    shares_weights: ClassVar[bool] = True  # False: no global model (Local)
    plain_backbone: ClassVar[bool] = True  # train the backbone without OmniFM's parts

    def __init__(self, keep_private_optimizer_state: bool = False, **options: Any) -> None:
        """``keep_private_optimizer_state``: a site's private parameters (and a personal model) keep their
        optimiser state across rounds instead of starting each round from a fresh optimiser; an option of
        every strategy, so personalised methods compare alike."""
        self.keep_private_optimizer_state = bool(keep_private_optimizer_state)
        self.options = (
            {"keep_private_optimizer_state": True, **options} if keep_private_optimizer_state else options
        )

    # ---------------------------------------------------------------- set-up (every engine, both sides)
    @classmethod
    def resolve_options(cls, network: nn.Module, sites: Sequence[str]) -> dict[str, Any]:
        """Options the strategy takes from the network and the site list (defaults; given options win)."""
        return {}

    def network_overrides(self, network_class: type) -> dict[str, Any]:
        """Constructor arguments of the bundle's ``network_def`` this strategy sets (``network_def::<arg>``)."""
        parts = getattr(network_class, "PARTS", ())
        return {f"network_def::{p}": False for p in parts} if self.plain_backbone else {}

    def private_keys(self, network: nn.Module) -> set[str]:
        """Keys that never leave a site: those the network declares private (OmniFM's suffix and bank)."""
        return network_private_keys(network)

    # ---------------------------------------------------------------- server
    def init_state(self, global_weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    def server_payload(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """What the server sends besides the weights (a bank, control variates, amplitude spectra)."""
        return {}

    def aggregate(
        self, global_weights: Weights, updates: Sequence[ClientUpdate], state: dict[str, Any]
    ) -> tuple[Weights, dict[str, Any]]:
        full = [u.full_weights(global_weights) for u in updates]
        return weighted_average(full, [u.num_samples for u in updates]), state

    def validate_extra(self, update: ClientUpdate, state: Mapping[str, Any]) -> str | None:
        """Why the update's ``extra`` must be rejected (malformed, NaN), or ``None``: checked for every update
        before :meth:`aggregate`, so one bad site is dropped instead of stopping the round."""
        return None

    def artifacts(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Files the simulator writes at the end of a run besides the global model, name -> object."""
        return {}

    # ---------------------------------------------------------------- client hooks (no-ops)
    def setup_site(self, ctx: SiteContext) -> None:
        """Once per site, after its bundle workflow is initialised."""

    def before_training(self, ctx: SiteContext) -> None:
        """Every round, once the global weights and ``ctx.payload`` are loaded."""

    def after_training(self, ctx: SiteContext) -> None:
        """Every round, after the local epochs."""

    def upload(self, ctx: SiteContext, local: Weights, iterations: int) -> dict[str, Any]:
        """The extras this site sends with its weights (``local``: its shared weights after training)."""
        return {}

    def evaluation_weights(self, ctx: SiteContext) -> Weights | None:
        """Weights loaded over the global ones before this site evaluates (``None``: the global model)."""
        return None

    def prepare_evaluation(self, ctx: SiteContext, payload: Mapping[str, Any]) -> None:
        """Before this site evaluates: use what the server sent with the model (e.g. its merged bank)."""

    def diagnostics(self, ctx: SiteContext) -> dict[str, float]:
        """Numbers that show what the method does on this site, after it evaluated a round's model."""
        return {}
